"""Archives as exported (issue #23): inputs found by content, not by name, and every file accounted for.

A PACS export (DICOM films named .dcm / .DCM / .dicom / .IMA / by UID / without an extension, one without
its preamble; a structured report, a key object selection, a presentation state, an encapsulated PDF, a
DICOMDIR, a CT, a lateral view, zero-byte files, a truncated film) and an old department share (PNG, JPEG,
TIFF, BMP, an animated GIF, JPEG 2000 as .jp2 and .j2k, text files, a text file named .png, AppleDouble
files, .DS_Store, Thumbs.db, desktop.ini, __MACOSX/, a hidden .thumbnails/ with a PNG, a .git/ folder, a
stale file under our own --masks-out) -> every file is one row (ok, error or skipped, each with its
reason) or one count of the name-decided skips, the counts add up to the files on disk, and the job exits 0.
The same tree over S3 (moto; folder marker objects added) adds up to the objects under the prefix.

Units first (no Ray): the formats, the DICOM object and modality rules, triage from a file's first bytes,
ranged reads, the S3 listing; then the two runs, reused by several checks.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from raysegment.data.model_input import (
    EMPTY_REASON,
    LATERAL_NOTE,
    MULTIFRAME_NOTE,
    NOT_AN_IMAGE_REASON,
    SNIFF_BYTES,
    TOO_LARGE_REASON,
    InputOptions,
    decode_frame,
    triage,
)
from raysegment.errors import DecodeError, NonImageDicomError, NotAnImageError, NotRadiographError
from raysegment.io import storage
from raysegment.io.decode import decode_image, sniff_format
from raysegment.outputs.results import read_results
from raysegment.testing.dicom import (
    make_dicom_bytes,
    non_image_dicom,
    with_attributes,
    with_study,
    without_preamble,
)

MODALITY_CT = "not a chest radiograph (Modality CT)"
SKIP = {
    "sr": "not an image: DICOM Structured Report (Basic Text SR Storage)",
    "ko": "not an image: DICOM Key Object Selection (Key Object Selection Document Storage)",
    "pr": "not an image: DICOM Presentation State (Grayscale Softcopy Presentation State Storage)",
    "pdf": "not an image: DICOM Encapsulated PDF (Encapsulated PDF Storage)",
    "dicomdir": "not an image: DICOM DICOMDIR (Media Storage Directory Storage)",
}


def _film(size: int = 48, seed: int = 0) -> np.ndarray:
    from raysegment.data.synth import make_phantom

    return make_phantom(seed, 0, size).image


def _encode(fmt: str, image: np.ndarray, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **kw)
    return out.getvalue()


def _animated_gif(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "GIF", save_all=True, append_images=[Image.fromarray(255 - image)])
    return out.getvalue()


def _dicom_film(**attributes) -> bytes:
    data = with_study(make_dicom_bytes(_film().astype(np.uint16) * 16, window=(2048, 4096)))
    return with_attributes(data, **attributes) if attributes else data


# --------------------------------------------------------------------------- formats (units)


@pytest.mark.parametrize("fmt, make", [
    ("bmp", lambda i: _encode("BMP", i)), ("gif", lambda i: _encode("GIF", i)),
    ("jpeg2000", lambda i: _encode("JPEG2000", i)),
    ("jpeg2000", lambda i: _encode("JPEG2000", i, no_jp2=True)),
    ("bmp", lambda i: _encode("BMP", np.stack([i] * 3, -1))),
])
def test_bmp_gif_and_jpeg2000_decode_by_their_bytes_and_truncation_is_an_error(fmt, make):
    image = _film()
    data = make(image)
    assert sniff_format(data, "no-extension") == fmt and sniff_format(data[:SNIFF_BYTES]) == fmt
    decoded = decode_image(data, "x")
    assert decoded.meta.format == fmt and (decoded.meta.height, decoded.meta.width) == image.shape
    np.testing.assert_allclose(decoded.image, image / 255.0, atol=1e-6)  # all lossless here
    for cut in (len(data) // 2, len(data) - 2):
        with pytest.raises(DecodeError, match="truncated|corrupt|cannot decode") as err:
            decode_image(data[:cut], "x")
        assert not isinstance(err.value, NotAnImageError)  # a broken film, not a stray file


def test_16_bit_jpeg2000_and_an_animated_gif_is_its_first_frame_with_a_note():
    deep = (np.arange(40 * 56).reshape(40, 56) * 29 % 65536).astype(np.uint16)
    decoded = decode_image(cv2.imencode(".jp2", deep)[1].tobytes())
    assert decoded.meta.bit_depth == 16 and np.allclose(decoded.image, deep / 65535.0, atol=1e-6)
    image = _film()
    frame = decode_frame(_animated_gif(image), "a.gif")
    assert frame.meta.frames == 2 and frame.qc_notes == (MULTIFRAME_NOTE,)
    np.testing.assert_allclose(frame.image, image / 255.0, atol=1e-6)  # frame 1, not 255 - image
    assert decode_frame(_encode("GIF", image), "one.gif").qc_notes == ()


# --------------------------------------------------------------------------- DICOM objects (units)


@pytest.mark.parametrize("kind", sorted(SKIP))
def test_non_image_dicom_objects_are_named_by_sop_class_under_any_name(kind):
    data = non_image_dicom(kind)
    for name in (f"{kind}.dcm", "IM0009", "x.IMA"):
        with pytest.raises(NonImageDicomError) as err:
            decode_frame(data, name)
        assert err.value.reason == SKIP[kind] and str(err.value) == f"{name}: {SKIP[kind]}"
    assert triage(data[:SNIFF_BYTES], "IM0009", len(data)) == SKIP[kind]  # told from the header alone
    if kind != "dicomdir":  # a DICOMDIR always has its preamble
        assert triage(without_preamble(data), "IM0009", None) == SKIP[kind]


def test_modality_decides_what_is_a_radiograph_and_a_lateral_view_is_noted():
    for modality in ("CT", "MR", "US", "NM", "PT"):
        with pytest.raises(NotRadiographError) as err:
            decode_frame(_dicom_film(Modality=modality), "x.dcm")
        assert err.value.reason == f"not a chest radiograph (Modality {modality})"
    for modality in ("CR", "DX", "OT", "dx", None):  # a missing Modality is segmented too
        assert decode_frame(_dicom_film(Modality=modality), "x.dcm").qc_notes == ()
    ct = _dicom_film(Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    assert triage(ct, "ct", len(ct)) == MODALITY_CT  # a 500 MB CT is not read past its header
    assert decode_frame(ct, "ct.dcm", InputOptions(modalities=None)).meta.modality == "CT"  # --modalities all
    assert decode_frame(ct, "ct.dcm", InputOptions(modalities=("DX", "CT"))).meta.format == "dicom"
    assert triage(ct, "ct", len(ct), InputOptions(modalities=None)) is None
    for view in ("LL", "RL"):
        lateral = decode_frame(_dicom_film(ViewPosition=view), "lat.dcm")
        assert lateral.qc_notes == (LATERAL_NOTE,) and not lateral.frontal
    assert decode_frame(_dicom_film(ViewPosition="PA"), "pa.dcm").frontal


def test_a_truncated_or_empty_film_is_an_error_with_its_reason_not_a_skip():
    film = _dicom_film()
    for cut, reason in ((len(film) // 2, "truncated"), (300, "truncated or damaged")):
        with pytest.raises(DecodeError, match=reason) as err:
            decode_frame(film[:cut], "cut.dcm")
        assert not isinstance(err.value, (NotAnImageError, NonImageDicomError, NotRadiographError))


def test_triage_reads_the_first_bytes_only():
    assert triage(b"", "x", 0) == EMPTY_REASON
    assert triage(b"# README\nhello", "README", 14) == NOT_AN_IMAGE_REASON
    assert triage(b"<?xml version='1.0'?><a/>", "x.xml", 24) == NOT_AN_IMAGE_REASON
    png = cv2.imencode(".png", _film())[1].tobytes()
    assert triage(png[:100], "scan", len(png)) is None  # an image: read the rest and decode
    # bytes that might start a DICOM without preamble, header not in the first 64 KiB: read whole up to a
    # limit, beyond it skipped by its size, unread
    assert triage(b"\x00" * SNIFF_BYTES, "blob", 10**6) is None
    assert triage(b"\x00" * SNIFF_BYTES, "blob", 10**9) == TOO_LARGE_REASON
    assert triage(b"\x00" * 100, "blob", 100) == NOT_AN_IMAGE_REASON  # the whole file: decided


def test_a_lateral_film_gets_no_ctr_and_no_ctr_note():
    from raysegment.data.preprocess import PreprocessConfig, geometry
    from raysegment.postprocess.masks import PostprocessConfig
    from raysegment.postprocess.scoring import score

    prob = np.zeros((32, 32), np.uint8)
    prob[6:26, 3:13] = prob[6:26, 19:29] = 250
    heart = np.zeros((32, 32), np.uint8)
    heart[14:24, 12:22] = 250
    geo = geometry(64, 64, PreprocessConfig(size=32))
    frontal = score(prob, geo, 0.5, PostprocessConfig(), others={"heart": heart})
    lateral = score(prob, geo, 0.5, PostprocessConfig(), others={"heart": heart}, frontal=False)
    assert frontal.ctr is not None and frontal.ctr.ctr is not None
    assert lateral.ctr is None and "ctr_not_measurable" not in lateral.qc_notes


def test_ranged_reads_locally(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert storage.read_head(str(path), 10) == bytes(range(10))
    assert storage.read_range(str(path), 1020) == bytes(range(252, 256))
    assert storage.read_range(str(path), 5000) == b""
    assert storage.read_head(str(path), 5000) == path.read_bytes()
    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError, match="fifo"):
        storage.read_head(str(tmp_path / "p"), 10)  # never blocks


def test_read_stage_reads_a_stray_file_head_only_and_skips_it(tmp_path, monkeypatch):
    """The decode task (no Ray): a file not named like an image is read SNIFF_BYTES far and skipped; named
    like an image, the same bytes are an error; sniffing as an image, any name decodes."""
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.infer import stages

    big = tmp_path / "dump.bin"
    big.write_bytes(b"just text " * 20_000)  # 200 KB
    reads = []
    real = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda *a, **k: reads.append(a[1:3]) or real(*a, **k))

    def row_of(path):
        row = {"image_uri": str(path), "input_size": os.path.getsize(path)}
        stages._decode_row(row, stages._read_row(row, storage.S3Options()), PreprocessConfig(size=32), None)
        return row

    row = row_of(big)
    assert (row["status"], row["skip_reason"], row["error"]) == ("skipped", NOT_AN_IMAGE_REASON, None)
    assert reads == [(0, SNIFF_BYTES)]  # the head only
    named = tmp_path / "dump.png"
    named.write_bytes(big.read_bytes())
    row = row_of(named)
    assert (row["status"], row["error_stage"], row["error_type"]) == ("error", "decode", "DecodeError")
    film = tmp_path / "IM0001"
    film.write_bytes(_dicom_film())
    assert row_of(film)["status"] == "ok" and row_of(film)["image_format"] == "dicom"


# --------------------------------------------------------------------------- the archive


def _write(root, rel: str, data: bytes) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _archive(root: str) -> dict[str, tuple[str, str | None]]:
    """A PACS export and an old share under `root`; returns {relative path: (expected status, reason or
    None)} for every file that must be a row (the name-decided skips are counted, not listed here)."""
    film = _film()
    png = cv2.imencode(".png", film)[1].tobytes()
    dicom = _dicom_film()
    rows = {
        # --- PACS export
        "pacs/DICOMDIR": ("skipped", SKIP["dicomdir"]),
        "pacs/S1/IM0001": ("ok", None),  # no extension
        "pacs/S1/IM0002.dcm": ("ok", None),
        "pacs/S1/IM0003.DCM": ("ok", None),
        "pacs/S1/IM0004.dicom": ("ok", None),
        "pacs/S1/IM0005.IMA": ("ok", None),  # Siemens
        "pacs/S1/1.2.840.113619.2.55.3.604688119": ("ok", None),  # named by its UID
        "pacs/S1/IM0006": ("ok", None),  # without preamble
        "pacs/S1/IM0007.dcm": ("ok", None),  # no Modality
        "pacs/S1/LATERAL.dcm": ("ok", None),  # ViewPosition LL: a note, no CTR
        "pacs/S1/CT0001": ("skipped", MODALITY_CT),
        "pacs/S1/SR0001": ("skipped", SKIP["sr"]),
        "pacs/S1/KO0001.dcm": ("skipped", SKIP["ko"]),
        "pacs/S1/PR0001.dcm": ("skipped", SKIP["pr"]),
        "pacs/S1/DOC0001.dcm": ("skipped", SKIP["pdf"]),
        "pacs/S1/EMPTY": ("skipped", EMPTY_REASON),
        "pacs/S1/empty.dcm": ("error", "empty file"),  # named like a film: re-copy it
        "pacs/S1/IM0008.dcm": ("error", "truncated"),  # cut in its pixel data
        # --- old department share
        "share/film.png": ("ok", None), "share/film.jpg": ("ok", None), "share/film.tif": ("ok", None),
        "share/film.bmp": ("ok", None), "share/film.gif": ("ok", None), "share/film.jp2": ("ok", None),
        "share/film.j2k": ("ok", None), "share/SCAN0001": ("ok", None),  # a PNG without an extension
        "share/notes.txt": ("skipped", NOT_AN_IMAGE_REASON),
        "share/index.xml": ("skipped", NOT_AN_IMAGE_REASON),
        "share/README": ("skipped", NOT_AN_IMAGE_REASON),
        "share/broken.png": ("error", "not an image"),  # text named like a film
    }
    data = {
        "pacs/DICOMDIR": non_image_dicom("dicomdir"), "pacs/S1/IM0001": dicom, "pacs/S1/IM0002.dcm": dicom,
        "pacs/S1/IM0003.DCM": dicom, "pacs/S1/IM0004.dicom": dicom, "pacs/S1/IM0005.IMA": dicom,
        "pacs/S1/1.2.840.113619.2.55.3.604688119": dicom, "pacs/S1/IM0006": without_preamble(dicom),
        "pacs/S1/IM0007.dcm": with_attributes(dicom, Modality=None),
        "pacs/S1/LATERAL.dcm": with_attributes(dicom, ViewPosition="LL"),
        "pacs/S1/CT0001": with_attributes(dicom, Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2"),
        "pacs/S1/SR0001": non_image_dicom("sr"), "pacs/S1/KO0001.dcm": non_image_dicom("ko"),
        "pacs/S1/PR0001.dcm": non_image_dicom("pr"), "pacs/S1/DOC0001.dcm": non_image_dicom("pdf"),
        "pacs/S1/EMPTY": b"", "pacs/S1/empty.dcm": b"", "pacs/S1/IM0008.dcm": dicom[: len(dicom) - 2000],
        "share/film.png": png, "share/film.jpg": cv2.imencode(".jpg", film)[1].tobytes(),
        "share/film.tif": cv2.imencode(".tiff", film)[1].tobytes(), "share/film.bmp": _encode("BMP", film),
        "share/film.gif": _animated_gif(film), "share/film.jp2": _encode("JPEG2000", film),
        "share/film.j2k": _encode("JPEG2000", film, no_jp2=True), "share/SCAN0001": png,
        "share/notes.txt": b"films of 1998, scanned 2004\n", "share/index.xml": b"<?xml version='1.0'?><i/>",
        "share/README": b"do not delete\n", "share/broken.png": b"this was never a PNG\n",
    }
    skipped_by_name = {  # relative path -> reason
        "share/._film.png": "os-clutter", "share/.DS_Store": "os-clutter", "share/Thumbs.db": "os-clutter",
        "share/desktop.ini": "os-clutter", "share/__MACOSX/._film.png": "os-clutter",
        "share/.thumbnails/film.png": "hidden", "share/.git/HEAD": "hidden",
        "share/.git/objects/ab/cdef0123": "hidden", "share/.hidden.png": "hidden",
        "masks/stale.mask.png": "output",  # under our own --masks-out, inside the input
    }
    for rel, blob in data.items():
        _write(root, rel, blob)
    for rel in skipped_by_name:
        _write(root, rel, png if rel.endswith(".png") else b"\x00\x05\x16\x07 AppleDouble or clutter")
    return rows, skipped_by_name


def _files_on_disk(root: str) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _count(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in reasons:
        out[reason] = out.get(reason, 0) + 1
    return out


@pytest.fixture(scope="module")
def heart_checkpoint(tmp_path_factory) -> str:
    """A tiny untrained lungs + heart model: frontal films get a CTR or the note ctr_not_measurable."""
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(out_channels=2, base_channels=4, depth=2)
    uri = str(tmp_path_factory.mktemp("content_ckpt") / "ckpt")
    save_checkpoint(uri, UNet.from_config(config),
                    ModelSpec(config, PreprocessConfig(size=32), 0.5, structures=("lungs", "heart")))
    return uri


def _infer(checkpoint: str, *args: str) -> int:
    from raysegment.cli import main

    return main(["infer", *args, "--checkpoint", checkpoint, "--num-actors", "1", "--batch-size", "8"])


def _summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def local_run(ray_local, heart_checkpoint, tmp_path_factory):
    """One run over the archive on local disk, --masks-out inside the input (a stale mask already there)."""
    root = str(tmp_path_factory.mktemp("archive") / "in")
    rows, by_name = _archive(root)
    files = _files_on_disk(root)  # what the run lists (its masks are written later, into the input)
    out = str(tmp_path_factory.mktemp("archive_out") / "out")
    code = _infer(heart_checkpoint, "--input", root, "--output", out, "--masks-out",
                  os.path.join(root, "masks"))
    return {"root": root, "rows": rows, "skipped": _count(by_name.values()), "out": out, "code": code,
            "summary": _summary(out), "files": files}


def _check_run(results: list[dict], expected: dict, skipped: dict[str, int], summary: dict, prefix: str,
               files: int) -> None:
    """Each expected row with its status and reason, the name-decided skips by reason, and the sum."""
    got = {r["image_uri"][len(prefix):]: r for r in results}
    assert set(got) == set(expected), set(got) ^ set(expected)
    for rel, (status, reason) in expected.items():
        row = got[rel]
        assert row["status"] == status, (rel, row["status"], row["error"], row["skip_reason"])
        if status == "skipped":
            assert row["skip_reason"] == reason and row["error"] is None, rel
        elif status == "error":
            assert reason in row["error"] and row["skip_reason"] is None, (rel, row["error"])
    assert summary["skipped"] == skipped
    # every file is in exactly one place: a row, or a count of the name-decided skips
    assert summary["images"] + sum(summary["skipped"].values()) == files
    n = {s: sum(1 for v in expected.values() if v[0] == s) for s in ("ok", "error", "skipped")}
    assert (summary["ok"], summary["errors"], summary["skipped_files"]) == (n["ok"], n["error"], n["skipped"])
    assert summary["missing"] == 0 and summary["inputs_seen"] == len(expected)


def test_a_pacs_export_and_an_old_share_every_file_accounted_for(local_run):
    run = local_run
    assert run["code"] == 0
    results = read_results(run["out"]).to_pylist()
    _check_run(results, run["rows"], run["skipped"], run["summary"], run["root"] + "/", run["files"])
    assert run["skipped"] == {"os-clutter": 5, "hidden": 4, "output": 1}
    got = {r["image_uri"][len(run["root"]) + 1:]: r for r in results}
    assert all(r["schema_version"] == 3 for r in results)
    assert got["share/film.gif"]["qc_notes"][:1] == [MULTIFRAME_NOTE]
    assert {got[k]["image_format"] for k in ("share/film.jp2", "share/film.j2k")} == {"jpeg2000"}
    assert (got["share/film.bmp"]["image_format"], got["share/SCAN0001"]["image_format"]) == ("bmp", "png")
    lateral, frontal = got["pacs/S1/LATERAL.dcm"], got["pacs/S1/IM0002.dcm"]
    assert LATERAL_NOTE in lateral["qc_notes"] and lateral["ctr"] is None
    assert "ctr_not_measurable" not in lateral["qc_notes"]
    assert frontal["ctr"] is not None or "ctr_not_measurable" in frontal["qc_notes"]  # frontal: measured
    assert got["pacs/S1/CT0001"]["image_format"] == "dicom" and got["pacs/S1/CT0001"]["mask_rle"] is None
    assert any(e.startswith("share/") for e in run["summary"]["skipped_by_name_examples"])


def test_the_console_names_the_skips_and_a_rerun_redoes_only_errors_and_a_newly_wanted_modality(
        local_run, heart_checkpoint, capsys):
    run = local_run
    capsys.readouterr()
    # Resume: skipped rows are done; error rows are retried; --modalities with CT redoes the CT. The masks
    # folder, now holding this output's masks, is our own output: counted by name, never listed.
    masks = _files_on_disk(os.path.join(run["root"], "masks"))
    assert _infer(heart_checkpoint, "--input", run["root"], "--output", run["out"], "--masks-out",
                  os.path.join(run["root"], "masks"), "--modalities", "CR,DX,OT,CT") == 0
    printed = capsys.readouterr().out
    again = _summary(run["out"])
    n_errors = sum(1 for v in run["rows"].values() if v[0] == "error")
    assert again["processed"] == n_errors + 1 and again["skipped_resume"] == len(run["rows"]) - n_errors - 1
    assert again["skipped_files"] == run["summary"]["skipped_files"] - 1
    assert again["skipped"]["output"] == masks == 1 + run["summary"]["ok"]
    ct = next(r for r in read_results(run["out"]).to_pylist() if r["image_uri"].endswith("CT0001"))
    assert ct["status"] == "ok"
    line = next(x for x in printed.splitlines() if x.startswith("  skipped ") and "every path" in x)
    assert line.startswith(f"  skipped {sum(again['skipped'].values())}: ") and "os-clutter 5" in line
    assert f"{again['skipped_files']} skipped (not chest films)" in printed
    assert "not an image: DICOM Structured Report (Basic Text SR Storage) x1" in printed


@pytest.fixture(scope="module")
def s3_run(ray_local, s3_endpoint, heart_checkpoint, tmp_path_factory):
    """The same archive as objects under s3://BUCKET/in/, plus two folder marker objects."""
    root = str(tmp_path_factory.mktemp("archive_s3") / "in")
    rows, by_name = _archive(root)
    bucket = s3_endpoint.create_bucket(f"arch-{uuid.uuid4().hex[:10]}")
    client = s3_endpoint.client()
    objects = 0
    for folder, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            with open(os.path.join(folder, name), "rb") as f:
                client.put_object(Bucket=bucket[5:], Key=f"in/{rel}", Body=f.read())
            objects += 1
    for marker in ("in/pacs/S1/", "in/share/empty-folder/"):  # what a console's "New folder" leaves
        client.put_object(Bucket=bucket[5:], Key=marker, Body=b"")
        objects += 1
    del by_name["masks/stale.mask.png"]  # no --masks-out here: an ordinary film
    rows["masks/stale.mask.png"] = ("ok", None)
    out = str(tmp_path_factory.mktemp("archive_s3_out") / "out")
    code = _infer(heart_checkpoint, "--input", f"{bucket}/in", "--output", out)
    return {"bucket": bucket, "rows": rows, "skipped": {**_count(by_name.values()), "folder-marker": 2},
            "out": out, "code": code, "summary": _summary(out), "objects": objects}


