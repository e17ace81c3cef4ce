"""Synthetic chest X-ray phantoms: the built-in data for the demo and the tests.

A phantom is drawn as an attenuation map (bright = dense, as on a radiograph): a soft-tissue
body with shoulders and arms, two air-filled lungs (dark), ribs, clavicles, spine, mediastinum,
heart, vessels; then the film is tilted, exposed (gain / gamma / non-uniformity) and made noisy.
The lung masks are the lung outlines minus what the heart and aorta cover, as in expert masks.
The heart mask is the heart (not the aorta), so it never overlaps the lungs; the clavicle masks are
the clavicles as drawn, inside the body, and do overlap the lungs (as in JSRT/SCR).

Data set layouts (write_dataset, `raysegment synth --layout`):
    generic     cxr/SYN_0000_0.png, masks/SYN_0000_0.png (both lungs)
    montgomery  CXR_png/MCUCXR_0000_0.png, ManualMask/{leftMask,rightMask}/MCUCXR_0000_0.png
    structures  generic + structures/{left_lung,right_lung,heart,left_clavicle,right_clavicle}/SYN_0000_0.png,
                like the JSRT/SCR set (../shared/data/jsrt_512)
All masks are 0/255 uint8 PNGs. Patient's left = image right.

Everything low-frequency is drawn at half resolution and upsampled; only the masks and the
noise are made at full resolution, so one 512x512 phantom takes a few milliseconds.

Image i of seed K comes from its own RNG, np.random.default_rng([K, i]), so it is the same
whatever n, and (apart from the noise) whatever size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits for cv2 drawing: sub-pixel accurate outlines at any size
# Standard normal quantiles of 256 equal-probability bins: cv2.LUT of random bytes through this
# table gives Gaussian noise at a fraction of the cost of rng.standard_normal.
_GAUSS = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
# The folders of the `structures` layout, as in JSRT/SCR (data/structures.py: the parts of each structure).
STRUCTURE_FOLDERS = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint8 (H, W), the X-ray as stored in a PNG
    left_mask: np.ndarray  # bool (H, W), patient's LEFT lung = IMAGE RIGHT side
    right_mask: np.ndarray  # bool (H, W), patient's RIGHT lung = IMAGE LEFT side
    heart_mask: np.ndarray  # bool (H, W), the heart shadow (not the aorta); disjoint from the lung masks
    left_clavicle_mask: np.ndarray  # bool (H, W), patient's LEFT clavicle = IMAGE RIGHT side
    right_clavicle_mask: np.ndarray  # bool (H, W), patient's RIGHT clavicle = IMAGE LEFT side

    @property
    def mask(self) -> np.ndarray:
        """Both lungs, bool (H, W)."""
        return self.left_mask | self.right_mask

    @property
    def clavicles(self) -> np.ndarray:
        """Both clavicles, bool (H, W)."""
        return self.left_clavicle_mask | self.right_clavicle_mask

    def structure_masks(self) -> dict[str, np.ndarray]:
        """The masks of a structures/ layout (as in JSRT/SCR), folder name -> bool (H, W)."""
        masks = (self.left_mask, self.right_mask, self.heart_mask, self.left_clavicle_mask,
                 self.right_clavicle_mask)
        return dict(zip(STRUCTURE_FOLDERS, masks, strict=True))


# ----------------------------------------------------------------------------- drawing helpers
# All geometry is in unit coordinates: x to the image right, y down, (0, 0) the top-left corner.

def _px(pts: np.ndarray, res: int) -> np.ndarray:
    """Unit coordinates (..., 2) -> int32 fixed-point pixel coordinates for cv2 at res x res.

    Unit (0, 0) is the top-left pixel's outer corner and pixel i's centre is (i + 0.5) / res, the
    convention cv2.resize uses, so drawings at half and full resolution line up.
    """
    return np.round((np.asarray(pts) * res - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _fill(polys, res: int, dtype=np.uint8, value=1.0, out=None) -> np.ndarray:
    """Rasterize closed polygons [(N, 2), ...] with value into out, or a new (res, res) image.

    Float images get anti-aliased edges; uint8 ones (masks) get crisp 0/value pixels.
    """
    out = np.zeros((res, res), dtype) if out is None else out
    aa = cv2.LINE_8 if out.dtype == np.uint8 else cv2.LINE_AA
    for p in polys:  # one call each: a single fillPoly call XORs where polygons overlap
        cv2.fillPoly(out, [_px(p, res)], value, aa, _SHIFT)
    return out


def _ellipse(c, axes, angle_deg: float = 0.0) -> np.ndarray:
    """Ellipse outline (64, 2); angle clockwise on screen."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    a = np.deg2rad(angle_deg)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack([c[0] + x * np.cos(a) - y * np.sin(a), c[1] + x * np.sin(a) + y * np.cos(a)], 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> its largest 8-connected component, bool (H, W) (all False when mask is)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _chaikin(p: np.ndarray, iters: int = 3) -> np.ndarray:
    """Smooth a closed polygon (N, 2) by corner cutting; returns (N * 2**iters, 2)."""
    for _ in range(iters):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


