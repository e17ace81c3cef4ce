"""raysegment.io.decode: decode every supported format, reject every bad input with DecodeError."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless

from raysegment.errors import DecodeError
from raysegment.io import decode
from raysegment.io.decode import (
    binarize,
    decode_image,
    decode_mask,
    decode_mask_png,
    encode_mask_png,
    encode_png,
    image_size,
    sniff_format,
)
from raysegment.testing.dicom import make_dicom_bytes

RNG = np.random.default_rng(1234)


def _cv2_bytes(ext: str, arr: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, arr, list(params))
    assert ok
    return buf.tobytes()


def _pil_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _dicom_save(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _patch_png_size(png: bytes, height: int, width: int) -> bytes:
    """Rewrite the IHDR dimensions (with a valid CRC) and leave the tiny pixel data as is."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + _png_chunk(b"IHDR", ihdr) + png[33:]


# --------------------------------------------------------------------------- rasters


def test_png8_exact() -> None:
    arr = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
    out = decode_image(encode_png(arr), "a.png")
    assert out.image.dtype == np.float32 and out.image.shape == (37, 53)
    np.testing.assert_array_equal(out.image, arr.astype(np.float32) / np.float32(255))
    assert out.meta == decode.ImageMeta(37, 53, 8, "png", 1, None)


