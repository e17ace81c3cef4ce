"""Bulk inference (issue #4): every input becomes exactly one row, bad files become error rows, masks match
single-image predict pixel for pixel, ground-truth metrics match metrics.image_metrics, resume never
duplicates. Plus unit tests of postprocessing, input listing/sanitizing and result deduplication.

One archive and two pipeline runs over the same output serve the module (a run costs ~10 s on 2 CPUs):
  1. `--limit 10` through the CLI: the 3 bad files (named to sort first) and 7 good ones;
  2. the full archive: resumes, skipping the 7 done ok and retrying the 3 errors.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from worklist_helpers import listed, skipped

from raysegment.data.preprocess import PreprocessConfig, geometry
from raysegment.errors import InputError
from raysegment.infer.predict import predict
from raysegment.io.decode import decode_mask, decode_mask_png, encode_png
from raysegment.io.names import is_input_name, mask_key, sanitize_key
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.forward import forward_probabilities
from raysegment.model.unet import UNet, UNetConfig
from raysegment.outputs.results import SCHEMA, SCHEMA_VERSION, read_results
from raysegment.postprocess.masks import (
    PostprocessConfig,
    Segmentation,
    fill_holes,
    keep_largest_components,
    postprocess,
    qc_reasons,
    split_lungs,
)
from raysegment.postprocess.metrics import image_metrics
from raysegment.testing.dicom import make_dicom_bytes
from raysegment.testing.models import untrained_unet

BAD = {"0_truncated.png": "truncated PNG", "0_empty.png": "empty file", "0_text.png": "not an image"}
N_SYNTH = 30


def _read(*parts: str) -> bytes:
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    """30 synthetic X-rays + masks (generic layout), 3 bad files, a 16-bit PNG and a DICOM in cxr/."""
    from raysegment.data.synth import make_phantom_16bit, write_dataset

    root = str(tmp_path_factory.mktemp("archive"))
    write_dataset(root, n=N_SYNTH, size=96, seed=7, layout="generic")
    cxr = os.path.join(root, "cxr")
    good = _read(cxr, "SYN_0000_0.png")
    contents = {"0_truncated.png": good[: len(good) // 2], "0_empty.png": b"", "0_text.png": b"hello, world"}
    image16, _ = make_phantom_16bit(7, 99, 80)
    contents["sixteen.png"] = encode_png(image16)
    contents["scan.dcm"] = make_dicom_bytes(image16[:, :72], pixel_spacing=(0.2, 0.25))  # 80 x 72, not square
    for name, data in contents.items():
        with open(os.path.join(cxr, name), "wb") as f:
            f.write(data)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, archive) -> str:
    """An untrained tiny UNet whose masks are NOT trivial: BatchNorm statistics randomized and the head bias
    set so that a quarter of the pixels of real inputs are lung, i.e. many pixels near the threshold."""
    from raysegment.data.preprocess import preprocess_image, to_tensor
    from raysegment.io.decode import decode_image

    model = untrained_unet()
    spec = ModelSpec(UNetConfig(base_channels=8, depth=3), PreprocessConfig(size=64), threshold=0.5)
    probe = np.stack([preprocess_image(decode_image(_read(archive, "cxr", f"SYN_000{i}_{i % 2}.png")).image,
                                       spec.preprocess)[0] for i in range(4)])
    with torch.no_grad():
        model.head.bias -= torch.quantile(model(to_tensor(probe)).flatten(), 0.75)
    uri = str(tmp_path_factory.mktemp("infer_ckpt") / "ckpt")
    save_checkpoint(uri, model, spec)
    return uri


@pytest.fixture(scope="module")
def runs(ray_local, archive, checkpoint, tmp_path_factory) -> dict:
    """The three runs over one output; returns their summaries and paths."""
    from raysegment.cli import main
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference

    base = tmp_path_factory.mktemp("infer_out")
    out, masks = str(base / "results"), str(base / "masks")
    cxr = os.path.join(archive, "cxr")
    assert main(["infer", "--input", cxr, "--checkpoint", checkpoint, "--output", out, "--masks-out", masks,
                 "--ground-truth", archive, "--limit", "10", "--batch-size", "4"]) == 0
    first = read_results(out, all_rows=True, columns=["image_uri", "status"])
    config = InferConfig(IOSection(input=cxr, output=out, masks_out=masks, ground_truth=archive),
                         ModelSection(checkpoint=checkpoint), ScalingSection(batch_size=4))
    second = run_inference(config)
    return {"out": out, "masks": masks, "cxr": cxr, "first": first, "second": second}


@pytest.fixture(scope="module")
def results(runs) -> dict[str, dict]:
    """The deduplicated output as {file name: row}."""
    return {os.path.basename(r["image_uri"]): r for r in read_results(runs["out"]).to_pylist()}


# --- the pipeline ----------------------------------------------------------------------------------

def test_every_input_is_one_row_and_bad_files_are_error_rows(runs, results):
    assert len(results) == N_SYNTH + 5 == 35
    for name, reason in BAD.items():
        row = results[name]
        assert row["status"] == "error" and row["error_stage"] == "decode", row
        assert reason in row["error"] and row["mask_png"] is None
    ok = {n: r for n, r in results.items() if n not in BAD}
    assert all(r["status"] == "ok" and r["error"] is None for r in ok.values())
    # 16-bit PNG and DICOM have masks at their original resolution; the DICOM's spacing gives cm2
    assert decode_mask_png(results["sixteen.png"]["mask_png"]).shape == (80, 80)
    dicom = results["scan.dcm"]
    assert (dicom["image_format"], dicom["height"], dicom["width"]) == ("dicom", 80, 72)
    assert dicom["pixel_spacing_row_mm"] == 0.2 and dicom["pixel_spacing_col_mm"] == 0.25
    assert dicom["lung_area_cm2"] == pytest.approx(dicom["lung_area_px"] * 0.2 * 0.25 / 100)
    for row in ok.values():
        mask = decode_mask_png(row["mask_png"])
        assert mask.shape == (row["height"], row["width"])
        assert row["lung_area_px"] == mask.sum() == row["right_lung_area_px"] + row["left_lung_area_px"]
        assert row["lung_fraction"] == pytest.approx(mask.mean())
        assert row["qc_flag"] == bool(row["qc_reasons"])
        assert row["model_id"] == load_model_id(runs) and row["schema_version"] == 3
        assert row["input_size"] > 0 and row["input_mtime_ns"] > 0 and row["total_ms"] > 0
    assert read_results(runs["out"]).schema.equals(SCHEMA)


def test_the_cli_run_wrote_its_report(runs):
    """`raysegment infer` (the first run, through the CLI) ended with OUTPUT/report.html: its 10 inputs."""
    from report_helpers import counts, parse

    with open(os.path.join(runs["out"], "report.html"), encoding="utf-8") as f:
        shown = counts(parse(f.read()))
    assert (shown["images"], shown["ok"], shown["errors"]) == (10, 7, 3)


def load_model_id(runs) -> str:
    return runs["second"]["model_id"]


def test_masks_equal_single_image_predict_pixel_for_pixel(runs, results, checkpoint):
    loaded = load_model(checkpoint)
    areas = []
    for name, row in results.items():
        if row["status"] != "ok":
            continue
        data = _read(runs["cxr"], name)
        reference = predict(loaded, data, name)
        got = decode_mask_png(row["mask_png"])
        assert np.array_equal(got, reference.segmentation.mask), f"{name}: pipeline and predict() differ"
        assert row["n_components"] == reference.segmentation.n_components
        assert row["mean_confidence"] == pytest.approx(reference.segmentation.mean_confidence)
        assert row["qc_reasons"] == qc_reasons(reference.segmentation)  # the exact list, not just the flag
        # A lungs-only checkpoint: the multi-structure columns stay null, no CTR note.
        assert row["structures"] is None and row["ctr"] is None and row["thoracic_row"] is None
        assert "ctr_not_measurable" not in row["qc_notes"]
        areas.append(row["lung_fraction"])
    assert len(areas) == 32 and 0.02 < np.median(areas) < 0.98  # masks are far from trivial


def test_ground_truth_metrics_match_image_metrics(runs, results, archive):
    scored = [r for r in results.values() if r["dice"] is not None]
    assert len(scored) == N_SYNTH  # the 16-bit PNG and the DICOM have no ground truth
    for row in scored:
        truth = decode_mask(_read(archive, "masks", row["image_id"] + ".png"))
        direct = image_metrics(decode_mask_png(row["mask_png"]), truth)
        for name in ("dice", "iou", "precision", "recall", "hd95"):
            assert row[name] == pytest.approx(direct[name], abs=1e-12), (row["image_id"], name)
        assert (row["tp"], row["fp"], row["fn"]) == (direct["tp"], direct["fp"], direct["fn"])
    metrics = runs["second"]["metrics"]
    assert metrics["n_scored"] == N_SYNTH
    assert metrics["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in scored]))
    assert metrics["dice"]["median"] == pytest.approx(np.median([r["dice"] for r in scored]))


def test_resume_skips_done_retries_errors_never_duplicates(runs):
    first, second = runs["first"], runs["second"]
    assert first.num_rows == 10 and first.column("status").to_pylist().count("error") == 3
    # The second run skips the 7 images done ok and retries the 3 errors along with the 25 new inputs.
    assert (second["inputs_seen"], second["skipped_resume"], second["processed"]) == (35, 7, 28)
    assert (second["rows_written"], second["ok"], second["errors"], second["missing"]) == (28, 32, 3, 0)
    assert second["errors_by_reason"] == {"decode/DecodeError": 3}
    history = read_results(runs["out"], all_rows=True, columns=["image_uri"])
    assert history.num_rows == 10 + 28  # nothing done ok was redone
    deduped = read_results(runs["out"], columns=["image_uri", "status"])
    uris = deduped.column("image_uri").to_pylist()
    assert len(uris) == len(set(uris)) == 35
    summary = _read(runs["out"], "summary.json").decode()
    assert '"skipped_resume": 7' in summary


def test_s3_manifest_in_s3_results_out(ray_local, s3_endpoint, archive, checkpoint):
    """Manifest, images, checkpoint, results and masks all on S3; a missing object is a read error row."""
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.io import storage

    root = s3_endpoint.create_bucket(f"infer-{uuid.uuid4().hex[:12]}")
    names = ("SYN_0000_0.png", "scan.dcm", "0_text.png")
    for name in names:
        storage.write_bytes(f"{root}/in/site a/{name}", _read(archive, "cxr", name))
    storage.upload_dir(checkpoint, f"{root}/ckpt")
    # + a dup
    entries = [f"in/site a/{n}" for n in names] + ["in/missing.png", f"{root}/in/site a/{names[0]}"]
    storage.write_text(f"{root}/manifest.csv", "\n".join(["image_uri", *entries]) + "\n")
    summary = run_inference(InferConfig(
        IOSection(input=f"{root}/manifest.csv", output=f"{root}/out", masks_out=f"{root}/masks"),
        ModelSection(checkpoint=f"{root}/ckpt"),
        ScalingSection(batch_size=4, num_actors=1)))  # one torch import, not two, on 2 cores
    assert (summary["inputs_seen"], summary["ok"], summary["errors"], summary["missing"]) == (4, 2, 2, 0)
    rows = {storage.basename(r["image_uri"]): r for r in read_results(f"{root}/out").to_pylist()}
    assert rows["missing.png"]["error_stage"] == "read" and rows["0_text.png"]["error_stage"] == "decode"
    assert rows["scan.dcm"]["mask_uri"] == f"{root}/masks/site a/scan.dcm.mask.png"
    assert rows["SYN_0000_0.png"]["input_size"] == len(_read(archive, "cxr", "SYN_0000_0.png"))
    client = s3_endpoint.client()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=root[5:], Prefix="masks/")["Contents"]}
    assert keys == {"masks/site a/SYN_0000_0.png.mask.png", "masks/site a/scan.dcm.mask.png"}
    for obj in client.list_objects_v2(Bucket=root[5:], Prefix="out/")["Contents"]:  # no credential anywhere
        body = client.get_object(Bucket=root[5:], Key=obj["Key"])["Body"].read()
        assert s3_endpoint.secret_access_key.encode() not in body, obj["Key"]


def test_masks_out_mirrors_input_keys(runs, results):
    row = results["scan.dcm"]
    assert row["mask_uri"] == os.path.join(runs["masks"], "scan.dcm.mask.png")
    assert _read(row["mask_uri"]) == row["mask_png"]
    written = sorted(os.listdir(runs["masks"]))
    assert len(written) == 32 and all(n.endswith(".mask.png") for n in written)


# --- postprocess units -----------------------------------------------------------------------------

def _blobs() -> np.ndarray:
    """40x60 mask: a big blob on the image left with a hole, a mid blob on the right, a speck."""
    m = np.zeros((40, 60), bool)
    m[5:35, 5:25] = True
    m[15:20, 12:18] = False  # hole inside the left blob
    m[8:30, 35:52] = True
    m[2:4, 56:58] = True  # speck
    return m


def test_keep_largest_components_and_fill_holes():
    m = _blobs()
    kept = keep_largest_components(m, 2)
    assert not kept[2:4, 56:58].any() and kept[5, 5] and kept[8, 35]
    assert np.array_equal(keep_largest_components(m, 0), m)
    filled = fill_holes(kept)
    assert filled[15:20, 12:18].all() and filled.sum() == kept.sum() + 30
    # background touching the border is not a hole, even through a diagonal-free channel
    notch = np.ones((10, 10), bool)
    notch[0:5, 4] = False
    assert np.array_equal(fill_holes(notch), notch)


def test_split_lungs_by_position_patients_right_is_image_left():
    m = fill_holes(keep_largest_components(_blobs(), 2))
    right, left = split_lungs(m)
    assert right[10, 10] and not right[10, 40]  # image-left blob = patient's right lung
    assert left[10, 40] and not left[10, 10]
    assert not (right & left).any() and np.array_equal(right | left, m)
    # one component: the image's vertical centre decides
    only_right_side = np.zeros((20, 40), bool)
    only_right_side[5:15, 25:35] = True
    r, l_ = split_lungs(only_right_side)
    assert not r.any() and l_.sum() == 100


def test_postprocess_restores_original_size_and_flags_qc():
    geo = geometry(50, 70, PreprocessConfig(size=32))
    prob = np.zeros((32, 32), np.uint8)
    prob[4:28, 3:13] = 230  # two lungs at 0.9 probability
    prob[4:28, 19:29] = 230
    prob[14:16, 6:8] = 0  # a hole
    seg = postprocess(prob, geo, 0.5)
    assert seg.mask.shape == (50, 70) and seg.right_area_px > 0 and seg.left_area_px > 0
    assert seg.mean_confidence > 0.85 and qc_reasons(seg) == []
    right, left = split_lungs(seg.mask)
    assert (seg.right_area_px, seg.left_area_px) == (right.sum(),
                                                     left.sum()) and right[25, 10] and left[25, 60]
    one = postprocess(np.where(np.arange(32) < 16, prob, 0).astype(np.uint8), geo, 0.5)
    assert "left_lung_missing" in qc_reasons(one)
    assert qc_reasons(postprocess(np.zeros((32, 32), np.uint8), geo, 0.5)) == ["no_lung"]
    faint = postprocess((prob // 230 * 150).astype(np.uint8), geo, 0.5)  # p = 0.59
    assert "low_confidence" in qc_reasons(faint)
    full = Segmentation(np.ones((10, 10), bool), 50, 50, 2, 0.99)
    assert qc_reasons(full, PostprocessConfig()) == ["lung_fraction_high"]


def test_forward_is_independent_of_batch_composition():
    torch.manual_seed(1)
    model = UNet(base_channels=4, depth=2).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    together = forward_probabilities(model, images)
    alone = np.stack([forward_probabilities(model, images[i : i + 1])[0] for i in range(5)])
    assert together.dtype == np.uint8 and np.array_equal(together, alone)


# --- inputs and results units ----------------------------------------------------------------------

def test_sanitize_key_and_mask_key():
    assert sanitize_key("../../etc/passwd") == "etc/passwd"
    assert sanitize_key("/abs/dir/./x.png") == "abs/dir/x.png"
    assert sanitize_key("s3://bucket/a/../b.dcm") == "bucket/a/b.dcm"
    assert sanitize_key("C:\\scans\\..\\p1\\img.png") == "scans/p1/img.png"
    assert sanitize_key("..") == "unnamed"
    assert mask_key("site/a.png") == "site/a.png.mask.png"
    assert mask_key("site/a.jpg") != mask_key("site/a.png")  # same stem, different masks
    assert mask_key("../../x") == "x.mask.png"


def test_listing_filters_names_and_reads_manifests(tmp_path):
    for rel in ("a/1.png", "a/2.JPG", "b/3.dcm", "b/1.2.840.10008", "b/noext", "b/notes.txt", "b/.hidden.png",
                "out/x.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    items = listed(str(tmp_path), exclude=(str(tmp_path / "out"),))
    assert [r["key"] for r in items] == ["a/1.png", "a/2.JPG", "b/1.2.840.10008", "b/3.dcm", "b/noext",
                                         "b/notes.txt"]  # every file but hidden ones: the bytes decide
    assert all(r["input_size"] == 1 and r["input_mtime_ns"] for r in items)
    assert listed(str(tmp_path), limit=2, exclude=(str(tmp_path / "out"),))[1]["key"] == "a/2.JPG"
    assert is_input_name("x.csv") and is_input_name("IM0001") and not is_input_name(".x.png")

    (tmp_path / "m.csv").write_text("image_uri,size\na/1.png,1\nb/3.dcm,\na/1.png,1\n")
    manifest = listed(str(tmp_path / "m.csv"))
    assert [r["image_uri"] for r in manifest] == [str(tmp_path / "a/1.png"), str(tmp_path / "b/3.dcm")]
    assert [r["key"] for r in manifest] == ["a/1.png", "b/3.dcm"]
    assert manifest[0]["input_size"] == 1 and manifest[1]["input_size"] is None
    with pytest.raises(InputError, match="no image column"):
        listed(str(tmp_path / "m.csv"), column="missing")


def test_resume_needs_same_model_truth_and_identity():
    before = {"model_id": "m1", "input_size": 10, "input_mtime_ns": 5, "input_etag": None, "truth_uri": None,
              "schema_version": SCHEMA_VERSION, "calibration_id": None}
    assert skipped(before, "m1", 10, 5, None, None)
    assert skipped(before, "m1", None, None, None, None)  # a manifest without identity columns
    assert not skipped(None, "m1", 10, 5, None, None)  # never done ok (or only errors)
    assert not skipped(before, "m2", 10, 5, None, None)  # another model
    assert not skipped(before, "m1", 11, 5, None, None) and not skipped(before, "m1", 10, 6, None, None)
    assert not skipped(before, "m1", 10, 5, None, "truth.png")  # now with ground truth: add metrics


def test_read_results_dedupes_latest_ok_wins(tmp_path):
    def write(run_id: str, rows: list[tuple[str, str]]) -> None:
        table = pa.table({"run_id": [run_id] * len(rows), "image_uri": [u for u, _ in rows],
                          "status": [s for _, s in rows], "lung_area_px": list(range(len(rows)))})
        os.makedirs(tmp_path / "runs" / run_id)
        pq.write_table(table, tmp_path / "runs" / run_id / "part-0.parquet")

    write("20250101T000000Z-aaaaaa", [("a", "ok"), ("b", "error"), ("c", "ok")])
    write("20250102T000000Z-bbbbbb", [("a", "error"), ("b", "ok"), ("c", "ok")])
    (tmp_path / "runs" / "20250103T000000Z-cccccc").mkdir()
    # killed writer
    (tmp_path / "runs" / "20250103T000000Z-cccccc" / "torn.parquet").write_bytes(b"PAR1 torn")
    got = {r["image_uri"]: r for r in read_results(str(tmp_path)).to_pylist()}
    assert {u: (r["status"], r["run_id"][:8]) for u, r in got.items()} == {
        "a": ("ok", "20250101"), "b": ("ok", "20250102"), "c": ("ok", "20250102")}
    assert read_results(str(tmp_path), all_rows=True).num_rows == 6
    assert read_results(str(tmp_path / "nothing")).num_rows == 0