# ----------------------------------------------------------------------------- anatomy
# Control points of the patient's right lung (image left): apex, lateral wall down to the
# costophrenic angle, diaphragm dome, medial (mediastinal) edge back up to the apex.
_RIGHT_LUNG = np.array([
    (0.34, 0.12), (0.27, 0.155), (0.20, 0.23), (0.15, 0.34), (0.13, 0.46), (0.12, 0.58),
    (0.125, 0.70),                                              # costophrenic angle
    (0.19, 0.655), (0.27, 0.615), (0.35, 0.605), (0.42, 0.635),  # diaphragm dome
    (0.445, 0.55), (0.45, 0.42), (0.435, 0.28), (0.40, 0.17),    # mediastinal edge
])
_DOME = slice(7, 11)


def _lungs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (right, left) lung outlines, smoothed closed polygons (M, 2)."""
    out = []
    for side in ("right", "left"):
        p = _RIGHT_LUNG.copy()
        p[_DOME, 1] += rng.uniform(-0.05, 0.03)  # dome height
        p += rng.normal(0, 0.008, p.shape)  # shape jitter
        c = p.mean(0)
        p = (p - c) * rng.uniform((0.85, 0.82), (1.12, 1.15)) + c + rng.uniform(-0.02, 0.02, 2)
        if side == "left":
            # Mirror to the image right. The left lung is narrower and its dome lower (the liver
            # pushes the right dome up), so it is the longer one.
            p[:, 0] = 1.0 - p[:, 0]
            lat = p[:, 0].max()
            p[:, 0] = lat - (lat - p[:, 0]) * rng.uniform(0.85, 0.95)
            p[:, 1] += 0.07 * np.clip((p[:, 1] - 0.3) / 0.4, 0, 1)
            p[:, 0] = np.maximum(p[:, 0], 0.515)
        else:
            p[:, 0] = np.minimum(p[:, 0], 0.485)
        out.append(_chaikin(p))
    return out[0], out[1]


def _ribs(rng: np.random.Generator, res: int, width: float) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Ribs and clavicles of a chest width (relative to the average).

    Returns float32 (res, res) attenuation, the (right, left) clavicle centre lines [(3, 2), (3, 2)] in
    unit coordinates, and the clavicles' drawn thickness in unit coordinates (for their masks).
    """
    bones = np.zeros((res, res), np.float32)
    thick = max(1, round(0.022 * res))
    clavicles = []
    t = np.linspace(0, 1, 16)  # position along a rib, medial to lateral
    k = np.arange(10)[:, None]
    for s in (-1, 1):  # -1: image left
        # Ten ribs a side, spreading out lower down. Posterior ribs slope down and out from the
        # spine and arc down along the chest wall; anterior ribs (fainter, the upper seven) run
        # from the chest wall down toward the sternum.
        y = rng.uniform(0.12, 0.15) + k * rng.uniform(0.048, 0.056) * (1 + 0.03 * k)
        y = y + rng.normal(0, 0.004, k.shape)  # (10, 1) height of each rib at the spine
        slope, drop = rng.uniform(0.05, 0.1, k.shape), rng.uniform(0.08, 0.14, k.shape)
        post_x = 0.5 + s * (0.03 + 0.41 * width * np.sin(t * np.pi / 2))
        post = np.stack(np.broadcast_arrays(post_x, y + slope * t + drop * t**2), -1)  # (10, 16, 2)
        ant_x = 0.5 + s * (0.43 * width - 0.28 * t)
        ant = np.stack(np.broadcast_arrays(ant_x, y[:7] + 0.04 + 0.13 * t**0.7), -1)  # (7, 16, 2)
        clav = np.array([(0.5 + s * 0.06, 0.17), (0.5 + s * 0.2, 0.12), (0.5 + s * 0.34, 0.11)])
        clav += rng.normal(0, 0.01, clav.shape)
        cv2.polylines(bones, list(_px(post, res)), False, 0.2, thick, cv2.LINE_AA, _SHIFT)
        cv2.polylines(bones, list(_px(ant, res)), False, 0.1, max(1, thick - 1), cv2.LINE_AA, _SHIFT)
        cv2.polylines(bones, [_px(clav, res)], False, 0.25, round(1.4 * thick), cv2.LINE_AA, _SHIFT)
        clavicles.append(clav)
    return bones, clavicles, round(1.4 * thick) / res