def test_the_same_archive_over_s3_adds_up_to_the_objects(s3_run):
    run = s3_run
    assert run["code"] == 0
    _check_run(read_results(run["out"]).to_pylist(), run["rows"], run["skipped"], run["summary"],
               f"{run['bucket']}/in/", run["objects"])


def test_s3_listing_mtimes_are_pyarrows_and_ranged_reads_work(s3_run):
    """Results of runs listed by pyarrow must keep resuming: the same mtime_ns for every object."""
    import pyarrow.fs as pafs

    prefix = f"{s3_run['bucket']}/in/share"
    listed = {e.uri: e.mtime_ns for e in storage.iter_files(prefix) if e.kind == "file"}
    fs, path = storage.filesystem(prefix)
    theirs = {"s3://" + i.path: i.mtime_ns for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
              if i.type == pafs.FileType.File}
    assert listed and all(listed[u] == theirs[u] for u in listed)
    uri = f"{prefix}/README"
    assert storage.read_head(uri, 3) == b"do " and storage.read_range(uri, 3) == b"not delete\n"
    assert storage.read_range(uri, 1000) == b""
    assert storage.read_head(f"{s3_run['bucket']}/in/pacs/S1/EMPTY", 8) == b""


# --------------------------------------------------------------------------- --max-pixels, --modalities