def test_png16_scaled_by_dtype_max() -> None:
    arr = np.array([[0, 32768], [4095, 65535]], np.uint16)
    out = decode_image(encode_png(arr))
    assert out.image[1, 1] == 1.0 and out.image[0, 0] == 0.0
    assert out.image[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert out.image[1, 0] == pytest.approx(4095 / 65535, rel=1e-6)  # 12-bit data stays dark
    assert out.meta.bit_depth == 16 and out.meta.format == "png"


def test_png_low_bit_depth_and_gray_alpha() -> None:
    bits = RNG.random((20, 24)) > 0.5
    out = decode_image(_pil_bytes(Image.fromarray(bits)))  # 1-bit PNG
    assert out.meta.bit_depth == 1
    np.testing.assert_array_equal(out.image, bits.astype(np.float32))
    gray = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    out = decode_image(_pil_bytes(Image.fromarray(gray).convert("LA")))
    np.testing.assert_allclose(out.image, gray / 255, atol=1 / 255 + 1e-6)
    out = decode_image(_pil_bytes(Image.fromarray(gray).convert("P")))  # palette
    np.testing.assert_allclose(out.image, gray / 255, atol=2 / 255)


def test_jpeg_approximate() -> None:
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    out = decode_image(_cv2_bytes(".jpg", ramp, cv2.IMWRITE_JPEG_QUALITY, 95), "x.jpg")
    assert out.meta.format == "jpeg" and out.meta.bit_depth == 8 and out.meta.channels == 1
    np.testing.assert_allclose(out.image, ramp / 255, atol=0.03)


@pytest.mark.parametrize("alpha", [False, True])
def test_rgb_and_rgba_to_gray(alpha: bool) -> None:
    rgb = np.zeros((8, 10, 4 if alpha else 3), np.uint8)
    rgb[:, :5, 0] = 255  # left half pure red: luminance 0.299
    rgb[:, 5:, :3] = 200  # right half gray 200
    if alpha:
        rgb[..., 3] = RNG.integers(0, 256, (8, 10))  # alpha is ignored
    out = decode_image(encode_png(rgb))
    assert out.meta.channels == (4 if alpha else 3)
    assert out.image[:, :5] == pytest.approx(0.299, abs=2 / 255)
    assert out.image[:, 5:] == pytest.approx(200 / 255, abs=1e-6)
    jpg = decode_image(
        _cv2_bytes(".jpg", np.ascontiguousarray(rgb[..., 2::-1]), cv2.IMWRITE_JPEG_QUALITY, 98)
    )
    assert jpg.meta.channels == 3 and jpg.image[:, 6:] == pytest.approx(200 / 255, abs=0.03)


def test_tiff_uint8_uint16_float() -> None:
    a8 = RNG.integers(0, 256, (16, 20), dtype=np.uint8)
    out = decode_image(_cv2_bytes(".tiff", a8), "x.tif")
    np.testing.assert_array_equal(out.image, a8.astype(np.float32) / np.float32(255))
    assert out.meta.format == "tiff" and out.meta.bit_depth == 8
    a16 = (a8.astype(np.uint16) * 257).astype(np.uint16)
    out = decode_image(_pil_bytes(Image.fromarray(a16), "TIFF"))  # PIL layout: IFD before the data
    np.testing.assert_allclose(out.image, a8 / 255, atol=1e-6)
    assert out.meta.bit_depth == 16
    af = np.linspace(-3.0, 5.0, 16 * 20, dtype=np.float32).reshape(16, 20)
    out = decode_image(_cv2_bytes(".tiff", af))
    assert out.meta.bit_depth == 32
    np.testing.assert_allclose(out.image, (af + 3) / 8, atol=1e-6)  # float: min-max


def test_sniff_by_magic_not_extension() -> None:
    png = encode_png(np.zeros((4, 4), np.uint8))
    assert sniff_format(png, "lies.jpg") == "png"
    assert sniff_format(_cv2_bytes(".jpg", np.zeros((4, 4), np.uint8)), "x.png") == "jpeg"
    assert sniff_format(_cv2_bytes(".tiff", np.zeros((4, 4), np.uint8))) == "tiff"
    assert sniff_format(make_dicom_bytes(np.zeros((4, 4), np.uint16)), "x.png") == "dicom"
    assert sniff_format(b"hello world") is None
    assert decode_image(png, "lies.jpg").meta.format == "png"


def test_image_size_reads_header_only() -> None:
    arr = np.zeros((30, 40), np.uint8)
    assert image_size(encode_png(arr)) == (30, 40)
    assert image_size(_cv2_bytes(".jpg", arr)) == (30, 40)
    assert image_size(_cv2_bytes(".tiff", arr)) == (30, 40)
    assert image_size(make_dicom_bytes(arr.astype(np.uint16))) == (30, 40)
    assert image_size(_patch_png_size(encode_png(arr), 20000, 20000)) == (20000, 20000)
    with pytest.raises(DecodeError, match=r"^not an image: unrecognised header b'junk'"):
        image_size(b"junk")


# --------------------------------------------------------------------------- DICOM

# stored -> modality (x2 - 100): 50 -> 0, 550 -> 1000, 600 -> 1100, 2000 -> 3900
_STORED = np.array([[50, 550], [600, 2000]], np.uint16)


def test_dicom_rescale_and_window() -> None:
    data = make_dicom_bytes(_STORED, slope=2.0, intercept=-100.0, window=(1000, 500), bits_stored=12)
    out = decode_image(data, "a.dcm")
    img = out.image
    assert img.dtype == np.float32
    assert img[0, 0] == 0.0  # below the window
    assert img[1, 1] == 1.0  # above the window
    assert img[0, 1] == pytest.approx(0.5, abs=0.005)  # the centre
    # LINEAR window (PS3.3 C.11.2.1.2): ((x - (c - 0.5)) / (w - 1) + 0.5)
    assert img[1, 0] == pytest.approx((1100 - 999.5) / 499 + 0.5, abs=1e-5)
    assert out.meta == decode.ImageMeta(2, 2, 12, "dicom", 1, None, "MONOCHROME2", modality="DX")


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dicom_window_matches_pydicom(function: str) -> None:
    """LINEAR has a fast float32 path; it and the pydicom path equal apply_voi_lut rescaled."""
    arr = np.random.default_rng(3).integers(0, 4096, (32, 32)).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(make_dicom_bytes(arr, slope=1.5, intercept=-1024, bits_stored=12)))
    ds.WindowCenter, ds.WindowWidth = ["1500", "300"], ["2000", "100"]  # the first window is used
    ds.VOILUTFunction = function
    data = _dicom_save(ds)
    ref = pydicom.dcmread(io.BytesIO(data))
    voi = apply_voi_lut(apply_modality_lut(arr, ref), ref)
    y_min, y_max = -1024, 4095 * 1.5 - 1024  # pydicom's VOI output range: 12-bit stored, rescaled
    np.testing.assert_allclose(decode_image(data).image, (voi - y_min) / (y_max - y_min), atol=1e-5)


