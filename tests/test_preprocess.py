import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from raysegment.data.augment import AugmentConfig, augment_batch
from raysegment.data.preprocess import (
    Geometry,
    PreprocessConfig,
    geometry,
    normalize,
    preprocess_image,
    preprocess_mask,
    restore_probability,
    to_tensor,
)


def _asymmetric_mask(h: int, w: int) -> np.ndarray:
    """An L-shaped blob in the top-left quadrant plus a small block bottom-right: no flip, transpose or
    shift maps it onto itself."""
    m = np.zeros((h, w), bool)
    m[h // 10 : h // 2, w // 10 : w // 4] = True  # tall bar, upper left
    m[h // 10 : h // 5, w // 10 : w // 2] = True  # arm to the right, at the top
    m[3 * h // 4 : 9 * h // 10, 3 * w // 4 : 9 * w // 10] = True
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _centroid(m: np.ndarray) -> np.ndarray:
    return np.argwhere(m).mean(axis=0)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("shape", [(120, 90), (90, 150), (300, 300), (40, 50)])
def test_mask_round_trip_keeps_position_and_orientation(resize, shape):
    """preprocess_mask -> restore_probability gives back the same shape in the same place: a flip, a
    transposition or a crop shifted inward would move the centroid and drop the IoU."""
    cfg = PreprocessConfig(size=64, resize=resize, normalize="unit")
    mask = _asymmetric_mask(*shape)
    small = preprocess_mask(mask, cfg)
    assert small.shape == (64, 64) and small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1}
    _, geo = preprocess_image(mask.astype(np.float32), cfg)
    back = restore_probability(small.astype(np.float32), geo) > 0.5
    assert back.shape == mask.shape
    assert _iou(back, mask) > 0.85
    assert np.abs(_centroid(back) - _centroid(mask)).max() < 0.02 * max(shape)
    assert _iou(back, mask[::-1]) < 0.5 and _iou(back, mask[:, ::-1]) < 0.5


@pytest.mark.parametrize("shape, inner, pad_axis", [((100, 50), (64, 32), 1), ((50, 100), (32, 64), 0)])
def test_letterbox_keeps_aspect_and_pads(shape, inner, pad_axis):
    """Tall and wide images: the image is centred, the padding is 0, and the way back is the exact inverse."""
    cfg = PreprocessConfig(size=64, resize="letterbox", normalize="unit")
    image = np.zeros(shape, np.float32)
    h, w = shape
    image[: h // 2, : w // 2] = 1.0  # bright top-left quadrant only
    out, geo = preprocess_image(image, cfg)
    assert (geo.height, geo.width, geo.inner_height, geo.inner_width) == (h, w, *inner)
    assert (geo.top, geo.left) == ((0, 16) if pad_axis == 1 else (16, 0))
    if pad_axis == 1:
        assert out[:, :16].max() == 0 and out[:, 48:].max() == 0  # padded left and right
        assert out[:30, 16:30].min() == 255 and out[34:, 34:48].max() == 0  # top-left of the image bright
    else:
        assert out[:16].max() == 0 and out[48:].max() == 0  # padded top and bottom
        assert out[16:30, :30].min() == 255 and out[34:48, 34:].max() == 0
    restored = restore_probability(out.astype(np.float32) / 255, geo)
    assert restored.shape == shape and restored.dtype == np.float32
    assert restore_probability(out.astype(np.float64) / 255, geo).dtype == np.float32
    bright = restored > 0.5
    assert _iou(bright, image > 0.5) > 0.9
    assert np.abs(_centroid(bright) - _centroid(image > 0.5)).max() < 1.5


def test_percentile_normalization_is_exposure_invariant():
    rng = np.random.default_rng(0)
    image = rng.random((80, 80)).astype(np.float32)
    cfg = PreprocessConfig(size=32, normalize="percentile")
    a, _ = preprocess_image(image * 0.3 + 0.1, cfg)  # under-exposed copy
    b, _ = preprocess_image(image, cfg)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_augmentation_moves_image_and_mask_together():
    size = 64
    image = np.zeros((1, size, size), np.uint8)
    image[0, 20:40, 24:44] = 255
    mask = (image > 0).astype(np.uint8)
    cfg = AugmentConfig(brightness=0, contrast=0, gamma=0, noise_std=0, rotation_deg=15, shift=0.1)
    out_i, out_m = augment_batch(image, mask, np.random.default_rng(3), cfg)
    assert out_i.dtype == np.uint8 and out_m.dtype == np.uint8
    assert not np.array_equal(out_m, mask)  # geometry changed
    agreement = ((out_i[0] > 127) == (out_m[0] > 0)).mean()
    assert agreement > 0.98  # ...identically for image and mask
    same = augment_batch(image, mask, np.random.default_rng(3), cfg)
    assert np.array_equal(same[0], out_i)  # seeded: reproducible


def test_geometry_exact_values():
    stretch = PreprocessConfig(size=32)
    assert geometry(100, 50, stretch) == Geometry(100, 50, 0, 0, 32, 32)
    box = PreprocessConfig(size=32, resize="letterbox")
    assert geometry(100, 50, box) == Geometry(100, 50, 0, 8, 32, 16)
    assert geometry(50, 100, box) == Geometry(50, 100, 8, 0, 16, 32)
    assert geometry(33, 100, box) == Geometry(33, 100, 10, 0, 11, 32)  # 10.56 rounds to 11; (32 - 11) // 2
    assert geometry(1, 1000, box) == Geometry(1, 1000, 15, 0, 1, 32)  # never a 0-pixel side
    assert geometry(1000, 1, box) == Geometry(1000, 1, 0, 15, 32, 1)
    assert geometry(16, 16, box) == Geometry(16, 16, 0, 0, 32, 32)  # enlarging a square fills the canvas


def test_normalize_unit_and_percentile_exact():
    image = np.linspace(0, 1, 101, dtype=np.float64).reshape(1, 101)
    unit = normalize(image, PreprocessConfig(normalize="unit"))
    assert unit.dtype == np.float32 and np.allclose(unit, image)
    cfg = PreprocessConfig(normalize="percentile", low_percentile=10.0, high_percentile=90.0)
    out = normalize(image, cfg)
    assert out.dtype == np.float32
    assert (out[0, :11] == 0.0).all() and (out[0, 90:] == 1.0).all()  # clipped below p10 and above p90
    assert out[0, 50] == pytest.approx(0.5) and out[0, 30] == pytest.approx(0.25)
    flat = normalize(np.full((4, 4), 0.7), PreprocessConfig())
    assert flat.dtype == np.float32 and flat.shape == (4, 4) and not flat.any()  # all zeros, no division by 0


def test_preprocess_image_output_contract():
    cfg = PreprocessConfig(size=16, normalize="unit")
    image = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    out, geo = preprocess_image(image, cfg)
    assert out.dtype == np.uint8 and out.shape == (16, 16) and geo == Geometry(16, 16, 0, 0, 16, 16)
    assert np.array_equal(out, np.round(image * 255).astype(np.uint8))  # same size: no resampling change
    # Shrinking averages (area) rather than sampling: one bright line in four becomes a flat 25 % grey.
    lines = (np.arange(64) % 4 == 0).astype(np.float32)
    grey, _ = preprocess_image(np.tile(lines, (64, 1)), cfg)
    assert np.all(grey == 64)
    grey, _ = preprocess_image(np.tile(lines[:, None], (1, 16)), cfg)  # only the height shrinks
    assert np.all(grey == 64)
    # Enlarging interpolates linearly: a ramp stays monotonic and spans the same range.
    up, _ = preprocess_image(np.array([[0.0, 1.0]] * 2, np.float32), cfg)
    assert up[0, 0] == 0 and up[0, -1] == 255 and np.all(np.diff(up[0].astype(int)) >= 0)
    assert len(np.unique(up[0])) > 4


@pytest.mark.parametrize("shape, resize", [((64, 16), "stretch"), ((16, 8), "stretch"), ((8, 16), "stretch"),
                                           ((8, 12), "letterbox"), ((40, 20), "letterbox")])
def test_area_interpolation_only_when_a_side_shrinks(shape, resize):
    """The docstring's rule, side by side: INTER_AREA when either side of the image gets smaller, else
    INTER_LINEAR (both compared, so the test cannot pass with the other one)."""
    import cv2

    cfg = PreprocessConfig(size=16, resize=resize, normalize="unit")
    image = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    out, geo = preprocess_image(image, cfg)
    shrinking = geo.inner_height < shape[0] or geo.inner_width < shape[1]
    inner = out[geo.top : geo.top + geo.inner_height, geo.left : geo.left + geo.inner_width]
    results = {}
    for interp in (cv2.INTER_AREA, cv2.INTER_LINEAR):
        resized = cv2.resize(image, (geo.inner_width, geo.inner_height), interpolation=interp)
        results[interp] = np.round(resized * 255.0).astype(np.uint8)
    assert not np.array_equal(results[cv2.INTER_AREA], results[cv2.INTER_LINEAR])
    assert np.array_equal(inner, results[cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR])


def test_preprocess_mask_is_area_averaged_then_strictly_over_half():
    cfg = PreprocessConfig(size=16, normalize="unit")
    mask = np.zeros((64, 64), bool)
    mask[:, 21:23] = True  # covers exactly half of model column 5 (image columns 20..23)
    mask[:, 41:44] = True  # three quarters of model column 10
    small = preprocess_mask(mask, cfg)
    assert not small[:, 5].any() and small[:, 10].all() and small.sum() == 16


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match=r"^resize must be one of \('stretch', 'letterbox'\), got 'crop'$"):
        PreprocessConfig(resize="crop")
    with pytest.raises(ValueError, match=r"^normalize must be one of \(.unit., .percentile., .equalize.\), "
                       r"got .zscore.$"):
        PreprocessConfig(normalize="zscore")
    for size in (15, 16.0, "256"):
        with pytest.raises(ValueError, match=rf"^size must be an integer >= 16, got {size!r}$"):
            PreprocessConfig(size=size)
    assert PreprocessConfig(size=16).size == 16
    for low, high in ((-1.0, 99.0), (50.0, 50.0), (1.0, 100.5)):
        with pytest.raises(ValueError, match=r"^need 0 <= low_percentile < high_percentile <= 100$"):
            PreprocessConfig(low_percentile=low, high_percentile=high)
    assert PreprocessConfig(low_percentile=0.0, high_percentile=100.0).high_percentile == 100.0
    assert PreprocessConfig().to_dict() == {"size": 256, "resize": "stretch", "normalize": "percentile",
                                            "low_percentile": 1.0, "high_percentile": 99.0}


@given(st.integers(20, 400), st.integers(20, 400), st.sampled_from(["stretch", "letterbox"]),
       st.sampled_from([32, 48, 64]))
def test_property_round_trip_for_random_sizes_and_aspect_ratios(height, width, resize, size):
    """For any size and aspect ratio: the geometry fits the canvas, letterbox keeps the aspect ratio, and a
    mask comes back at the original size in the same place."""
    cfg = PreprocessConfig(size=size, resize=resize, normalize="unit")
    geo = geometry(height, width, cfg)
    assert (0 <= geo.top and geo.top + geo.inner_height <= size
            and 0 <= geo.left and geo.left + geo.inner_width <= size)
    if resize == "letterbox":
        assert max(geo.inner_height, geo.inner_width) == size
        assert abs(geo.inner_height / geo.inner_width - height / width) <= (height / width) * 2 / min(
            geo.inner_height, geo.inner_width) + 1e-9
        assert (abs(2 * geo.top + geo.inner_height - size) <= 1
                and abs(2 * geo.left + geo.inner_width - size) <= 1)
    else:
        assert (geo.top, geo.left, geo.inner_height, geo.inner_width) == (0, 0, size, size)
    # The mask block below must span a few model pixels to come back at all: a 20x272 film letterboxed into
    # 32 px is 2 px tall, where any quarter-height block vanishes (information lost, not a mapping error).
    assume(min(geo.inner_height, geo.inner_width) >= 8)
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 5 : width // 2] = True  # upper-left block
    _, geo_img = preprocess_image(mask.astype(np.float32), cfg)
    assert geo_img == geo
    back = restore_probability(preprocess_mask(mask, cfg).astype(np.float32), geo) > 0.5
    assert back.shape == (height, width)
    # Every original pixel maps back within one model pixel of where it was.
    cell = max(height / geo.inner_height, width / geo.inner_width)
    assert np.abs(_centroid(back) - _centroid(mask)).max() <= cell + 1
    assert _iou(back, mask) > 0.6


def test_to_tensor():
    batch = np.zeros((3, 8, 8), np.uint8)
    batch[1, 2, 3] = 255
    batch[2] = 51
    t = to_tensor(batch)
    assert tuple(t.shape) == (3, 1, 8, 8) and t.dtype == torch.float32
    assert float(t[1, 0, 2, 3]) == 1.0 and float(t[1].sum()) == 1.0 and float(t[0].max()) == 0.0
    assert torch.allclose(t[2], torch.full((1, 8, 8), 0.2))


def test_equalize_makes_a_washed_out_film_look_like_a_well_exposed_one():
    """Histogram equalization (normalize: equalize): monotone, full range, and the same output for a film
    and a brightened, low-contrast copy of it (what another site's export looks like)."""
    from raysegment.data.preprocess import equalize

    rng = np.random.default_rng(0)
    film = rng.random((64, 80)).astype(np.float32)
    washed = (0.6 + 0.3 * film).astype(np.float32)
    a, b = equalize(film), equalize(washed)
    assert a.min() == 0.0 and a.max() == 1.0
    order = np.argsort(film.ravel(), kind="stable")
    assert (np.diff(a.ravel()[order]) >= 0).all()  # brighter in, never darker out
    assert np.abs(a - b).max() <= 2 / 64 + 1e-6  # the washed-out copy lands (almost) where the film does
    assert not equalize(np.full((8, 8), 0.4, np.float32)).any()  # a flat film: zeros
    config = PreprocessConfig(size=32, normalize="equalize")
    out, _ = preprocess_image(washed, config)
    assert out.min() == 0 and out.max() == 255
