"""Hostile archives: any name a filesystem or S3 can hold, and entries that are not image files, each become
exactly one row and never fail the job; DICOM SEG and compact masks come out of the same run."""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
import torch

from raysegment.errors import NotRegularFileError
from raysegment.io import names, storage
from raysegment.io.decode import decode_mask_png, encode_png
from raysegment.io.rle import decode_rle
from raysegment.outputs.results import read_results

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dicom")
DICOMS = ("jpeg_lossless_sv1.dcm", "jpegls_lossless.dcm", "jpeg2000_lossless.dcm", "rle_lossless.dcm")
LATIN1 = b"caf\xe9 r\xf6ntgen.png"  # not valid UTF-8
LONG = "L" * 246 + ".png"  # 250 bytes: its mask name would exceed 255 bytes without shortening
ODD_GOOD = ("with space.png", "hash#1.png", "pct%20.png", "q?.png", "new\nline.png", LONG)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------- name rules (units)


def test_local_names_round_trip_and_valid_utf8_stays_as_before():
    for path in ("/data/a.png", "/data/café 1#2%20?.png", "/data/new\nline.png", "/d/x"):
        assert names.path_to_uri(path) == path == names.uri_to_path(path)  # unchanged: old results resume
        assert names.path_to_uri(os.fsencode(path)) == path
    raw = b"/data/" + LATIN1
    uri = names.path_to_uri(raw)
    assert uri == "file:///data/caf%E9%20r%F6ntgen.png" and uri.isascii()
    assert names.uri_to_path(uri) == raw
    # unambiguous: a valid name that looks like an escape stays a plain path and maps to itself
    assert names.uri_to_path(names.path_to_uri(b"/data/caf%E9.png")) == "/data/caf%E9.png"
    assert names.uri_to_path("file:///data/a%20b.png") == "/data/a b.png"  # any RFC 8089 file URI


def test_mask_keys_fit_255_bytes_and_stay_unique():
    long_a, long_b = "é" * 200 + "a.png", "é" * 200 + "b.png"  # 405 bytes each, same long prefix
    ka, kb = names.mask_key("site/" + long_a), names.mask_key("site/" + long_b)
    assert ka != kb and all(len(p.encode()) <= 255 for k in (ka, kb) for p in k.split("/"))
    assert ka.endswith(".mask.png") and ka.startswith("site/éé")
    assert names.mask_key("a.png") == "a.png.mask.png" and names.mask_key("x/" + LONG).endswith(".mask.png")
    assert names.mask_key("p/" + "d" * 300 + "/x.png").split("/")[1].startswith("ddd")  # long folders too
    # Keys are made unique without state (a stream of 10^7 inputs): a name sanitizing changed gets a digest.
    keys = [names.stable_key(r, u) for r, u in (("b/x.png", "s3://b/x.png"), ("/b/x.png", "/b/x.png"),
                                                 ("../b/x.png", "/up/b/x.png"), ("c.png", "/c.png"))]
    assert keys[0] == "b/x.png" and keys[3] == "c.png"
    assert all(k.startswith("b/x~") and k.endswith(".png") for k in keys[1:3])
    assert len(set(keys)) == 4 and names.stable_key("../b/x.png", "/up/b/x.png") == keys[2]  # stable


def test_name_rules_live_in_one_module():
    from raysegment.data import datasets
    from raysegment.io import inputs

    assert not hasattr(datasets, "IMAGE_EXTENSIONS")  # the name rules are names.py's alone
    assert not hasattr(datasets, "_resolve") and "datasets._resolve" not in _read(inputs.__file__).decode()
    assert names.is_input_name("1.2.840.10008") and names.is_input_name("IM0001")
    assert not names.is_image_name("IM0001") and names.is_image_name("A.PNG")
    assert not names.is_input_name(".x.png")
    assert names.is_manifest_name("m.CSV") and names.stem("a/b/c.tar.png") == "c.tar"


