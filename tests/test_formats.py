"""What comes out of real archives: compressed DICOM, multi-frame, EXIF orientation, inverted exports, and
the compact / DICOM outputs (mask_rle, DICOM SEG), plus reading results of the older schema. No Ray."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import io
import os

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import torch
from PIL import Image, ImageOps
from worklist_helpers import done_identities

from raysegment.data.inversion import INVERTED_BELOW, correct_inversion, inversion_score, looks_inverted
from raysegment.data.inversion import layout as inversion_layout
from raysegment.data.preprocess import PreprocessConfig
from raysegment.infer.predict import predict
from raysegment.io.decode import PREFERRED_PLUGINS, _preferred_plugin, decode_image, decode_mask, encode_png
from raysegment.io.rle import decode_rle, encode_rle
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.unet import UNetConfig
from raysegment.outputs.results import SCHEMA, read_results
from raysegment.postprocess.metrics import image_metrics
from raysegment.testing.models import untrained_unet

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dicom")
_spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(FIXTURES, "make_fixtures.py"))
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)
ORIGINALS = {8: "uncompressed_8bit.dcm", 12: "uncompressed_16bit.dcm"}
PERMISSIVE_PLUGINS = {"pillow", "gdcm", "pyjpegls", "pylibjpeg", "pydicom"}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def shared_dataset(name: str) -> str:
    """A folder of ../shared/data (or $RAYSEGMENT_SHARED_DATA) with cxr/ + masks/, or skip."""
    for base in (os.environ.get("RAYSEGMENT_SHARED_DATA"),
                 os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")):
        if base and os.path.isdir(os.path.join(base, name, "cxr")):
            return os.path.abspath(os.path.join(base, name))
    pytest.skip(f"shared data set {name} not present")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny UNet with randomized BatchNorm statistics and the head bias set so that about a
    quarter of the pixels are lung: masks are not trivial and depend on every pixel."""
    from raysegment.data.synth import write_dataset

    data = str(tmp_path_factory.mktemp("tiny_probe"))
    write_dataset(data, n=4, size=96, seed=3, layout="generic")
    model = untrained_unet()
    spec = ModelSpec(UNetConfig(base_channels=8, depth=3), PreprocessConfig(size=64), threshold=0.5)
    from raysegment.data.preprocess import preprocess_image, to_tensor

    probe = np.stack([preprocess_image(decode_image(_read(f)).image, spec.preprocess)[0]
                      for f in sorted(glob.glob(os.path.join(data, "cxr", "*.png")))])
    with torch.no_grad():
        model.head.bias -= torch.quantile(model(to_tensor(probe)).flatten(), 0.75)
    uri = str(tmp_path_factory.mktemp("tiny_ckpt") / "ckpt")
    save_checkpoint(uri, model, spec)
    return load_model(uri)


# --------------------------------------------------------------------------- DICOM transfer syntaxes


@pytest.mark.parametrize("name", sorted(make_fixtures.SYNTAXES))
def test_compressed_dicom_decodes_like_the_uncompressed_original(name):
    """Committed fixtures (made by make_fixtures.py with GDCM): exact for lossless, close for lossy."""
    _, bits, lossy = make_fixtures.SYNTAXES[name]
    data = _read(os.path.join(FIXTURES, name))
    uid = pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    assert uid.is_compressed and str(uid) in PREFERRED_PLUGINS
    # decoded by a default, permissively licensed plugin (pylibjpeg only with pylibjpeg-rle, for RLE)
    allowed = PERMISSIVE_PLUGINS if name.startswith("rle") else {"pillow", "gdcm", "pyjpegls"}
    assert _preferred_plugin(uid) in allowed
    original = decode_image(_read(os.path.join(FIXTURES, ORIGINALS[bits])))
    decoded = decode_image(data, name)
    assert decoded.meta.format == "dicom" and (decoded.meta.height, decoded.meta.width) == (64, 64)
    diff = float(np.abs(decoded.image - original.image).max())
    if lossy:
        assert diff < 0.02, diff
    else:
        assert diff == 0.0


