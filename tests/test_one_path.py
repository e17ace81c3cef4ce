"""Issue #20, one path from bytes to row: every command turns a file into the same model input
(data/model_input.py), scores it the same way (postprocess/scoring.py) and, where it writes rows, builds them
the same way (outputs/rows.py).

The end-to-end check: `evaluate`, `predict` and `infer` give the IDENTICAL mask and dice for the three
inputs where the paths used to drift: an inverted PNG export (evaluate did not invert it back), an
EXIF-rotated JPEG and a MONOCHROME1 DICOM. Plus fast unit tests of model_input.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from raysegment.data.model_input import (
    EXIF_MIRRORED_NOTE,
    MULTIFRAME_NOTE,
    Frame,
    InputOptions,
    decode_frame,
    prepare_input,
    to_model_input,
)
from raysegment.data.preprocess import PreprocessConfig
from raysegment.data.synth import make_phantom
from raysegment.errors import DecodeError, NotAnImageError
from raysegment.io.decode import apply_orientation, encode_png
from raysegment.testing.dicom import make_dicom_bytes

SIZE = 96
EXIF_CODE = 6  # displayed after a 90 degree clockwise turn
INVERTED = "inverted_input_corrected"


def _phantom(index: int):
    p = make_phantom(seed=5, index=index, size=SIZE)
    return p.image, p.left_mask | p.right_mask


def _jpeg(image: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def inputs() -> dict[str, tuple[bytes, np.ndarray]]:
    """file name -> (bytes, bool HxW expert mask as the decoded image shows it)."""
    inverted, inv_mask = _phantom(0)
    stored, exif_mask = _phantom(1)
    mono, mono_mask = _phantom(2)
    # MONOCHROME1: 0 is white. Stored values are the film's brightness inverted, so it displays normally.
    mono1 = make_dicom_bytes((4095 - mono.astype(np.uint16) * 16), photometric="MONOCHROME1",
                             bits_stored=12, pixel_spacing=(0.4, 0.4))
    return {
        "inverted.png": (encode_png(255 - inverted), inv_mask),
        "rotated.jpg": (_jpeg(stored, EXIF_CODE), apply_orientation(exif_mask, EXIF_CODE)),
        "mono1.dcm": (mono1, mono_mask),
    }


# --- model_input: fast unit tests ---------------------------------------------------------------

def test_an_inverted_export_is_inverted_back_and_noted():
    data, _ = inputs()["inverted.png"]
    frame = decode_frame(data, "inverted.png")
    raw = decode_frame(data, "inverted.png", InputOptions(correct_inversion=False))
    assert frame.inversion_corrected and frame.qc_notes == (INVERTED,)
    assert not raw.inversion_corrected and raw.qc_notes == ()
    np.testing.assert_allclose(frame.image, 1.0 - raw.image, atol=1e-6)
    assert frame.image.dtype == np.float32 and frame.meta.format == "png"


def test_dicom_is_never_inversion_checked_and_monochrome1_decodes_upright():
    mono1, _ = inputs()["mono1.dcm"]
    frame = decode_frame(mono1, "mono1.dcm")
    assert frame.meta.photometric == "MONOCHROME1" and not frame.inversion_corrected
    # a MONOCHROME2 film stored inverted (white air) is the file's own truth: left alone
    film, _ = _phantom(2)
    white_air = make_dicom_bytes(4095 - film.astype(np.uint16) * 16, bits_stored=12)
    assert not decode_frame(white_air, "w.dcm").inversion_corrected


def test_exif_rotation_applied_and_a_mirror_is_noted():
    image, _ = _phantom(1)
    rotated = decode_frame(_jpeg(image, EXIF_CODE), "r.jpg")
    assert rotated.meta.exif_rotation == 90 and rotated.image.shape == (SIZE, SIZE)
    assert EXIF_MIRRORED_NOTE not in rotated.qc_notes
    mirrored = decode_frame(_jpeg(image, 2), "m.jpg")
    assert mirrored.meta.exif_mirrored and EXIF_MIRRORED_NOTE in mirrored.qc_notes


def test_a_multiframe_dicom_is_noted():
    frames = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    ds = pydicom.dcmread(io.BytesIO(make_dicom_bytes(frames[0])))
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert decode_frame(out.getvalue(), "multi.dcm").qc_notes == (MULTIFRAME_NOTE,)


def test_not_an_image_is_told_apart_from_a_broken_image():
    with pytest.raises(NotAnImageError, match="text.png: not an image"):
        decode_frame(b"hello, world", "text.png")
    assert issubclass(NotAnImageError, DecodeError)  # callers that catch DecodeError still do
    good = encode_png(_phantom(0)[0])
    for broken in (good[: len(good) // 2], b""):  # truncated, empty: broken images, not strays
        with pytest.raises(DecodeError) as caught:
            decode_frame(broken, "broken.png")
        assert not isinstance(caught.value, NotAnImageError)


def test_the_error_row_keeps_reporting_a_stray_file_as_a_decode_error():
    from raysegment.outputs.rows import error_fields

    try:
        decode_frame(b"hello, world", "text.png")
    except DecodeError as e:
        fields = error_fields("decode", e)
    assert fields == {"status": "error", "error_stage": "decode", "error_type": "DecodeError",
                      "error": "text.png: not an image: unrecognised header b'hello, w' (expected PNG, "
                               "JPEG, TIFF, BMP, GIF, JPEG 2000 or DICOM)"}


def test_max_pixels_is_passed_to_the_decoder():
    data = encode_png(np.zeros((16, 16), np.uint8))
    with pytest.raises(DecodeError, match="max_pixels"):
        decode_frame(data, "a.png", InputOptions(max_pixels=255))
    assert decode_frame(data, "a.png", InputOptions(max_pixels=256)).image.shape == (16, 16)


def test_prepare_input_is_decode_frame_then_to_model_input():
    data, _ = inputs()["rotated.jpg"]
    config = PreprocessConfig(size=32)
    prepared = prepare_input(data, "r.jpg", config)
    frame = decode_frame(data, "r.jpg")
    assert isinstance(prepared.frame, Frame) and prepared.model_input.shape == (32, 32)
    assert prepared.model_input.dtype == np.uint8
    for model_input, geo in (to_model_input(frame, config), to_model_input(frame.image, config)):
        assert np.array_equal(model_input, prepared.model_input) and geo == prepared.geometry


def test_inversion_is_corrected_in_every_path(tmp_path):
    """Training's ingest, calibration's loading and load_pair see the corrected image, as infer does."""
    from raysegment.data.datasets import Pair, load_pair
    from raysegment.evaluation.calibrate import load_originals
    from raysegment.train.data import prepare_pair

    data, mask = inputs()["inverted.png"]
    (tmp_path / "inverted.png").write_bytes(data)
    (tmp_path / "mask.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    pair = Pair("inverted", str(tmp_path / "inverted.png"), (str(tmp_path / "mask.png"),))
    config = PreprocessConfig(size=32)
    expected = decode_frame(data, "inverted.png")
    assert np.array_equal(prepare_pair(pair, config)[0], to_model_input(expected, config)[0])
    [(image, truth)] = load_originals([pair])
    assert np.array_equal(image, expected.image) and np.array_equal(truth, mask)
    assert np.array_equal(load_pair(pair)[0], expected.image)
    uncorrected = decode_frame(data, "inverted.png", InputOptions(correct_inversion=False))
    assert not np.array_equal(to_model_input(uncorrected, config)[0], prepare_pair(pair, config)[0])


# --- evaluate == predict == infer ---------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    """A generic-layout data set of the three inputs (cxr/ + masks/, same stems)."""
    root = tmp_path_factory.mktemp("one_path")
    (root / "cxr").mkdir()
    (root / "masks").mkdir()
    for name, (data, mask) in inputs().items():
        (root / "cxr" / name).write_bytes(data)
        stem = os.path.splitext(name)[0]
        (root / "masks" / f"{stem}.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    return str(root)


@pytest.fixture(scope="module")
def checkpoint(labelled, tmp_path_factory) -> str:
    """An untrained tiny UNet whose masks are not trivial (a quarter of the pixels above the threshold), so
    a different model input shows as a different mask."""
    from raysegment.data.preprocess import to_tensor
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNetConfig
    from raysegment.testing.models import untrained_unet

    model = untrained_unet()
    spec = ModelSpec(UNetConfig(base_channels=8, depth=3), PreprocessConfig(size=64), threshold=0.5)
    probe = np.stack([prepare_input(data, name, spec.preprocess).model_input
                      for name, (data, _) in inputs().items()])
    with torch.no_grad():
        model.head.bias -= torch.quantile(model(to_tensor(probe)).flatten(), 0.75)
    uri = str(tmp_path_factory.mktemp("one_path_ckpt") / "ckpt")
    save_checkpoint(uri, model, spec)
    return uri


def test_evaluate_predict_and_infer_give_identical_masks_and_dice(ray_local, labelled, checkpoint, tmp_path):
    from raysegment.evaluation.evaluate import evaluate
    from raysegment.infer.config import InferConfig, IOSection, ModelSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.infer.predict import predict
    from raysegment.io.rle import decode_rle
    from raysegment.model.checkpoint import load_model
    from raysegment.outputs.results import read_results
    from raysegment.postprocess.metrics import image_metrics

    evaluated = {r["image_id"]: r for r in evaluate(checkpoint, labelled, split="all").rows}
    run_inference(InferConfig(IOSection(input=os.path.join(labelled, "cxr"), output=str(tmp_path / "out"),
                                        ground_truth=labelled), ModelSection(checkpoint=checkpoint)))
    inferred = {r["image_id"]: r for r in read_results(str(tmp_path / "out")).to_pylist()}
    loaded = load_model(checkpoint)
    assert set(evaluated) == set(inferred) == {"inverted", "rotated", "mono1"}
    for name, (data, truth) in inputs().items():
        image_id = os.path.splitext(name)[0]
        e, i = evaluated[image_id], inferred[image_id]
        assert e["status"] == i["status"] == "ok", (e.get("error"), i.get("error"))
        single = predict(loaded, data, name)
        masks = {"evaluate": decode_rle(e["mask_rle"], e["height"], e["width"]),
                 "infer": decode_rle(i["mask_rle"], i["height"], i["width"]),
                 "predict": single.segmentation.mask}
        assert masks["predict"].shape == truth.shape and 0 < masks["predict"].sum() < truth.size
        for path, mask in masks.items():
            assert np.array_equal(mask, masks["predict"]), (name, path)
        dice = image_metrics(single.segmentation.mask, truth)["dice"]
        assert e["dice"] == i["dice"] == dice, name
        # the same row columns on the way in, from both row builders
        for column in ("inversion_corrected", "exif_rotation", "qc_notes", "qc_reasons", "lung_area_px",
                       "image_format", "pixel_spacing_row_mm", "tp", "fp", "fn"):
            assert e[column] == i[column], (name, column)
        assert single.qc_notes == i["qc_notes"] and single.inversion_corrected == i["inversion_corrected"]
    assert inferred["inverted"]["inversion_corrected"] and INVERTED in evaluated["inverted"]["qc_notes"]
    assert inferred["rotated"]["exif_rotation"] == 90 and inferred["mono1"]["image_format"] == "dicom"
    # what evaluate used to do (no inversion check) gives another mask: the test sees the old bug
    uncorrected = predict(loaded, inputs()["inverted.png"][0], "inverted.png", fix_inversion=False)
    assert not np.array_equal(uncorrected.segmentation.mask,
                              decode_rle(evaluated["inverted"]["mask_rle"], SIZE, SIZE))