def test_max_pixels_and_modalities_flags_reach_the_decode_tasks_and_bad_values_name_the_flag(tmp_path,
                                                                                              capsys):
    from raysegment.cli import build_parser, main
    from raysegment.cli import infer as cli_infer
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.infer import stages
    from raysegment.io import decode

    assert cli_infer.DEFAULT_MAX_PIXELS == decode.DEFAULT_MAX_PIXELS == 100_000_000  # documented default
    assert cli_infer.RADIOGRAPH_MODALITIES == decode.RADIOGRAPH_MODALITIES
    args = build_parser().parse_args(["infer", "--input", "i", "--output", "o", "--max-pixels", "1_000",
                                      "--modalities", "dx, ct"])
    io_section = cli_infer.infer_config(args, storage.S3Options()).io
    assert (io_section.max_pixels, io_section.modalities) == (1000, ("DX", "CT"))
    defaults = cli_infer.infer_config(build_parser().parse_args(["infer", "--input", "i", "--output", "o"]),
                                      storage.S3Options()).io
    assert (defaults.max_pixels, defaults.modalities) == (100_000_000, ("CR", "DX", "OT"))
    everything = build_parser().parse_args(["infer", "--input", "i", "--output", "o", "--modalities", "all"])
    assert cli_infer.infer_config(everything, storage.S3Options()).io.modalities is None

    film = tmp_path / "big.png"
    film.write_bytes(cv2.imencode(".png", np.zeros((40, 40), np.uint8))[1].tobytes())  # 1600 pixels
    row = {"image_uri": str(film), "input_size": film.stat().st_size}
    stages._decode_row(row, stages._read_row(row, storage.S3Options()), PreprocessConfig(size=32), None,
                       io_section.input_options())
    assert row["status"] == "error" and "over the 0.001 MP limit" in row["error"]
    assert "--max-pixels" in row["error"]
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(_dicom_film(Modality="CT"))
    row = {"image_uri": str(ct), "input_size": ct.stat().st_size}
    stages._decode_row(row, stages._read_row(row, storage.S3Options()), PreprocessConfig(size=32), None,
                       defaults.input_options())
    assert (row["status"], row["skip_reason"], row["image_format"]) == ("skipped", MODALITY_CT, "dicom")

    capsys.readouterr()
    for flag, value, message in (
            ("--max-pixels", "0", "--max-pixels: must be at least 1, got 0"),
            ("--max-pixels", "lots", "--max-pixels: expected a whole number of pixels, got 'lots'"),
            ("--modalities", ",", "--modalities: expected DICOM Modality codes such as CR,DX,OT")):
        assert main(["infer", "--input", str(tmp_path), "--output", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"raysegment infer: error: {message}") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err and not (tmp_path / "o").exists()  # before anything is written


def test_training_drops_a_pair_over_data_max_pixels_naming_the_key(tmp_path):
    from raysegment.data.datasets import Pair
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.train.data import prepare_pair

    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    image.write_bytes(cv2.imencode(".png", _film())[1].tobytes())
    mask.write_bytes(cv2.imencode(".png", np.zeros((48, 48), np.uint8))[1].tobytes())
    pair = Pair("a", str(image), (str(mask),))
    assert prepare_pair(pair, PreprocessConfig(size=32))[0].shape == (32, 32)
    with pytest.raises(DecodeError, match="data.max_pixels"):
        prepare_pair(pair, PreprocessConfig(size=32), max_pixels=48 * 48 - 1)


def test_training_and_evaluate_data_sets_take_the_same_formats_and_names(tmp_path):
    """A generic layout whose films are BMP, JPEG 2000, a DICOM named .IMA and one without an extension:
    all paired by stem and decoded by the one input path; a notes file and OS clutter are no images."""
    from raysegment.data.datasets import discover, load_pair

    film = _film()
    mask = np.zeros_like(film)
    mask[10:40, 5:20] = mask[10:40, 28:43] = 255
    files = {"cxr/a.bmp": _encode("BMP", film), "cxr/b.jp2": _encode("JPEG2000", film),
             "cxr/c.IMA": _dicom_film(), "cxr/d": _dicom_film(), "cxr/notes.txt": b"x", "cxr/Thumbs.db": b"x",
             "cxr/._a.bmp": b"x"}
    files.update({f"masks/{s}.png": cv2.imencode(".png", mask)[1].tobytes() for s in "abcd"})
    for rel, data in files.items():
        _write(str(tmp_path), rel, data)
    found = discover(str(tmp_path))
    assert sorted(p.image_id for p in found.pairs) == ["a", "b", "c", "d"] and found.unmatched_images == []
    for pair in found.pairs:
        image, truth = load_pair(pair)
        assert image.shape == film.shape and truth.sum() == 2 * 30 * 15