# --------------------------------------------------------------------------- an archive of odd entries


def _odd_folder(root: str, good: bytes) -> dict[bytes, str]:
    """Fill `root` with odd entries and good images; returns {relative path (bytes): expected error reason,
    or "ok"}. Everything is readable by every user except unread.png."""
    expected = {}
    for name in ("good.png", *ODD_GOOD):
        with open(os.path.join(root, name), "wb") as f:
            f.write(good)
        expected[name] = "ok"
    with open(os.path.join(os.fsencode(root), LATIN1), "wb") as f:
        f.write(good)
    os.symlink("nowhere.png", os.path.join(root, "dangling.png"))
    expected["dangling.png"] = "dangling symbolic link"
    os.mkdir(os.path.join(root, "x.png"))
    expected["x.png"] = "is a directory"
    os.mkfifo(os.path.join(root, "fifo.png"))
    expected["fifo.png"] = "not a regular file"
    with open(os.path.join(root, "unread.png"), "wb") as f:
        f.write(good)
    os.chmod(os.path.join(root, "unread.png"), 0)
    expected["unread.png"] = "permission denied"  # for a user other than root
    os.mkdir(os.path.join(root, "locked"))  # a folder nobody but root may list: itself one row
    with open(os.path.join(root, "locked", "in.png"), "wb") as f:
        f.write(good)
    os.chmod(os.path.join(root, "locked"), 0)
    expected["locked"] = "permission denied"  # unprivileged: the folder is the row
    expected["locked/in.png"] = "ok"  # privileged: its image is
    os.mkdir(os.path.join(root, "dicom"))
    for name in DICOMS:
        shutil.copy(os.path.join(FIXTURES, name), os.path.join(root, "dicom", name))
        expected["dicom/" + name] = "ok"
    os.chmod(root, 0o755)
    os.chmod(os.path.join(root, "dicom"), 0o755)
    return {**{os.fsencode(k): v for k, v in expected.items()}, LATIN1: "ok"}


def _visible(expected: dict[bytes, str], privileged: bool) -> dict[bytes, str]:
    """What a reader sees: root lists locked/ and reads unread.png; any other user gets error rows."""
    drop = b"locked" if privileged else b"locked/in.png"
    return {k: ("ok" if privileged and k == b"unread.png" else v) for k, v in expected.items() if k != drop}


def _entry(uri: str, root: str) -> bytes:
    """The relative path (bytes) of a result URI under `root`: file:// URIs are un-escaped first."""
    return os.path.relpath(os.fsencode(names.uri_to_path(uri)), os.fsencode(root))


@pytest.fixture(scope="module")
def odd_archive(synth_generic, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("odd"))
    good = _read(os.path.join(synth_generic, "cxr", "SYN_0002_0.png"))
    return root, _odd_folder(root, good)


_READ_AS_USER = """
import json, sys
from raysegment.infer.stages import _decode_row, _read_row
from raysegment.data.preprocess import PreprocessConfig
from raysegment.io import storage
from raysegment.infer.worklist import iter_listing
rows = []
for item in (r for table in iter_listing(sys.argv[1]) for r in table.to_pylist()):
    row = {"image_uri": item["image_uri"], "input_size": item["input_size"]}
    _decode_row(row, _read_row(row, storage.S3Options()), PreprocessConfig(size=64), None)
    rows.append({"uri": item["image_uri"], "status": row["status"], "stage": row.get("error_stage"),
                 "error": row.get("error")})
print(json.dumps(rows))
"""