def test_dicom_window_range_is_the_window() -> None:
    """All pixels inside the window: no stretch to the image's own min/max."""
    arr = np.array([[900, 1000, 1100]], np.uint16)
    img = decode_image(make_dicom_bytes(arr, window=(1000, 1001))).image
    np.testing.assert_allclose(img, [[0.4, 0.5, 0.6]], atol=2e-3)


def test_dicom_without_window_is_min_max() -> None:
    img = decode_image(make_dicom_bytes(_STORED, slope=2.0, intercept=-100.0)).image
    np.testing.assert_allclose(img, (_STORED - 50) / 1950, atol=1e-6)


@pytest.mark.parametrize("window", [None, (1000, 500)])
def test_dicom_monochrome1_inverted(window: tuple[float, float] | None) -> None:
    kw = {"slope": 2.0, "intercept": -100.0, "window": window}
    mono2 = decode_image(make_dicom_bytes(_STORED, photometric="MONOCHROME2", **kw)).image
    mono1 = decode_image(make_dicom_bytes(_STORED, photometric="MONOCHROME1", **kw))
    np.testing.assert_allclose(mono1.image, 1.0 - mono2, atol=1e-6)
    assert mono1.meta.photometric == "MONOCHROME1"
    assert mono1.image[0, 0] == 1.0  # lowest value is white in MONOCHROME1


def test_dicom_broken_window_falls_back_to_min_max() -> None:
    img = decode_image(make_dicom_bytes(_STORED, window=(1000, 0))).image
    np.testing.assert_allclose(img, (_STORED - 50) / 1950, atol=1e-6)


def test_dicom_voi_lut_sequence() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom_bytes(np.array([[0, 2048, 4095, 5000]], np.uint16))))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [v * 16 for v in range(4096)])  # LUTData: linear, 0..65520
    ds.VOILUTSequence = [item]
    img = decode_image(_dicom_save(ds)).image
    np.testing.assert_allclose(img, [[0.0, 2048 / 4095, 1.0, 1.0]], atol=1e-6)


def test_dicom_multiframe_uses_first_frame() -> None:
    frames = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    ds = pydicom.dcmread(io.BytesIO(make_dicom_bytes(frames[0])))
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    np.testing.assert_allclose(decode_image(_dicom_save(ds)).image, frames[0] / 11, atol=1e-6)


def test_dicom_pixel_spacing() -> None:
    arr = np.zeros((4, 4), np.uint16)
    both = make_dicom_bytes(arr, pixel_spacing=(0.14, 0.15), imager_pixel_spacing=(0.2, 0.2))
    assert decode_image(both).meta.pixel_spacing_mm == (0.14, 0.15)  # PixelSpacing wins
    imager = make_dicom_bytes(arr, imager_pixel_spacing=(0.139, 0.141))
    assert decode_image(imager).meta.pixel_spacing_mm == (0.139, 0.141)
    assert decode_image(make_dicom_bytes(arr)).meta.pixel_spacing_mm is None


def test_dicom_without_preamble() -> None:
    full = make_dicom_bytes(_STORED)
    with_meta = full[132:]  # file meta but no preamble / DICM
    ds = pydicom.dcmread(io.BytesIO(full))
    del ds.file_meta
    ds.preamble = None
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)  # bare implicit-VR dataset
    expected = decode_image(full).image
    for data in (with_meta, out.getvalue()):
        # the bytes decide, never the name: a bare DICOM is one under any name (.IMA, .dicom, none, .png)
        for name in ("", "x.dcm", "scans/1.2.840.113619.2.55", "noext", "x.IMA", "x.dicom", "x.png"):
            assert sniff_format(data, name) == "dicom"
            np.testing.assert_array_equal(decode_image(data, name).image, expected)
        assert sniff_format(data[:2048], "x") == "dicom"  # the first KiB are enough to tell
    assert sniff_format(b"\x08\x00" + b"\x00" * 300) is None  # the cheap filter passes, pydicom says no


