"""Synthetic chest X-ray phantoms: the built-in data for the demo and the tests.

A phantom is drawn as an attenuation map (bright = dense, as on a radiograph): a soft-tissue
body with shoulders, two air-filled lungs (dark), ribs, clavicles, spine, mediastinum, heart,
vessels, then tilted, exposed (gain / gamma / gradient) and made noisy. The lung masks are
the lung outlines minus what the heart and aorta cover, as in expert masks.

Everything low-frequency is drawn at half resolution and upsampled; only the masks and the
noise are made at full resolution, so one 512x512 phantom takes a few milliseconds.

Image i of seed K comes from its own RNG, np.random.default_rng([K, i]), so it is the same
whatever n, and (apart from the noise) whatever size.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits for cv2 drawing: sub-pixel accurate outlines at any size
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint8 (H, W), the X-ray as stored in a PNG
    left_mask: np.ndarray  # bool (H, W), patient's LEFT lung = IMAGE RIGHT side
    right_mask: np.ndarray  # bool (H, W), patient's RIGHT lung = IMAGE LEFT side

    @property
    def mask(self) -> np.ndarray:
        """Both lungs, bool (H, W)."""
        return self.left_mask | self.right_mask


# ----------------------------------------------------------------------------- geometry
# Control points of the patient's right lung (image left) in unit coordinates (x right, y down):
# apex, lateral wall down to the costophrenic angle, diaphragm dome, medial (mediastinal) edge.
_RIGHT_LUNG = np.array([
    (0.34, 0.13), (0.27, 0.165), (0.20, 0.24), (0.155, 0.35), (0.135, 0.47), (0.125, 0.59),
    (0.13, 0.70),                                            # costophrenic angle
    (0.19, 0.655), (0.27, 0.615), (0.35, 0.605), (0.42, 0.63),  # dome
    (0.445, 0.55), (0.45, 0.42), (0.43, 0.28), (0.40, 0.18),    # mediastinal edge
], dtype=np.float32)
_DOME = slice(7, 11)


def _chaikin(p: np.ndarray, iters: int = 3) -> np.ndarray:
    """Smooth a closed polygon (N, 2) by corner cutting; returns (N * 2**iters, 2)."""
    for _ in range(iters):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _px(pts: np.ndarray, res: int) -> np.ndarray:
    """Unit coordinates (N, 2) -> fixed-point pixel coordinates for cv2 at resolution res."""
    return np.round(pts * res * _ONE).astype(np.int32)


def _fill(pts_list, res: int) -> np.ndarray:
    """Rasterize closed unit-coordinate polygons to a uint8 0/1 (res, res) image."""
    out = np.zeros((res, res), np.uint8)
    for p in pts_list:  # one call each: a single call would XOR where polygons overlap
        cv2.fillPoly(out, [_px(p, res)], 1, cv2.LINE_8, _SHIFT)
    return out


def _ellipse(c, axes, angle_deg: float) -> np.ndarray:
    """Ellipse outline (72, 2) in unit coordinates; angle clockwise on screen (y down)."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    a = np.deg2rad(angle_deg)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack([c[0] + x * np.cos(a) - y * np.sin(a), c[1] + x * np.sin(a) + y * np.cos(a)], 1)


def _lungs(rng: np.random.Generator):
    """Random right and left lung outlines (smoothed polygons, unit coordinates)."""
    out = []
    for side in ("right", "left"):
        p = _RIGHT_LUNG.copy()
        p[_DOME, 1] += rng.uniform(-0.04, 0.03)  # dome height
        p += rng.normal(0, 0.008, p.shape)  # shape jitter
        c = p.mean(0)
        sx, sy = rng.uniform(0.88, 1.08), rng.uniform(0.85, 1.1)
        p = (p - c) * (sx, sy) + c + rng.uniform(-0.02, 0.02, 2)
        if side == "left":
            # Mirror to the image right; the left lung is narrower and its dome lower (liver
            # pushes the right one up), so it reaches further down.
            p[:, 0] = 1.0 - p[:, 0]
            lat = p[:, 0].max()
            p[:, 0] = lat - (lat - p[:, 0]) * rng.uniform(0.85, 0.95)
            p[:, 1] += 0.07 * np.clip((p[:, 1] - 0.3) / 0.4, 0, 1)
            p[:, 0] = np.maximum(p[:, 0], 0.515)
        else:
            p[:, 0] = np.minimum(p[:, 0], 0.485)
        out.append(_chaikin(p))
    return out