def _vessels(rng: np.random.Generator, res: int) -> np.ndarray:
    """Vessel tree branching out of both hila, float32 (res, res) attenuation."""
    out = np.zeros((res, res), np.float32)
    for hx, toward in ((0.42, np.pi), (0.58, 0.0)):
        n = 14
        a = toward + rng.uniform(-0.6, 0.6, (n, 1)) * np.pi + np.cumsum(rng.normal(0, 0.3, (n, 4)), 1)
        step = rng.uniform(0.03, 0.07, (n, 4))
        start = np.stack([np.full(n, hx), 0.45 + rng.uniform(-0.05, 0.05, n)], 1)[:, None]
        direction = np.stack([np.cos(a), np.sin(a)], -1)  # (n, 4, 2)
        paths = np.concatenate([start, start + np.cumsum(step[..., None] * direction, 1)], 1)  # (n, 5, 2)
        # Thick near the hilum, thin at the periphery.
        cv2.polylines(out, list(_px(paths, res)), False, 0.1, max(1, res // 256), cv2.LINE_AA, _SHIFT)
        cv2.polylines(out, list(_px(paths[:, :3], res)), False, 0.1, max(2, res // 100), cv2.LINE_AA, _SHIFT)
    return out


# ----------------------------------------------------------------------------- rendering
# Over 80 lines on purpose: one seeded draw sequence, read top to bottom (geometry, attenuation, exposure,
# masks), each step using the previous steps' locals; split, it would pass a dozen arrays between parts.
def _render(seed: int, index: int, size: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Float32 image (size, size) in [0, 1] and the bool (size, size) masks in Phantom's field order:
    (left lung, right lung, heart, left clavicle, right clavicle)."""
    rng = np.random.default_rng([seed, index])
    h = max(size // 2, 16)  # working resolution of the attenuation map
    u = (np.arange(h, dtype=np.float32) + 0.5) / h  # pixel centres, unit coordinates

    def blur(img, sigma):  # sigma in unit coordinates
        return cv2.GaussianBlur(img, (0, 0), max(sigma * h, 0.3))

    def f32(x):
        return np.float32(x)

    # --- geometry
    right, left = _lungs(rng)
    # Heart: on the left dome, two thirds of it left of the midline (image right), its apex pointing
    # down and out, so it cuts the lower medial corner (cardiophrenic angle) off the left lung.
    cardiophrenic_y = left[left[:, 0] < left[:, 0].min() + 0.1, 1].max()
    hc = (0.56 + rng.uniform(-0.02, 0.03), cardiophrenic_y - rng.uniform(0.03, 0.07))
    heart = [
        _ellipse(hc, (0.16 * rng.uniform(0.85, 1.15), 0.11 * rng.uniform(0.85, 1.15)), rng.uniform(8, 28)),
        _ellipse((0.45 + rng.uniform(-0.02, 0.01), hc[1]), (0.05, 0.08)),  # right atrium
        _ellipse((0.555 + rng.uniform(-0.01, 0.02), 0.28 + rng.uniform(-0.02, 0.02)), (0.04, 0.035)),  # aorta
    ]
    bw = rng.uniform(0.9, 1.05)  # body width
    sh = rng.uniform(0.2, 0.26)  # shoulder height
    neck = np.array([(0.39, -0.1), (0.61, -0.1), (0.63, 0.2), (0.37, 0.2)])
    body = [_ellipse((0.5, 0.64), (0.47 * bw, 0.62)), neck]
    body += [_ellipse((0.5 - s * 0.3 * bw, sh), (0.22 * bw, 0.1), -12 * s) for s in (1, -1)]
    arms = [_ellipse((0.5 - s * 0.57 * bw, 0.55), (0.07, 0.5)) for s in (1, -1)]
    # Patient tilt and position: u -> A (u - c) + c + shift, c the image centre.
    a, scale = np.deg2rad(rng.uniform(-5, 5)), rng.uniform(0.9, 1.1)
    A = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    b = 0.5 - A @ (0.5, 0.5) + rng.uniform(-0.03, 0.03, 2)

    # --- attenuation at half resolution, drawn upright (soft tissue ~1, air-filled lung ~0.3 .. 0.5)
    tissue = _fill(arms, h, np.float32, rng.uniform(0.5, 0.9))
    tissue = blur(_fill(body, h, out=tissue), 0.01)  # the torso drawn over any overlap with the arms
    # (h,) the chest is thicker mid-line
    thickness = 0.55 + 0.45 * np.sqrt(np.clip(1 - ((u - 0.5) / 0.5) ** 2, 0, 1))
    att = tissue * thickness[None, :]

    # Air thickness grows from zero at the lung edge inward, so the edges are soft; behind the
    # heart there is little lung left, so the heart shows as a bright silhouette.
    lung_poly = _fill([right, left], h)
    heart_map = blur(_fill(heart, h, np.float32), 0.012)
    dist = cv2.distanceTransform(lung_poly, cv2.DIST_L2, 3) * f32(1 / h)
    air = 1 - np.exp(dist * f32(-1 / rng.uniform(0.015, 0.04)))
    air = blur(air, 0.004)
    texture = rng.standard_normal((24, 24)).astype(np.float32)  # lung parenchyma, low frequency
    texture = cv2.resize(texture, (h, h), interpolation=cv2.INTER_CUBIC)
    att -= air * (1 + 0.12 * texture) * (1 - 0.85 * heart_map) * f32(rng.uniform(0.5, 0.75))
    att += heart_map * f32(rng.uniform(0.15, 0.3))

    # Spine and mediastinum: separable profiles, outer products of (h,) vectors.
    dx = (u - 0.5 - rng.uniform(-0.01, 0.01)) / rng.uniform(0.035, 0.05)
    spine_y = (0.8 + 0.2 * np.cos(2 * np.pi * u / rng.uniform(0.04, 0.055))) * np.clip(u / 0.05, 0, 1)
    att += np.outer(spine_y * rng.uniform(0.15, 0.3), 1 / (1 + dx**6)).astype(np.float32)
    att += np.outer(u < 0.72, np.exp(-(((u - 0.51) / 0.09) ** 4)) * rng.uniform(0.1, 0.2)).astype(np.float32)

    extra = np.zeros((h, h), np.float32)
    if rng.random() < 0.6:  # gastric air bubble under the left dome: dark, but not lung
        bubble = _ellipse((0.66, left[:, 1].max() + 0.05), (0.05, 0.03))
        _fill([bubble], h, value=-rng.uniform(0.15, 0.3), out=extra)
    if rng.random() < 0.5:  # breast shadows over the lung bases
        amp = rng.uniform(0.08, 0.2)
        _fill([_ellipse((0.5 - s * 0.24, 0.8), (0.2, 0.15)) for s in (1, -1)], h, value=amp, out=extra)
    att += blur(extra, 0.012)
    # Ribs stand out against air far more than against the abdomen or the mediastinum (and
    # clavicles must not poke out of low shoulders); vessels show only in the lungs.
    bones, clavicles, clavicle_thickness = _ribs(rng, h, bw)
    ribs = bones * (tissue > 0.5) * (0.3 + 0.7 * air) * f32(rng.uniform(0.7, 1.3))
    att += blur(ribs + _vessels(rng, h) * air, 0.0025)
    if rng.random() < 0.7:  # side marker, as on most films
        mark = np.zeros((h, h), np.uint8)  # cv2 draws text on 8-bit images only
        cv2.putText(mark, "R" if rng.random() < 0.7 else "L", (int(0.05 * h), int(0.1 * h)),
                    cv2.FONT_HERSHEY_SIMPLEX, h / 400, 255, max(1, h // 128), cv2.LINE_AA)
        att += mark * f32(1.5 / 255)

    # --- exposure: gamma, offset / gain, smooth non-uniformity (heel effect). Still at half
    # resolution: it is smooth, so doing it before upsampling is 4x cheaper and looks the same.
    gamma, lo, hi = rng.uniform(0.6, 1.6), rng.uniform(0.0, 0.15), rng.uniform(0.75, 1.0)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    img = np.clip(att * f32(1 / 1.5), 0, 1) ** f32(gamma)
    img *= (1 + gx * (u[None, :] - 0.5) + gy * (u[:, None] - 0.5)) * f32(hi - lo)
    img += f32(lo)

    # --- tilt the film (pixel-space form of A, b; see _px), then upsample and add noise
    m = np.hstack([A, (A @ (0.5, 0.5) + b * h - 0.5)[:, None]])
    img = cv2.warpAffine(img, m, (h, h), flags=cv2.INTER_LINEAR, borderValue=lo)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    sigma = rng.uniform(0.01, 0.035)
    img += cv2.LUT(rng.integers(0, 256, (size, size), np.uint8), _GAUSS * f32(sigma))
    np.clip(img, 0, 1, out=img)

    # --- masks at full resolution: the tilted outlines minus what the heart and aorta cover
    def tilt(p):
        return p @ A.T + b

    labels = _fill([tilt(right)], size, value=1)
    _fill([tilt(left)], size, value=2, out=labels)  # disjoint whatever the jitter did
    _fill([tilt(p) for p in heart], size, value=0, out=labels)
    # The heart is the first two ellipses (the aorta is not heart in expert masks): exactly the pixels
    # just cleared from the lungs, so heart and lung masks never overlap.
    heart_mask = _fill([tilt(p) for p in heart[:2]], size).astype(bool)
    # Clavicles: their centre lines at the thickness they were drawn with, only where the image shows
    # bone, i.e. inside the body (tissue > 0.5, the same map the bones were multiplied by, tilted and
    # upsampled as the image was). Where the shoulder line cuts a clavicle's lateral end, a sliver can
    # come off: keep the largest piece, one clavicle a side (as in expert masks).
    inside = cv2.warpAffine((tissue > 0.5).astype(np.float32), m, (h, h), flags=cv2.INTER_LINEAR)
    inside = cv2.resize(inside, (size, size), interpolation=cv2.INTER_LINEAR) > 0.5
    clavicle_px = max(1, round(clavicle_thickness * size))
    right_clavicle, left_clavicle = (
        _largest_component(cv2.polylines(np.zeros((size, size), np.uint8), [_px(tilt(c), size)], False, 1,
                                         clavicle_px, cv2.LINE_8, _SHIFT).astype(bool) & inside)
        for c in clavicles)
    return img, (labels == 2, labels == 1, heart_mask, left_clavicle, right_clavicle)


def make_phantom(seed: int, index: int, size: int = 512) -> Phantom:
    """Phantom number index of run seed: uint8 (size, size) image and bool lung, heart, clavicle masks."""
    img, masks = _render(seed, index, size)
    return Phantom((img * 255 + 0.5).astype(np.uint8), *masks)


def make_phantom_16bit(seed: int, index: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Same phantom as make_phantom: uint16 (size, size) image and bool (size, size) union mask.

    Quantized to 12 bits like a DR detector, then scaled by 16 to span 0..65520.
    """
    img, (left, right, *_) = _render(seed, index, size)
    return np.round(img * 4095).astype(np.uint16) << 4, left | right


# ----------------------------------------------------------------------------- dataset
def write_dataset(out_dir: str, n: int, size: int = 512, seed: int = 0, layout: str = "generic") -> list[str]:
    """Write phantoms 0..n-1 as PNGs (masks 0/255 uint8) and return their ids (file stems).

    montgomery: CXR_png/MCUCXR_{i:04d}_{label}.png, ManualMask/{leftMask,rightMask}/<same name>
    generic:    cxr/SYN_{i:04d}_{label}.png, masks/<same name> (union of both lungs)
    structures: as generic (so lungs-only training reads it too), plus, as in JSRT/SCR,
                structures/{left_lung,right_lung,heart,left_clavicle,right_clavicle}/<same name>
    label = i % 2 (Montgomery: 0 normal, 1 tuberculosis; here it means nothing).
    """
    if layout == "montgomery":
        subdirs, prefix = ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"), "MCUCXR"
    elif layout == "generic":
        subdirs, prefix = ("cxr", "masks"), "SYN"
    elif layout == "structures":
        subdirs, prefix = ("cxr", "masks", *(f"structures/{s}" for s in STRUCTURE_FOLDERS)), "SYN"
    else:
        raise ValueError(f"unknown layout {layout!r}: expected 'montgomery', 'generic' or 'structures'")
    dirs = [os.path.join(out_dir, d) for d in subdirs]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    ids = []
    for i in range(n):
        name = f"{prefix}_{i:04d}_{i % 2}"
        p = make_phantom(seed, i, size)
        if layout == "montgomery":
            masks = (p.left_mask, p.right_mask)
        elif layout == "generic":
            masks = (p.mask,)
        else:
            parts = p.structure_masks()
            masks = (p.mask, *(parts[s] for s in STRUCTURE_FOLDERS))
        cv2.imwrite(os.path.join(dirs[0], name + ".png"), p.image)
        for d, m in zip(dirs[1:], masks, strict=True):
            cv2.imwrite(os.path.join(d, name + ".png"), m.astype(np.uint8) * 255)
        ids.append(name)
    return ids