def test_dicom_compressed_transfer_syntax_is_named() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom_bytes(_STORED)))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 64])  # bogus codestream
    ds["PixelData"].VR = "OB"
    with pytest.raises(DecodeError) as err:
        decode_image(_dicom_save(ds), "ct.dcm")
    msg = str(err.value)
    assert "1.2.840.10008.1.2.4.90" in msg and "JPEG 2000" in msg
    assert "pylibjpeg" in msg and "gdcm" in msg and "\n" not in msg


# --------------------------------------------------------------------------- bad input


def _valid_samples() -> dict[str, bytes]:
    arr = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    return {
        "x.png": encode_png(arr),
        "x.jpg": _cv2_bytes(".jpg", arr),
        "x.tif": _pil_bytes(Image.fromarray(arr), "TIFF"),
        "x.dcm": make_dicom_bytes(arr.astype(np.uint16)),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom / PIL complain about the damage
@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("x.png", b"", "empty file"),
        ("x.png", b"hello world, I am a text file\n", "not an image"),
        ("x", b"hello world, I am a text file\n", "not an image"),
        ("x.dcm", b"\x00" * 128 + b"DICM" + b"\xff" * 50, "DICOM"),
        ("x.png", b"\x89PNG\r\n\x1a\n", "IHDR"),
        ("x.jpg", b"\xff\xd8\xff", "JPEG"),
        ("x.tif", b"II*\x00", "TIFF"),
    ],
)
def test_bad_bytes_raise_decode_error(name: str, data: bytes, match: str) -> None:
    """Each of these must raise DecodeError (pytest.raises lets any other type through as an error)."""
    with pytest.raises(DecodeError, match=match):
        decode_image(data, name)


def test_message_names_file_and_is_readable() -> None:
    with pytest.raises(DecodeError) as err:
        decode_image(b"hello world", "scans/a.png")
    assert str(err.value) == (
        "scans/a.png: not an image: unrecognised header b'hello wo' (expected PNG, JPEG, TIFF, BMP, GIF, "
        "JPEG 2000 or DICOM)"
    )
    assert isinstance(err.value, ValueError)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["x.png", "x.jpg", "x.tif", "x.dcm"])