# ----------------------------------------------------------------------------- rendering
def _render(seed: int, index: int, size: int):
    """Float image (size, size) in [0, 1] plus (left, right) bool masks."""
    rng = np.random.default_rng([seed, index])
    h = max(size // 2, 16)  # working resolution of the attenuation map
    u = (np.arange(h, dtype=np.float32) + 0.5) / h  # pixel centres in unit coordinates
    X, Y = np.meshgrid(u, u)

    def blur(img, sigma):  # sigma in unit coordinates
        return cv2.GaussianBlur(img, (0, 0), max(sigma * h, 0.3))

    # --- geometry (all random draws here have a fixed count: independent of size)
    right, left = _lungs(rng)
    heart_c = (0.54 + rng.uniform(-0.02, 0.03), 0.60 + rng.uniform(-0.03, 0.04))
    heart_ax = (0.15 * rng.uniform(0.85, 1.2), 0.115 * rng.uniform(0.85, 1.15))
    heart = _ellipse(heart_c, heart_ax, rng.uniform(-28, -8))
    aorta = _ellipse((0.555 + rng.uniform(-0.01, 0.02), 0.29 + rng.uniform(-0.02, 0.02)),
                     (0.045, 0.04), 0)
    bw = rng.uniform(0.9, 1.05)  # body width
    torso = _ellipse((0.5, 0.64), (0.47 * bw, 0.62), 0)
    shoulders = [_ellipse((0.5 - s * 0.3 * bw, 0.24), (0.22 * bw, 0.11), s * -12) for s in (1, -1)]
    neck = np.array([(0.40, -0.1), (0.60, -0.1), (0.62, 0.2), (0.38, 0.2)], np.float32)
    arms = [_ellipse((0.5 - s * 0.56 * bw, 0.55), (0.07, 0.5), 0) for s in (1, -1)]

    # --- attenuation map at half resolution (roughly: soft tissue ~1, air-filled lung ~0.3)
    body = blur(_fill([torso, neck, *shoulders], h).astype(np.float32), 0.01)
    tissue = body * (0.55 + 0.45 * np.sqrt(np.clip(1 - ((X - 0.5) / 0.5) ** 2, 0, 1)))
    tissue += rng.uniform(0.5, 0.9) * blur(_fill(arms, h).astype(np.float32), 0.01)

    lung_poly = _fill([right, left], h)
    # Air thickness grows from zero at the lung edge inward, so the edges are soft.
    dist = cv2.distanceTransform(lung_poly, cv2.DIST_L2, 3) / h
    air = 1 - np.exp(-dist / rng.uniform(0.015, 0.04))
    air = blur(air, 0.004) * rng.uniform(0.5, 0.75)
    texture = cv2.resize(rng.standard_normal((24, 24)).astype(np.float32), (h, h),
                         interpolation=cv2.INTER_CUBIC)
    air *= 1 + 0.12 * texture

    spine_w = rng.uniform(0.035, 0.05)
    spine = np.exp(-(((X - 0.5 - rng.uniform(-0.01, 0.01)) / spine_w) ** 6))
    spine *= 0.8 + 0.2 * np.cos(2 * np.pi * Y / rng.uniform(0.04, 0.055))  # vertebral bodies
    spine *= rng.uniform(0.2, 0.35) * np.clip(Y / 0.05, 0, 1)
    mediast = np.exp(-(((X - 0.51) / 0.09) ** 4)) * rng.uniform(0.1, 0.25) * (Y < 0.7)

    organs = np.zeros((h, h), np.float32)
    cv2.fillPoly(organs, [_px(heart, h)], rng.uniform(0.3, 0.5), cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(organs, [_px(aorta, h)], rng.uniform(0.2, 0.35), cv2.LINE_AA, _SHIFT)
    if rng.random() < 0.6:  # gastric air bubble under the left dome: dark, but not lung
        gy = left[:, 1].max() + 0.05
        cv2.fillPoly(organs, [_px(_ellipse((0.66, gy), (0.05, 0.03), 0), h)],
                     -rng.uniform(0.15, 0.3), cv2.LINE_AA, _SHIFT)
    if rng.random() < 0.5:  # breast shadows over the lung bases
        amp = rng.uniform(0.08, 0.2)
        for s in (1, -1):
            cv2.fillPoly(organs, [_px(_ellipse((0.5 - s * 0.24, 0.8), (0.2, 0.15), 0), h)],
                         amp, cv2.LINE_AA, _SHIFT)
    organs = blur(organs, 0.012)

    bones = np.zeros((h, h), np.float32)
    thick = max(1, round(0.02 * h))
    n_ribs, y0, gap = 10, rng.uniform(0.13, 0.16), rng.uniform(0.05, 0.058)
    t = np.linspace(0, 1, 24)[:, None]
    for s in (-1, 1):  # s = -1: image left
        for k in range(n_ribs):
            y = y0 + k * gap + rng.normal(0, 0.004)
            # Posterior rib: leaves the spine, rises a little, then arcs down along the chest wall.
            px = 0.5 + s * (0.03 + 0.41 * np.sin(t * np.pi / 2))
            py = y - 0.03 * t + 0.16 * t ** 2.5
            cv2.polylines(bones, [_px(np.hstack([px, py]), h)], False, 0.25, thick, cv2.LINE_AA, _SHIFT)
            # Anterior rib: fainter, from the chest wall down toward the sternum.
            ax = 0.5 + s * (0.42 - 0.3 * t)
            ay = y + 0.05 + 0.14 * t ** 0.7
            cv2.polylines(bones, [_px(np.hstack([ax, ay]), h)], False, 0.12,
                          max(1, thick - 1), cv2.LINE_AA, _SHIFT)
        clav = np.array([(0.5 + s * 0.06, 0.18), (0.5 + s * 0.2, 0.13), (0.5 + s * 0.34, 0.12)])
        cv2.polylines(bones, [_px(clav + rng.normal(0, 0.01, clav.shape), h)], False, 0.3,
                      round(1.4 * thick), cv2.LINE_AA, _SHIFT)
    bones = blur(bones, 0.003) * rng.uniform(0.7, 1.3) * (body > 0.5)

    vessels = np.zeros((h, h), np.float32)
    for hx in (0.42, 0.58):  # hila: vessels branch out toward the periphery
        for _ in range(rng.integers(10, 18)):
            a = rng.uniform(-0.6, 0.6) * np.pi + (np.pi if hx < 0.5 else 0)
            p = np.array([hx, 0.45 + rng.uniform(-0.05, 0.05)])
            w = 3
            for _ in range(4):
                a += rng.normal(0, 0.3)
                q = p + rng.uniform(0.03, 0.07) * np.array([np.cos(a), np.sin(a)])
                cv2.line(vessels, tuple(_px(p, h)), tuple(_px(q, h)), 0.12, max(1, w * h // 256),
                         cv2.LINE_AA, _SHIFT)
                p, w = q, max(1, w - 1)
    vessels = blur(vessels, 0.002) * blur(lung_poly.astype(np.float32), 0.01)

    att = tissue - air + spine + mediast + organs + bones + vessels
    if rng.random() < 0.7:  # side marker, as on most films
        mark = np.zeros((h, h), np.uint8)  # cv2 draws text on 8-bit images only
        cv2.putText(mark, "R" if rng.random() < 0.7 else "L", (int(0.05 * h), int(0.1 * h)),
                    cv2.FONT_HERSHEY_SIMPLEX, h / 400, 255, max(1, h // 128), cv2.LINE_AA)
        att += mark * np.float32(1.5 / 255)

    # --- tilt and shift the whole film; masks go through the same transform at full size
    ang, scale = rng.uniform(-5, 5), rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, 2)

    def affine(res):
        m = cv2.getRotationMatrix2D((res / 2, res / 2), ang, scale)
        m[:, 2] += shift * res
        return m

    att = cv2.warpAffine(att, affine(h), (h, h), flags=cv2.INTER_LINEAR, borderValue=0)
    att = cv2.resize(att, (size, size), interpolation=cv2.INTER_LINEAR)

    cover = _fill([heart, aorta], size).astype(bool)
    masks = []
    for lung in (left, right):
        m = (_fill([lung], size).astype(bool) & ~cover).astype(np.uint8) * 255
        m = cv2.warpAffine(m, affine(size), (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        masks.append(m > 127)
    masks[0] &= ~masks[1]  # keep them disjoint whatever the jitter did

    # --- exposure: gain / gamma / offset, a smooth non-uniformity (heel effect), noise
    gamma, lo, hi = rng.uniform(0.6, 1.6), rng.uniform(0.0, 0.15), rng.uniform(0.75, 1.0)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    noise_sigma = rng.uniform(0.01, 0.035)
    img = np.clip(att / 1.5, 0, 1) ** gamma
    v = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    img = lo + (hi - lo) * img * (1 + gx * v[None, :] + gy * v[:, None])
    img += rng.standard_normal((size, size), dtype=np.float32) * noise_sigma
    return np.clip(img, 0, 1), masks[0], masks[1]


def make_phantom(seed: int, index: int, size: int = 512) -> Phantom:
    """Phantom number index of run seed: uint8 (size, size) image and bool lung masks."""
    img, left, right = _render(seed, index, size)
    return Phantom((img * 255 + 0.5).astype(np.uint8), left, right)


def make_phantom_16bit(seed: int, index: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Same phantom as make_phantom, as a uint16 (size, size) image and a bool union mask.

    Quantized to 12 bits like a DR detector, then scaled by 16 to span 0..65520.
    """
    img, left, right = _render(seed, index, size)
    return (np.round(img * 4095).astype(np.uint16) << 4), left | right


# ----------------------------------------------------------------------------- dataset + CLI
def write_dataset(out_dir: str, n: int, size: int = 512, seed: int = 0, layout: str = "generic") -> list[str]:
    """Write n phantoms as PNGs (masks 0/255) and return their ids (file stems).

    montgomery: CXR_png/MCUCXR_{i:04d}_{label}.png, ManualMask/{leftMask,rightMask}/<same>.png
    generic:    cxr/SYN_{i:04d}_{label}.png, masks/<same>.png (union mask)
    label = i % 2 (0 normal, 1 abnormal in Montgomery naming; here it means nothing).
    """
    if layout == "montgomery":
        dirs = [os.path.join(out_dir, d) for d in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask")]
    elif layout == "generic":
        dirs = [os.path.join(out_dir, d) for d in ("cxr", "masks")]
    else:
        raise ValueError(f"unknown layout {layout!r}: expected 'montgomery' or 'generic'")
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    prefix = "MCUCXR" if layout == "montgomery" else "SYN"
    ids = []
    for i in range(n):
        name = f"{prefix}_{i:04d}_{i % 2}"
        p = make_phantom(seed, i, size)
        masks = (p.left_mask, p.right_mask) if layout == "montgomery" else (p.mask,)
        cv2.imwrite(os.path.join(dirs[0], name + ".png"), p.image)
        for d, m in zip(dirs[1:], masks):
            cv2.imwrite(os.path.join(d, name + ".png"), m.astype(np.uint8) * 255)
        ids.append(name)
    return ids


def add_parser(subparsers) -> None:
    """Register the `synth` subcommand on an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser("synth", help="write synthetic chest X-ray phantoms")
    p.add_argument("--layout", choices=["montgomery", "generic"], default="generic")
    p.add_argument("--n", type=int, default=20, help="number of phantoms")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ids = write_dataset(args.out, args.n, args.size, args.seed, args.layout)
    dt = time.perf_counter() - t0
    print(f"wrote {len(ids)} phantoms ({args.layout}) to {args.out} in {dt:.1f}s ({len(ids) / dt:.0f} img/s)")
    return 0