def test_rle_encoded_by_pydicom_decodes_exactly():
    """pydicom encodes RLE itself: no fixture needed for it."""
    from pydicom.uid import RLELossless

    path = os.path.join(FIXTURES, ORIGINALS[12])
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out)
    assert np.array_equal(decode_image(out.getvalue()).image, decode_image(_read(path)).image)


def test_multiframe_dicom_uses_the_first_frame():
    ds = pydicom.dcmread(os.path.join(FIXTURES, ORIGINALS[12]))
    first = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = first.tobytes() + (4095 - first).astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out)
    decoded = decode_image(out.getvalue())
    assert decoded.meta.frames == 2
    assert np.array_equal(decoded.image, decode_image(_read(os.path.join(FIXTURES, ORIGINALS[12]))).image)


# --------------------------------------------------------------------------- EXIF orientation


def _with_orientation(array: np.ndarray, code: int, fmt: str, **kw) -> bytes:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = code
    out = io.BytesIO()
    image.save(out, fmt, exif=exif, **kw)
    return out.getvalue()


@pytest.mark.parametrize("code", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_show_it(code):
    stored = (np.arange(16 * 24).reshape(16, 24) % 251).astype(np.uint8)
    data = _with_orientation(stored, code, "TIFF")
    shown = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    decoded = decode_image(data)
    assert np.array_equal(np.rint(decoded.image * 255).astype(np.uint8), shown)
    assert (decoded.meta.height, decoded.meta.width) == shown.shape
    assert decoded.meta.exif_rotation == {3: 180, 4: 180, 5: 270, 6: 90, 7: 90, 8: 270}.get(code, 0)
    assert decoded.meta.exif_mirrored == (code in (2, 4, 5, 7))
    assert np.array_equal(decode_mask(data), shown > 127)  # masks decode the same way: pairs stay aligned


def test_exif_rotated_jpeg_gives_the_same_mask_rotated(tiny_model, synth_generic):
    """A JPEG stored sideways with orientation 6 (rotate 90 clockwise to view) is segmented upright: its mask
    equals the mask of the upright image (a lossless PNG of exactly the displayed pixels)."""
    upright = cv2.imread(os.path.join(synth_generic, "cxr", "SYN_0001_1.png"), cv2.IMREAD_GRAYSCALE)
    stored = np.rot90(upright, 1)  # what the camera wrote: upright turned 90 degrees counter-clockwise
    jpeg = _with_orientation(np.ascontiguousarray(stored), 6, "JPEG", quality=95)
    shown = np.rot90(np.array(Image.open(io.BytesIO(jpeg))), -1)  # the JPEG's own pixels, displayed
    from_jpeg = predict(tiny_model, jpeg, "sideways.jpg")
    from_png = predict(tiny_model, encode_png(np.ascontiguousarray(shown)), "upright.png")
    assert from_jpeg.meta.exif_rotation == 90 and from_jpeg.segmentation.mask.shape == upright.shape
    assert from_jpeg.segmentation.mask.any() and not from_jpeg.segmentation.mask.all()
    assert np.array_equal(from_jpeg.segmentation.mask, from_png.segmentation.mask)
    ignored = predict(tiny_model, encode_png(np.ascontiguousarray(stored)), "stored.png")  # EXIF ignored:
    assert not np.array_equal(np.rot90(ignored.segmentation.mask, -1), from_png.segmentation.mask)


# --------------------------------------------------------------------------- inverted exports


def _inverted_png(data: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return encode_png(np.iinfo(image.dtype).max - image)


def _dice_within(tiny_model, image: bytes, truth: np.ndarray, tolerance: float = 0.02) -> None:
    normal = predict(tiny_model, image, "x.png").segmentation.mask
    inverted = predict(tiny_model, _inverted_png(image), "x.png").segmentation.mask
    uncorrected = predict(tiny_model, _inverted_png(image), "x.png", fix_inversion=False).segmentation.mask
    d_normal, d_inverted = image_metrics(normal, truth)["dice"], image_metrics(inverted, truth)["dice"]
    assert abs(d_normal - d_inverted) <= tolerance, (d_normal, d_inverted)
    assert not np.array_equal(uncorrected, normal)  # the correction is what makes them agree


def test_inverted_synthetic_films_are_detected_and_segmented_like_the_originals(tiny_model, synth_generic):
    for path in sorted(glob.glob(os.path.join(synth_generic, "cxr", "*.png")))[:6]:
        data = _read(path)
        image = decode_image(data).image
        assert not looks_inverted(image) and looks_inverted(decode_image(_inverted_png(data)).image)
        truth = decode_mask(_read(path.replace(os.sep + "cxr" + os.sep, os.sep + "masks" + os.sep)))
        _dice_within(tiny_model, data, truth)
    assert correct_inversion(np.zeros((8, 8), np.float32), "png")[1] is False  # flat: no call
    assert correct_inversion(1 - image, "dicom")[1] is False  # DICOM has PhotometricInterpretation


@pytest.mark.parametrize("dataset", ["montgomery_512", "jsrt_512"])
def test_no_normal_real_film_is_flagged_and_every_inverted_one_is(dataset):
    paths = sorted(glob.glob(os.path.join(shared_dataset(dataset), "cxr", "*.png")))
    scores = np.array([inversion_score(decode_image(_read(p)).image) for p in paths])
    assert len(paths) in (138, 247)
    assert (scores > INVERTED_BELOW).all(), np.array(paths)[scores <= INVERTED_BELOW]  # zero false positives
    assert (-scores < INVERTED_BELOW).all()  # an inverted film scores the negative: all detected


@pytest.mark.parametrize("dataset", ["montgomery_512", "jsrt_512"])
def test_turned_or_half_real_films_are_never_corrected_and_inverted_ones_are(dataset):
    """Every 8th shared film (18 + 31; bench/inversion_check.py does all 385): as it is, turned 90 / 180 /
    270 degrees and cut in half, a normal film is never called inverted; its inverted copy upright always is.
    An inverted film that is also turned a quarter or cut in half is left as it is (the layout evidence is
    the same for a film and its inverted copy, and such layouts are never judged)."""
    forms = {"90": lambda i: np.rot90(i, -1), "180": lambda i: np.rot90(i, 2),
             "270": lambda i: np.rot90(i, 1),
             "left": lambda i: i[:, : i.shape[1] // 2], "right": lambda i: i[:, i.shape[1] // 2:],
             "top": lambda i: i[: i.shape[0] // 2], "bottom": lambda i: i[i.shape[0] // 2:]}
    paths = sorted(glob.glob(os.path.join(shared_dataset(dataset), "cxr", "*.png")))[::8]
    for path in paths:
        image = decode_image(_read(path)).image
        assert not looks_inverted(image) and looks_inverted(1.0 - image), path
        assert correct_inversion(1.0 - image, "png")[1] is True
        for name, form in forms.items():
            turned = np.ascontiguousarray(form(image))
            assert not looks_inverted(turned), (path, name)  # the bug: 260 of 770 quarter turns, 709 halves
            if name != "180":
                assert not looks_inverted(1.0 - turned), (path, name)  # inverted AND turned: left as it is
    layout = inversion_layout(decode_image(_read(paths[0])).image)
    inverse = inversion_layout(1.0 - decode_image(_read(paths[0])).image)
    assert layout.upright and inverse.upright
    assert np.allclose(dataclasses.astuple(layout), dataclasses.astuple(inverse), atol=1e-5)


def test_the_old_band_rule_alone_fires_on_a_turned_film():
    """Why the layout check exists: a film whose band score alone calls its quarter turn inverted."""
    root = shared_dataset("montgomery_512")
    image = decode_image(_read(min(glob.glob(os.path.join(root, "cxr", "*.png"))))).image
    turned = [np.ascontiguousarray(np.rot90(image, k)) for k in (1, 3)]
    assert any(inversion_score(t) < INVERTED_BELOW for t in turned)  # the score alone would invert it
    assert not any(looks_inverted(t) for t in turned) and not any(inversion_layout(t).upright for t in turned)


def test_inverted_montgomery_segmented_within_002_dice(tiny_model):
    root = shared_dataset("montgomery_512")
    for path in sorted(glob.glob(os.path.join(root, "cxr", "*.png")))[:4]:
        truth = decode_mask(_read(os.path.join(root, "masks", os.path.basename(path))))
        _dice_within(tiny_model, _read(path), truth)


# --------------------------------------------------------------------------- compact masks


def test_rle_round_trip_and_pycocotools_compatibility():
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), rng.random((40, 30)) > 0.5, np.eye(9, dtype=bool),
             np.zeros((0, 3), bool)]
    for mask in masks:
        text = encode_rle(mask)
        assert text.isascii() and np.array_equal(decode_rle(text, *mask.shape), mask)
    with pytest.raises(ValueError, match="covers"):
        decode_rle(encode_rle(masks[2]), 41, 30)
    coco = pytest.importorskip("pycocotools.mask")
    for mask in masks[:4]:
        expected = coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        assert encode_rle(mask) == expected
        decoded = coco.decode({"size": list(mask.shape), "counts": encode_rle(mask).encode()})
        assert np.array_equal(decoded.astype(bool), mask)


def test_postprocess_stage_fills_mask_rle_and_can_drop_mask_png():
    from raysegment.infer.stages import PostprocessJob, _finish_row
    from raysegment.io import storage
    from raysegment.io.decode import decode_mask_png
    from raysegment.postprocess.masks import PostprocessConfig

    prob = np.zeros((64, 64), np.uint8)
    prob[10:50, 8:28] = 250
    prob[12:52, 36:58] = 240
    row = {"status": "ok", "image_uri": "/x/a.png", "image_id": "a", "key": "a.png", "height": 100,
           "width": 90, "pixel_spacing_row_mm": None, "pixel_spacing_col_mm": None, "prob": prob.tobytes(),
           "image_format": "png"}
    job = PostprocessJob("r1", "m1", 0.5, PreprocessConfig(size=64), PostprocessConfig(), None,
                         storage.S3Options())
    kept = _finish_row(dict(row), job)
    assert np.array_equal(decode_rle(kept["mask_rle"], 100, 90), decode_mask_png(kept["mask_png"]))
    assert decode_rle(kept["mask_rle"], 100, 90).sum() == kept["lung_area_px"] > 0
    job = PostprocessJob("r1", "m1", 0.5, PreprocessConfig(size=64), PostprocessConfig(), None,
                         storage.S3Options(), mask_png=False)
    dropped = _finish_row(dict(row), job)
    assert dropped["mask_png"] is None and dropped["mask_rle"] == kept["mask_rle"]
    assert dropped.get("dicom_seg_uri") is None


# --------------------------------------------------------------------------- DICOM SEG


@pytest.mark.parametrize("sides", [False, True])
def test_dicom_seg_is_readable_pixel_equal_and_references_its_source(sides):
    import highdicom as hd

    from raysegment.outputs.dicom_seg import make_dicom_seg, read_seg_mask

    source = _read(os.path.join(FIXTURES, "jpeg_lossless_sv1.dcm"))
    src = pydicom.dcmread(io.BytesIO(source))
    mask = np.zeros((64, 64), bool)
    mask[8:56, 6:28], mask[10:58, 38:60] = True, True
    data = make_dicom_seg(source, mask, "0123456789abcdef", sides=sides)
    assert np.array_equal(read_seg_mask(data), mask)
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == (["Right lung", "Left lung"] if sides else ["Lung"])
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "raysegment"
    assert "model_id=0123456789abcdef" in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == (
        "3341006" if sides else "39607008")
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID],
                                               segment_numbers=list(range(1, len(labels) + 1)))
    if sides:  # patient's right = image left
        assert pixels[0, :, :32, 0].sum() == mask[:, :32].sum()
        assert pixels[0, :, :, 1].sum() == mask[:, 32:].sum()


def _dicom_with_study(shape: tuple[int, int]) -> bytes:
    """make_dicom_bytes plus the patient / study attributes a SEG copies from its source."""
    from raysegment.testing.dicom import make_dicom_bytes, with_study

    return with_study(make_dicom_bytes(np.zeros(shape, np.uint16)))


def _anatomy(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Lungs, heart and clavicles that overlap as real ones do (clavicles over the lung tops, heart over the
    left lung's inner edge); odd sizes, so the 1-bit frames do not end on a byte boundary."""
    h, w = shape
    m = {k: np.zeros(shape, bool) for k in ("lungs", "heart", "clavicles")}
    m["lungs"][6 : h - 5, 4 : w // 2 - 4] = True
    m["lungs"][8 : h - 4, w // 2 + 3 : w - 5] = True
    m["heart"][h // 2 : h - 6, w // 2 - 10 : w // 2 + 12] = True
    m["clavicles"][5:11, 2 : w - 2] = True
    return m


@pytest.mark.parametrize("sides", [False, True])
def test_dicom_seg_with_heart_and_clavicles_has_one_segment_each_pixel_equal_over_lungs(sides, tmp_path):
    from raysegment.outputs.dicom_seg import make_dicom_seg, read_seg_mask, read_seg_segments
    from raysegment.postprocess.masks import split_lungs

    source = _dicom_with_study((53, 71))
    m = _anatomy((53, 71))
    assert (m["clavicles"] & m["lungs"]).any() and (m["heart"] & m["lungs"]).any()
    data = make_dicom_seg(source, m["lungs"], "0123456789abcdef", sides=sides,
                          structures={"clavicles": m["clavicles"], "heart": m["heart"]})
    seg = pydicom.dcmread(io.BytesIO(data))
    lung_types = [("Right lung", "3341006"), ("Left lung", "44029006")] if sides else [("Lung", "39607008")]
    expected = [*lung_types, ("Heart", "80891009"), ("Clavicles", "51299004")]  # STRUCTURES order
    got = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
    assert got == expected
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, len(expected) + 1))
    for s in seg.SegmentSequence:
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
    assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == len(expected)

    segments = read_seg_segments(data)
    assert list(segments) == [label for label, _ in expected]
    assert np.array_equal(segments["Heart"], m["heart"])
    assert np.array_equal(segments["Clavicles"], m["clavicles"])  # whole, also over the lungs
    if sides:
        right, left = split_lungs(m["lungs"])
        assert np.array_equal(segments["Right lung"], right) and np.array_equal(segments["Left lung"], left)
    else:
        assert np.array_equal(segments["Lung"], m["lungs"])  # whole, also under clavicles and heart
    assert np.array_equal(read_seg_mask(data), m["lungs"] | m["heart"] | m["clavicles"])  # the union
    import highdicom as hd  # a viewer's reading: highdicom's, by source instance and segment number

    src = pydicom.dcmread(io.BytesIO(source))
    pixels = hd.seg.segread(io.BytesIO(data)).get_pixels_by_source_instance(
        [src.SOPInstanceUID], segment_numbers=list(range(1, len(expected) + 1)))
    assert np.array_equal(pixels[0, :, :, -1].astype(bool), m["clavicles"])
    assert np.array_equal(pixels[0, :, :, -2].astype(bool), m["heart"])

    class Job:  # archive.write_dicom_seg passes the structures through
        s3, model_id, dicom_seg_sides, dicom_seg_out = None, "0123456789abcdef", sides, str(tmp_path)

    from raysegment.infer.archive import write_dicom_seg

    (tmp_path / "a.dcm").write_bytes(source)
    uri = write_dicom_seg({"image_uri": str(tmp_path / "a.dcm"), "key": "a.dcm"}, m["lungs"], Job,
                          {"heart": m["heart"]})
    with open(uri, "rb") as f:
        assert list(read_seg_segments(f.read()))[-1] == "Heart"

    with pytest.raises(ValueError, match="not a further structure"):
        make_dicom_seg(source, m["lungs"], "0123456789abcdef", structures={"lungs": m["lungs"]})
    with pytest.raises(ValueError, match="heart mask"):
        make_dicom_seg(source, m["lungs"], "0123456789abcdef", structures={"heart": m["heart"][:-1]})


def test_dicom_seg_without_structures_is_unchanged():
    """structures None or {}: the lungs-only SEG of before: one segment "Lung", the lung model's names."""
    from raysegment.outputs.dicom_seg import make_dicom_seg, read_seg_mask, read_seg_segments

    source = _dicom_with_study((53, 71))
    lungs = _anatomy((53, 71))["lungs"]
    for structures in (None, {}):
        data = make_dicom_seg(source, lungs, "0123456789abcdef", structures=structures)
        seg = pydicom.dcmread(io.BytesIO(data))
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lung"] and int(seg.NumberOfFrames) == 1
        assert seg.SeriesDescription == "raysegment lung segmentation"
        assert seg.ManufacturerModelName == "raysegment lung UNet"
        segments = read_seg_segments(data)
        assert list(segments) == ["Lung"] and np.array_equal(segments["Lung"], lungs)
        assert np.array_equal(read_seg_mask(data), lungs)


# --------------------------------------------------------------------------- schema versions


def test_read_results_reads_v1_files(tmp_path):
    """A results file written before schema v2 (no v2 columns, schema_version 1) reads with the v2 columns
    present and null, and still counts as done for resume."""
    v2_only = {"qc_notes", "quality_score", "calibration_id", "exif_rotation", "inversion_corrected",
               "mask_rle", "dicom_seg_uri", "structures", "ctr", "heart_width_px", "thoracic_width_px",
               "thoracic_row"}
    v1 = pa.schema([f for f in SCHEMA if f.name not in v2_only])
    row = {name: None for name in v1.names}
    row.update(schema_version=1, run_id="20250101T000000Z-aaaaaa", model_id="m1", package_version="0.1.0",
               image_uri="/data/a.png", image_id="a", status="ok", input_size=10, lung_area_px=5)
    folder = tmp_path / "runs" / row["run_id"]
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=v1), folder / "part-0.parquet")
    table = read_results(str(tmp_path))
    assert table.column_names == SCHEMA.names and table.num_rows == 1
    got = table.to_pylist()[0]
    assert got["schema_version"] == 1 and got["lung_area_px"] == 5
    assert got["mask_rle"] is None and got["qc_notes"] is None and got["structures"] is None
    selected = read_results(str(tmp_path), columns=["image_uri", "mask_rle"])
    assert selected.column_names == ["image_uri", "mask_rle"]
    assert done_identities(str(tmp_path))["/data/a.png"]["model_id"] == "m1"


def test_show_draws_from_mask_rle_when_mask_png_was_dropped(tmp_path):
    from raysegment.io.decode import decode_mask_png
    from raysegment.viz.show import read_masks

    mask = np.zeros((30, 20), bool)
    mask[5:25, 3:9] = True
    row = {name: None for name in SCHEMA.names}
    row.update(schema_version=2, run_id="20260101T000000Z-bbbbbb", model_id="m1", package_version="0.1.0",
               image_uri="/data/b.png", image_id="b", status="ok", height=30, width=20,
               mask_rle=encode_rle(mask))
    folder = tmp_path / "runs" / row["run_id"]
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), folder / "part-0.parquet")
    masks = read_masks(str(tmp_path), [{"image_uri": "/data/b.png", "run_id": row["run_id"]}])
    assert np.array_equal(decode_mask_png(masks["/data/b.png"]), mask)