def test_truncated_files(fmt: str) -> None:
    data = _valid_samples()[fmt]
    for cut in (len(data) // 2, len(data) - 2, 40):
        with pytest.raises(DecodeError, match=rf"^{fmt}: (truncated|corrupt|cannot decode|not an image)"):
            decode_image(data[:cut], fmt)
    if fmt == "x.png":
        with pytest.raises(DecodeError, match="truncated PNG"):
            decode_image(data[:-12], fmt)  # everything but IEND
    if fmt == "x.jpg":
        with pytest.raises(DecodeError, match="truncated JPEG"):
            decode_image(data[:-2], fmt)
        assert decode_image(data + b"\x00" * 100, fmt).image.shape == (64, 64)  # padding is fine


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_and_mutated_bytes_only_raise_decode_error() -> None:
    """Fuzz: random bytes and damaged real files either decode or raise DecodeError."""
    rng = np.random.default_rng(7)
    samples = _valid_samples()
    cases = [
        (n, rng.integers(0, 256, int(s), dtype=np.uint8).tobytes())
        for n in ("x.png", "x", "x.dcm")
        for s in rng.integers(1, 3000, 10)
    ]
    for name, data in samples.items():
        for i in range(80):
            buf = bytearray(data)
            span = 400 if i % 2 else len(buf)  # half the damage lands in the header
            for pos in rng.integers(0, min(span, len(buf)), int(rng.integers(1, 8))):
                buf[pos] = int(rng.integers(0, 256))
            cut = len(buf) if i % 3 else int(rng.integers(len(buf) // 2, len(buf)))
            cases.append((name, bytes(buf[:cut])))
    for name, data in cases:
        try:
            out = decode_image(data, name)
        except DecodeError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert out.image.dtype == np.float32 and out.image.ndim == 2
            assert 0.0 <= float(out.image.min()) and float(out.image.max()) <= 1.0


# --------------------------------------------------------------------------- pixel-count guard


def test_pixel_guard_png_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _patch_png_size(encode_png(np.zeros((4, 4), np.uint8)), 20000, 20000)

    def no_decoding(*_args: object, **_kw: object) -> None:
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(decode.cv2, "imdecode", no_decoding)
    message = (r"20000x20000 = 400 MP, over the 100 MP limit: raise it if this is a genuine image "
               r"\(raysegment infer --max-pixels N; data.max_pixels")
    with pytest.raises(DecodeError, match=message):
        decode_image(bomb, "bomb.png")
    with pytest.raises(DecodeError, match="--max-pixels"):
        decode_mask(bomb)


def test_pixel_guard_jpeg_tiff_dicom_and_configurable() -> None:
    arr = np.zeros((16, 16), np.uint8)
    jpg = bytearray(_cv2_bytes(".jpg", arr))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # SOF0 height, width
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own bomb warning must not fire
        with pytest.raises(DecodeError, match="900 MP, over the 100 MP limit"):
            decode_image(bytes(jpg))
    small = {
        "png": encode_png(arr),
        "tif": _cv2_bytes(".tiff", arr),
        "dcm": make_dicom_bytes(arr.astype(np.uint16)),
    }
    for data in small.values():
        with pytest.raises(DecodeError, match="max_pixels"):
            decode_image(data, max_pixels=255)
        assert decode_image(data, max_pixels=256).image.shape == (16, 16)


def test_zero_size_header() -> None:
    with pytest.raises(DecodeError, match="empty image"):
        decode_image(_patch_png_size(encode_png(np.zeros((4, 4), np.uint8)), 0, 4))


# --------------------------------------------------------------------------- masks


def test_binarize_rules() -> None:
    np.testing.assert_array_equal(binarize(np.array([0, 127, 128, 255], np.uint8)), [0, 0, 1, 1])
    np.testing.assert_array_equal(binarize(np.array([32767, 32768], np.uint16)), [0, 1])
    np.testing.assert_array_equal(binarize(np.array([0.0, 0.5, 0.51, 1.0])), [0, 0, 1, 1])
    np.testing.assert_array_equal(binarize(np.array([True, False])), [1, 0])
    assert binarize(np.zeros(3, np.uint8)).dtype == bool


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (256, 256), (300, 17)])
def test_mask_png_round_trip_is_lossless(shape: tuple[int, int]) -> None:
    mask = RNG.random(shape) > 0.5
    data = encode_mask_png(mask)
    assert decode_image(data).meta == decode.ImageMeta(shape[0], shape[1], 8, "png", 1, None)
    back = decode_mask_png(data)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, mask)
    np.testing.assert_array_equal(decode_mask(data), mask)
    # the same mask given as 0/1 ints, 0/255 bytes or 0/1 floats encodes identically
    for other in (mask.astype(np.int64), mask.astype(np.uint8) * 255, mask.astype(np.float32)):
        assert encode_mask_png(other) == data


def test_decode_mask_other_encodings() -> None:
    mask = RNG.random((20, 30)) > 0.5
    labels01 = encode_png(mask.astype(np.uint8))  # 0/1 label PNG: 1 is foreground
    np.testing.assert_array_equal(decode_mask(labels01), mask)
    np.testing.assert_array_equal(decode_mask(encode_png(mask.astype(np.uint16) * 65535)), mask)
    np.testing.assert_array_equal(decode_mask(_pil_bytes(Image.fromarray(mask))), mask)  # 1-bit


def test_encode_rejects_bad_masks() -> None:
    with pytest.raises(ValueError, match="HxW"):
        encode_mask_png(np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError, match="0-255"):
        encode_mask_png(np.array([[0, 1000]]))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2), np.float32))
