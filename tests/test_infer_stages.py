"""The bulk-inference stages and single-image predict WITHOUT Ray and without a trained model.

The model is replaced by an oracle forward whose probability IS the model input (a bright blob on a dark
background is "lung"), so every expected value is known independently of the code under test: the mask
must land where the blob was (letterbox on wide and tall images, MONOCHROME1 DICOM), a truth equal to the
blob gives dice 1, a truth shifted by k pixels gives the dice counted by hand, spacing gives hd95_mm, and
options (threshold, keep-largest 0, no hole filling) change the masks as documented. The pipeline's stage
functions (decode_batch -> forward -> postprocess_batch) run in-process exactly as Ray would call them.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest
from worklist_helpers import listed

from raysegment.cluster.plan import ClusterResources, NodeResources
from raysegment.data.model_input import InputOptions
from raysegment.data.preprocess import PreprocessConfig
from raysegment.errors import PlanError
from raysegment.infer import pipeline, sizing, stages
from raysegment.infer import predict as predict_module
from raysegment.infer.config import ScalingSection
from raysegment.io import storage
from raysegment.io.decode import decode_mask_png, encode_png
from raysegment.model.checkpoint import LoadedModel, ModelSpec
from raysegment.model.unet import UNetConfig
from raysegment.outputs.results import SCHEMA
from raysegment.postprocess.masks import PostprocessConfig
from raysegment.testing.dicom import make_dicom_bytes

SIZE = 64


def _oracle(model, images, micro_batch=None, threads=None):
    """The 'model': probability = the (normalized uint8) model input itself."""
    return np.ascontiguousarray(images, dtype=np.uint8)


def _oracle_structures(model, images, micro_batch=None, threads=None):
    """The oracle as forward_structures returns it: (N, C=1, S, S), the lung channel."""
    return _oracle(model, images)[:, None]


def _blob(h: int, w: int) -> np.ndarray:
    """Two bright asymmetric 'lungs' on black: an L on the image left, a block on the right."""
    m = np.zeros((h, w), bool)
    m[h // 8 : 7 * h // 8, w // 10 : 3 * w // 10] = True
    m[h // 8 : h // 4, w // 10 : 2 * w // 5] = True  # the L's arm
    m[h // 8 : h // 2, 6 * w // 10 : 8 * w // 10] = True  # upper half only: no vertical symmetry
    return m


def _png(mask: np.ndarray) -> bytes:
    return encode_png(mask.astype(np.uint8) * 255)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _loaded(resize: str = "letterbox", threshold: float = 0.5) -> LoadedModel:
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=SIZE, resize=resize,
                                                                            normalize="unit"), threshold)
    return LoadedModel(model=None, spec=spec, model_id="oracle", config={})


@pytest.mark.parametrize("shape", [(90, 150), (150, 90), (120, 120)])
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_predict_puts_the_mask_where_the_lungs_are(monkeypatch, shape, resize):
    monkeypatch.setattr(predict_module, "forward_structures", _oracle_structures)
    truth = _blob(*shape)
    # fix_inversion=False: bright blobs on black are no X-ray; the inversion rule (tested elsewhere) would
    # read them as an inverted export.
    result = predict_module.predict(_loaded(resize), _png(truth), "x.png", fix_inversion=False)
    mask = result.segmentation.mask
    assert mask.shape == shape and _iou(mask, truth) > 0.9
    assert _iou(mask, truth[:, ::-1]) < 0.5 and _iou(mask, truth[::-1]) < 0.75  # not mirrored
    assert result.segmentation.right_area_px == (mask[:, : shape[1] // 2]).sum()  # image left = patient right


def test_predict_monochrome1_dicom_is_inverted_before_the_model(monkeypatch):
    """MONOCHROME1 stores lungs (air) as HIGH values shown dark... inverted: the decoded image must look like
    MONOCHROME2, so the oracle sees bright lungs and the mask is the lungs, not the background."""
    monkeypatch.setattr(predict_module, "forward_structures", _oracle_structures)
    truth = _blob(80, 100)
    stored = np.where(truth, 0, 4000).astype(np.uint16)  # MONOCHROME1: low value = bright on screen
    data = make_dicom_bytes(stored, photometric="MONOCHROME1", pixel_spacing=(0.5, 0.25))
    result = predict_module.predict(_loaded(), data, "m1.dcm")
    assert _iou(result.segmentation.mask, truth) > 0.9
    assert result.meta.pixel_spacing_mm == (0.5, 0.25)


def _run_stages(tmp_path, files: dict[str, bytes], truth: dict[str, str] | None = None, *,
                threshold: float = 0.5, post: PostprocessConfig | None = None,
                spacing_mm: float | None = None, resize: str = "letterbox") -> dict[str, dict]:
    """decode_batch -> oracle forward -> postprocess_batch on the files; returns {file name: row}."""
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # The run's listing (truth matched by image id as the driver does), in the stages' input schema.
    items = listed(str(folder), truth=truth)
    preprocess = PreprocessConfig(size=SIZE, resize=resize, normalize="unit")
    inputs = pa.Table.from_pylist(items, schema=stages.INPUT_SCHEMA)
    decoded = pa.concat_tables(stages.decode_batch(inputs, preprocess, spacing_mm, storage.S3Options(),
                                                     options=InputOptions(correct_inversion=False)))
    rows = decoded.to_pylist()
    for row in rows:
        image = row.pop("image")
        row["prob"] = None if image is None else _oracle(None, np.frombuffer(image, np.uint8)).tobytes()
        row["infer_ms"] = 0.0
    inferred = pa.Table.from_pylist(rows, schema=stages.INFERRED_SCHEMA)
    job = stages.PostprocessJob("20250101T000000Z-000000", "oracle", threshold, preprocess,
                                  post or PostprocessConfig(), None,
                                  storage.S3Options())
    out = stages.postprocess_batch(inferred, job)
    assert out.schema.equals(SCHEMA)
    return {os.path.basename(r["image_uri"]): r for r in out.to_pylist()}


def test_stages_letterbox_wide_and_tall_and_truth_metrics(tmp_path):
    wide, tall = _blob(90, 150), _blob(150, 90)
    shifted = np.roll(wide, 3, axis=1)  # the truth 3 px to the right of the prediction
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    for name, mask in (("wide.png", wide), ("tall.png", tall), ("shift.png", shifted)):
        (truth_dir / name).write_bytes(_png(mask))
    rows = _run_stages(tmp_path, {"wide.png": _png(wide), "tall.png": _png(tall), "shift.png": _png(wide)},
                       {"wide": str(truth_dir / "wide.png"), "tall": str(truth_dir / "tall.png"),
                        "shift": str(truth_dir / "shift.png")}, spacing_mm=0.5)
    for name, truth in (("wide.png", wide), ("tall.png", tall)):
        row = rows[name]
        mask = decode_mask_png(row["mask_png"])
        assert row["status"] == "ok" and (row["height"], row["width"]) == truth.shape
        assert _iou(mask, truth) > 0.9 and row["dice"] > 0.95
        assert row["lung_area_px"] == mask.sum() and row["threshold"] == 0.5
        # --pixel-spacing for a PNG: cm2 and hd95 in millimetres (isotropic: half the pixels).
        assert (row["pixel_spacing_row_mm"], row["pixel_spacing_col_mm"]) == (0.5, 0.5)
        assert row["lung_area_cm2"] == pytest.approx(row["lung_area_px"] * 0.25 / 100)
        assert row["hd95_mm"] == pytest.approx(row["hd95"] * 0.5)
    # A known offset gives a known dice, counted by hand from the prediction itself.
    row = rows["shift.png"]
    pred = decode_mask_png(row["mask_png"])
    overlap = (pred & shifted).sum()
    assert (row["tp"], row["fp"], row["fn"]) == (overlap, pred.sum() - overlap, shifted.sum() - overlap)
    assert row["dice"] == pytest.approx(2 * overlap / (pred.sum() + shifted.sum()))
    assert 0.5 < row["dice"] < rows["wide.png"]["dice"]


def test_stages_dicom_spacing_wins_and_monochrome1(tmp_path):
    truth = _blob(80, 100)
    stored = np.where(truth, 0, 4000).astype(np.uint16)
    (tmp_path / "truth.png").write_bytes(_png(truth))
    rows = _run_stages(tmp_path, {"m1.dcm": make_dicom_bytes(stored, photometric="MONOCHROME1",
                                                             pixel_spacing=(0.2, 0.4))},
                       {"m1": str(tmp_path / "truth.png")}, spacing_mm=1.0)
    row = rows["m1.dcm"]
    assert (row["image_format"], row["pixel_spacing_row_mm"],
            row["pixel_spacing_col_mm"]) == ("dicom", 0.2, 0.4)
    assert row["dice"] > 0.95 and row["lung_area_cm2"] == pytest.approx(row["lung_area_px"] * 0.08 / 100)
    assert not math.isnan(row["hd95_mm"]) and row["hd95_mm"] <= row["hd95"] * 0.4 + 1e-9


def test_stages_truth_error_keeps_the_row_ok(tmp_path):
    (tmp_path / "small.png").write_bytes(_png(np.ones((10, 10), bool)))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    image = _png(_blob(60, 80))
    rows = _run_stages(tmp_path, {"a.png": image, "b.png": image},
                       {"a": str(tmp_path / "small.png"), "b": str(tmp_path / "junk.png")})
    for name, reason in (("a.png", "is 10x10 but image"), ("b.png", "junk.png")):
        row = rows[name]
        assert row["status"] == "ok" and row["mask_png"] is not None and row["lung_area_px"] > 0
        assert reason in row["truth_error"] and row["dice"] is None and row["tp"] is None, row["truth_error"]


def test_stages_threshold_keep_largest_and_hole_options(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    image[8:56, 6:26] = 200  # right lung, p = 0.78
    image[20:30, 12:20] = 0  # a hole in it
    image[8:56, 36:58] = 255  # left lung
    image[60:63, 60:63] = 220  # a speck, p = 0.86
    files = {"x.png": encode_png(image)}
    rows = _run_stages(tmp_path, files, resize="stretch")
    default = decode_mask_png(rows["x.png"]["mask_png"])
    assert default[25, 15] and not default[61, 61] and rows["x.png"]["n_components"] == 3
    high = _run_stages(tmp_path, files, threshold=0.9, resize="stretch")["x.png"]
    assert high["threshold"] == 0.9 and high["right_lung_area_px"] == 0 and high["left_lung_area_px"] > 0
    assert high["qc_reasons"] == ["right_lung_missing"] and high["qc_flag"] is True
    everything = _run_stages(tmp_path, files, post=PostprocessConfig(keep_largest=0),
                             resize="stretch")["x.png"]
    assert decode_mask_png(everything["mask_png"])[61, 61]
    holes = _run_stages(tmp_path, files, post=PostprocessConfig(fill_holes=False), resize="stretch")["x.png"]
    assert not decode_mask_png(holes["mask_png"])[25, 15]
    assert holes["lung_area_px"] == rows["x.png"]["lung_area_px"] - 80


def test_stages_errors_are_rows_with_their_stage(tmp_path):
    rows = _run_stages(tmp_path, {"bad.png": b"\x89PNG\r\n\x1a\n cut", "ok.png": _png(_blob(40, 40))})
    assert rows["bad.png"]["status"] == "error" and rows["bad.png"]["error_stage"] == "decode"
    assert rows["bad.png"]["error_type"] == "DecodeError" and rows["bad.png"]["error"].startswith("bad.png: ")
    assert rows["bad.png"]["mask_png"] is None and rows["ok.png"]["status"] == "ok"


@pytest.mark.parametrize("gpus, actors, message", [
    (0.0, None, "cannot schedule 1 actor(s) x (1 GPU + 1 CPU) and keep CPU for decoding: "
                + "the cluster has 1 node(s), 2 CPU, 0 GPU in total"),
    (1.0, 2, "cannot schedule 2 actor(s) x (1 GPU + 1 CPU) and keep CPU for decoding: "
             + "the cluster has 1 node(s), 2 CPU, 1 GPU in total"),
])
def test_unschedulable_inference_plan_is_refused_before_any_work(gpus, actors, message):
    resources = ClusterResources((NodeResources(2.0, gpus),))
    with pytest.raises(PlanError) as err:
        sizing.plan(ScalingSection(num_actors=actors, use_gpu=True), resources)
    assert str(err.value).startswith(message) and "--num-actors" in str(err.value)
    ok = sizing.plan(ScalingSection(use_gpu=False), resources)
    assert (ok.num_actors, ok.use_gpu, ok.cpus_per_actor, ok.decode_cpus) == (2, False, 0.75, 0.5)


def test_infer_flags_reach_the_config(monkeypatch):
    """`raysegment infer` flags -> InferConfig (the stages above then honour them); no Ray is started."""
    from raysegment.cli import main

    seen = []
    monkeypatch.setattr(pipeline, "run_inference",
                        lambda config: seen.append(config) or {"missing": 0, "dry_run": True})
    assert main(["infer", "--input", "m.csv", "--checkpoint", "ck", "--output", "out", "--threshold", "0.3",
                 "--keep-largest", "0", "--no-fill-holes", "--manifest-column", "scan",
                 "--pixel-spacing", "0.7", "--no-resume", "--limit", "4", "--no-gpu"]) == 0
    [config] = seen
    assert (config.model.threshold, config.io.manifest_column, config.io.pixel_spacing_mm, config.io.resume,
            config.io.limit, config.scaling.use_gpu) == (0.3, "scan", 0.7, False, 4, False)
    assert config.model.postprocess == PostprocessConfig(keep_largest=0, fill_holes=False)
    assert main(["infer", "--input", "in", "--checkpoint", "ck", "--output", "out"]) == 0
    defaults = seen[1]
    assert (defaults.model.threshold, defaults.io.resume, defaults.scaling.use_gpu,
            defaults.model.postprocess) == (None, True, None, PostprocessConfig())