def _drop_root_file_access() -> None:
    """Runs in the child before exec: drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the
    capability bounding set (prctl PR_CAPBSET_DROP = 24), so root is held to file modes like any user:
    unread.png (mode 000) is then unreadable for real, while root still owns the interpreter and repo."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_listing_and_reading_odd_entries_gives_one_row_each_with_reasons(odd_archive):
    """Read as a user the file modes bind (CI runs as root, who reads everything: the child drops root's
    file-access capabilities), so unread.png is unreadable for real. Every entry `ls` shows is one row;
    nothing raises; the FIFO is never opened."""
    root, expected = odd_archive
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "PYTHONDONTWRITEBYTECODE": "1"}
    as_root = os.geteuid() == 0
    out = subprocess.run([sys.executable, "-c", _READ_AS_USER, root], capture_output=True, text=True, env=env,
                         check=False, timeout=120, preexec_fn=_drop_root_file_access if as_root else None)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {_entry(r["uri"], root): r for r in json.loads(out.stdout.splitlines()[-1])}
    expected = _visible(expected, privileged=False)
    assert set(rows) == set(expected)
    for entry, reason in expected.items():
        row = rows[entry]
        if reason == "ok":
            assert row["status"] == "ok", (entry, row)
        else:
            assert (row["status"], row["stage"]) == ("error", "read") and reason in row["error"], (entry, row)


def test_local_read_refuses_fifos_without_blocking(tmp_path):
    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="fifo"):
        storage.read_bytes(str(fifo))  # a plain open() would block here forever
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --------------------------------------------------------------------------- the whole job (Ray)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """An untrained tiny UNet with a head bias that makes a quarter of the pixels lung (non-trivial masks)."""
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(base_channels=8, depth=3).eval()
    with torch.no_grad():
        probe = torch.rand(2, 1, 64, 64)
        model.head.bias -= torch.quantile(model(probe).flatten(), 0.75)
    uri = str(tmp_path_factory.mktemp("archives_ckpt") / "ckpt")
    spec = ModelSpec(UNetConfig(base_channels=8, depth=3), PreprocessConfig(size=64), 0.5)
    save_checkpoint(uri, model, spec)
    return uri


def _sideways_jpeg(png: bytes) -> bytes:
    from PIL import Image

    upright = np.array(Image.open(io.BytesIO(png)))
    image = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def test_infer_over_an_odd_archive_one_row_per_entry_exit_0(ray_local, odd_archive, tiny_checkpoint,
                                                            tmp_path, synth_generic):
    from raysegment.cli import main
    from raysegment.outputs.dicom_seg import read_seg_mask

    root, expected = odd_archive
    extra = tmp_path / "extra"  # EXIF and inverted inputs beside the odd ones
    extra.mkdir()
    good = _read(os.path.join(synth_generic, "cxr", "SYN_0003_1.png"))
    (extra / "sideways.jpg").write_bytes(_sideways_jpeg(good))
    pixels = cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_GRAYSCALE)
    (extra / "inverted.png").write_bytes(encode_png(255 - pixels))
    both = tmp_path / "in"
    both.mkdir()
    os.symlink(root, both / "odd")
    os.symlink(extra, both / "extra")
    out, masks, segs = str(tmp_path / "out"), str(tmp_path / "masks"), str(tmp_path / "segs")
    assert main(["infer", "--input", str(both), "--checkpoint", tiny_checkpoint, "--output", out,
                 "--masks-out", masks, "--dicom-seg-out", segs, "--batch-size", "4",
                 "--num-actors", "1"]) == 0

    table = read_results(out)
    rows = {_entry(r["image_uri"], str(both)): r for r in table.to_pylist()}
    expected = _visible(expected, privileged=os.geteuid() == 0)
    assert len(rows) == table.num_rows == len(expected) + 2  # one row per entry, nothing lost
    for entry, reason in expected.items():
        row = rows[b"odd/" + entry]
        if reason == "ok":
            assert row["status"] == "ok", (entry, row["error"])
        else:
            assert row["status"] == "error" and reason in row["error"], (entry, row["error"])
    assert rows[b"odd/" + LATIN1]["image_uri"].startswith(names.FILE_SCHEME)  # escaped, reversibly:
    assert os.path.basename(names.uri_to_path(rows[b"odd/" + LATIN1]["image_uri"])) == LATIN1
    for row in table.to_pylist():
        assert row["schema_version"] == 3
        if row["status"] != "ok":
            continue
        mask = decode_mask_png(row["mask_png"])
        assert np.array_equal(decode_rle(row["mask_rle"], row["height"], row["width"]), mask)
        assert os.path.isfile(row["mask_uri"]) and _read(row["mask_uri"]) == row["mask_png"]
        assert all(len(os.fsencode(p)) <= 255 for p in os.path.relpath(row["mask_uri"], masks).split("/"))
        assert (row["dicom_seg_uri"] is not None) == (row["image_format"] == "dicom")
        if row["dicom_seg_uri"]:  # the SEG: readable, pixel-equal, referencing its source instance
            seg_bytes = _read(row["dicom_seg_uri"])
            assert np.array_equal(read_seg_mask(seg_bytes), mask)
            seg, src = pydicom.dcmread(io.BytesIO(seg_bytes)), pydicom.dcmread(row["image_uri"])
            ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
            assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and seg.Modality == "SEG"
    sideways, upright = rows[b"extra/sideways.jpg"], rows[b"odd/good.png"]
    assert sideways["exif_rotation"] == 90 and upright["exif_rotation"] == 0 and upright["qc_notes"] == []
    inverted = rows[b"extra/inverted.png"]
    assert inverted["inversion_corrected"] and inverted["qc_notes"] == ["inverted_input_corrected"]
    assert inverted["qc_flag"] == bool(inverted["qc_reasons"])  # a note never sets the flag
    assert upright["inversion_corrected"] is False
    assert len({r["mask_uri"] for r in table.to_pylist() if r["mask_uri"]}) == sum(
        1 for r in table.to_pylist() if r["status"] == "ok")


def test_infer_over_odd_s3_keys(ray_local, s3_endpoint, synth_generic, tiny_checkpoint, tmp_path):
    """The names S3 allows (moto refuses a newline in a key, so that one is tested locally only): spaces,
    #, %20, ?, +, non-ASCII, a 400-byte name, and a folder marker "x.png/" -> one row each, exit 0; masks
    written to a local folder keep every name part within 255 bytes."""
    import uuid

    from raysegment.cli import main

    bucket = s3_endpoint.create_bucket(f"odd-{uuid.uuid4().hex[:10]}")
    good = _read(os.path.join(synth_generic, "cxr", "SYN_0004_0.png"))
    keys = ["in/with space.png", "in/hash#1.png", "in/pct%20.png", "in/q?.png", "in/plus+1.png",
            "in/café.png",
            "in/deep/" + "L" * 400 + ".png", "in/dicom/" + DICOMS[0]]
    client = s3_endpoint.client()
    for key in keys:
        client.put_object(Bucket=bucket[5:], Key=key, Body=_read(os.path.join(FIXTURES, DICOMS[0]))
                          if key.endswith(".dcm") else good)
    client.put_object(Bucket=bucket[5:], Key="in/x.png/", Body=b"")  # a "folder" named like an image
    out, masks = str(tmp_path / "out"), str(tmp_path / "masks")
    assert main(["infer", "--input", f"{bucket}/in", "--checkpoint", tiny_checkpoint, "--output", out,
                 "--masks-out", masks, "--batch-size", "4", "--num-actors", "1"]) == 0
    rows = {r["image_uri"][len(bucket) + 1:]: r for r in read_results(out).to_pylist()}
    assert set(keys) <= set(rows) and len(rows) == len(keys) + 1
    for key in keys:
        assert rows[key]["status"] == "ok", (key, rows[key]["error"])
        assert os.path.isfile(rows[key]["mask_uri"])
        assert all(len(p.encode()) <= 255 for p in os.path.relpath(rows[key]["mask_uri"], masks).split("/"))
    marker = rows["in/x.png"]
    assert marker["status"] == "error" and marker["error_stage"] == "read" and "folder" in marker["error"]
