"""Pictures of segmentations, in OpenCV + NumPy (fast, no fonts to install, no display needed).

side_by_side:  X-ray | true mask | predicted mask | overlay   (the seed's display, plus the overlay)
overlay:       the X-ray with the predicted outline (orange, lightly filled) and the true outline (blue);
               a multi-structure model's heart and clavicles each in their own colour (STRUCTURE_COLORS),
               and the cardiothoracic ratio's two widths as lines
contact_sheet: a grid of tiles with a label under each (worst cases, QC-flagged images)

All functions take float images in [0, 1] or uint8 and bool masks at the image's resolution, and return
uint8 RGB (H, W, 3) arrays. Every image is scaled to `height` pixels (area interpolation to shrink a
4000 px X-ray, linear to enlarge a small one) before drawing, so outlines and text have the same size
whatever the input resolution.
The colours are from the Okabe-Ito palette, distinguishable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from raysegment.data.structures import LUNGS, STRUCTURES, further_structures

if TYPE_CHECKING:
    from raysegment.postprocess.ctr import CTR

PRED_COLOR = (255, 150, 0)  # orange: the model's prediction
TRUE_COLOR = (70, 180, 255)  # sky blue: the ground truth
# One Okabe-Ito colour per structure, all apart from the truth's sky blue: the lungs keep the prediction's
# orange, the heart (which borders the lungs) takes reddish purple: vermillion turns the same olive as the
# orange under red-green deficiencies (simulated), yellow hardly shows over the bright mediastinum. The
# clavicles (over the lung tops) take bluish green. Under red-green deficiencies the heart's outline comes
# close to the truth's blue; its fill (the truth is never filled) tells them apart.
STRUCTURE_COLORS: dict[str, tuple[int, int, int]] = {
    LUNGS: PRED_COLOR,
    "heart": (204, 121, 167),  # reddish purple
    "clavicles": (0, 158, 115),  # bluish green
}
SHADOW_COLOR = (0, 0, 0)  # under the CTR lines, so they read over bright bone and dark lung alike
TEXT_COLOR = (235, 235, 235)
BAR_COLOR = (32, 32, 32)  # title and caption bars
GAP_COLOR = (70, 70, 70)  # lines between panels
GAP = 4  # pixels between panels and tiles
TILE_HEIGHT = 384
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ----------------------------------------------------------------------------- basics
def to_rgb(image: np.ndarray) -> np.ndarray:
    """float HxW in [0, 1] / uint8 HxW / uint8 HxWx3 -> uint8 HxWx3."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image


def tile_size(height: int, width: int, tile_height: int = TILE_HEIGHT) -> tuple[int, int]:
    """(h, w) of a tile `tile_height` tall with the image's aspect ratio.

    Small images are enlarged too: every picture then has the same layout and readable text.
    """
    return tile_height, max(1, round(width * tile_height / height))


def _shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def _shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool HxW -> bool at `size`; area-averaged then thresholded, so thin parts do not vanish unevenly."""
    return _shrink(mask.astype(np.float32), size) >= 0.5


def _font_scale(height: int) -> float:
    return max(0.45, min(0.8, height / 700))


def bar_height(tile_height: int) -> int:
    """Height of the caption bar under tiles `tile_height` tall (the title bar is 1.2x that)."""
    return round(26 * _font_scale(tile_height) / 0.5)


def text_bar(width: int, text: str, height: int, scale: float, color=TEXT_COLOR) -> np.ndarray:
    """A dark bar (height, width, 3) with `text` left-aligned; shrunk or cut with '...' to fit."""
    bar = np.full((height, width, 3), BAR_COLOR, np.uint8)
    for _ in range(4):  # shrink the font a little before cutting the text
        (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
        if tw <= width - 8 or scale <= 0.35:
            break
        scale *= 0.85
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width - 8:
        text = text[:-4] + "..." if len(text) > 4 else ""
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(bar, text, (4, (height + th) // 2), FONT, scale, color, 1, cv2.LINE_AA)
    return bar


def _legend_bar(width: int, height: int, scale: float, with_truth: bool,
                structures: tuple[str, ...] | None = None) -> np.ndarray:
    """Caption of the overlay panel: a colour swatch before each name: "prediction" (and "truth") for a
    lungs-only picture (structures None), else "lungs" and each further structure's name (and "truth");
    then the font shrinks a little when the names do not fit."""
    bar = np.full((height, width, 3), BAR_COLOR, np.uint8)
    x, mid = 6, height // 2
    items = ([("prediction", PRED_COLOR)] if structures is None
             else [(STRUCTURES[n].label.lower(), STRUCTURE_COLORS[n]) for n in (LUNGS, *structures)])
    items += [("truth", TRUE_COLOR)] if with_truth else []
    if structures is not None:
        for _ in range(4):
            need = 6 + sum(24 + cv2.getTextSize(n, FONT, scale, 1)[0][0] + 14 for n, _ in items)
            if need <= width or scale <= 0.35:
                break
            scale *= 0.85
    for name, color in items:
        cv2.line(bar, (x, mid), (x + 18, mid), color, 3, cv2.LINE_AA)
        x += 24
        (tw, th), _ = cv2.getTextSize(name, FONT, scale, 1)
        cv2.putText(bar, name, (x, mid + th // 2), FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)
        x += tw + 14
    return bar


def _hstack(panels: list[np.ndarray]) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    gap = np.full((h, GAP, 3), GAP_COLOR, np.uint8)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.vstack([p, np.full((h - p.shape[0], p.shape[1], 3), BAR_COLOR, np.uint8)])
        out += [gap, p] if i else [p]
    return np.hstack(out)


# ----------------------------------------------------------------------------- drawings
def draw_outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int],
                 thickness: int = 2) -> np.ndarray:
    """Draw the outline(s) of bool mask (same HxW as rgb) onto rgb in place; holes are outlined too."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, color, thickness, cv2.LINE_AA)
    return rgb


def _ordered(structures: dict[str, np.ndarray] | None) -> tuple[str, ...]:
    """The further structures' names (not the lungs) in STRUCTURES order; ValueError for unknown ones."""
    return further_structures(structures or {})


def _scale_col(x: int, width: int, new_width: int) -> int:
    """A pixel column of the original image -> the column of its centre in the resized one."""
    return round((x + 0.5) * new_width / width - 0.5)


def _measure_line(rgb: np.ndarray, y: int, x0: int, x1: int, color, thickness: int) -> None:
    """A horizontal measurement line with end ticks, over a dark shadow, onto rgb in place."""
    tick = 3 * thickness
    for c, t in ((SHADOW_COLOR, thickness + 2), (color, thickness)):
        cv2.line(rgb, (x0, y), (x1, y), c, t, cv2.LINE_AA)
        for x in (x0, x1):
            cv2.line(rgb, (x, y - tick), (x, y + tick), c, t, cv2.LINE_AA)


def draw_ctr(rgb: np.ndarray, ctr: CTR, heart: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Draw the CTR's two widths onto rgb (an image of original size `shape`, resized) in place: the heart
    width between ctr.heart_cols at the heart's centre row (heart colour), the thoracic width between
    ctr.thorax_cols at ctr.thoracic_row (lung colour). Nothing when the CTR was not measurable."""
    if ctr.heart_cols is None or ctr.thorax_cols is None or ctr.thoracic_row is None:
        return rgb
    (h, w), (nh, nw) = shape, rgb.shape[:2]
    thickness = max(2, round(nh / 190))
    rows = np.flatnonzero(np.asarray(heart, dtype=bool).any(axis=1))
    heart_row = (rows[0] + rows[-1]) / 2 if rows.size else h / 2
    for row, (x0, x1), color in ((ctr.thoracic_row, ctr.thorax_cols, STRUCTURE_COLORS[LUNGS]),
                                 (heart_row, ctr.heart_cols, STRUCTURE_COLORS["heart"])):
        y = round((row + 0.5) * nh / h - 0.5)
        _measure_line(rgb, y, _scale_col(x0, w, nw), _scale_col(x1, w, nw), color, thickness)
    return rgb


def overlay(
    image: np.ndarray, true_mask: np.ndarray | None, pred_mask: np.ndarray, height: int = TILE_HEIGHT,
    fill: float = 0.25, structures: dict[str, np.ndarray] | None = None,
    true_structures: dict[str, np.ndarray] | None = None, ctr: CTR | None = None,
) -> np.ndarray:
    """X-ray with the prediction filled (alpha `fill`) and outlined in orange, the truth outlined in blue.

    image: float HxW in [0, 1] or uint8; masks: bool HxW. Returns uint8 (h, w, 3), h = min(H, height).
    structures: a multi-structure model's further predicted masks by name ("heart", "clavicles"; bool
    HxW), each filled and outlined in its STRUCTURE_COLORS colour over the lungs; true_structures: their
    truths, outlined in blue like the lungs'; ctr: the CTR measured on pred_mask and structures["heart"]
    (infer.ctr.measure_ctr), drawn as its two width lines. Without structures: the lungs-only picture.
    """
    if structures or true_structures or ctr is not None:
        return _overlay_structures(image, true_mask, pred_mask, height, fill, structures or {},
                                   true_structures or {}, ctr)
    size = tile_size(image.shape[0], image.shape[1], height)
    rgb = _shrink(to_rgb(image), size).copy()
    pred = _shrink_mask(pred_mask, size)
    if fill > 0 and pred.any():
        tint = np.array(PRED_COLOR, np.float32)
        rgb[pred] = np.round(rgb[pred] * (1 - fill) + tint * fill).astype(np.uint8)
    thickness = max(2, round(size[0] / 190))  # 2 px on 256 and 384 px tiles
    if true_mask is not None:
        draw_outline(rgb, _shrink_mask(true_mask, size), TRUE_COLOR, thickness)
    draw_outline(rgb, pred, PRED_COLOR, thickness)  # on top: the thing being judged
    return rgb


def _overlay_structures(image, true_mask, pred_mask, height, fill, structures, true_structures, ctr):
    """overlay() with further structures: every structure filled and outlined in its colour (lungs first,
    so the smaller heart and clavicles lie on top), all truths outlined in blue, then the CTR lines."""
    size = tile_size(image.shape[0], image.shape[1], height)
    rgb = _shrink(to_rgb(image), size).copy()
    names = (LUNGS, *_ordered(structures))
    preds = {n: _shrink_mask(pred_mask if n == LUNGS else structures[n], size) for n in names}
    if fill > 0:
        for n, m in preds.items():
            tint = np.array(STRUCTURE_COLORS[n], np.float32)
            rgb[m] = np.round(rgb[m] * (1 - fill) + tint * fill).astype(np.uint8)
    thickness = max(2, round(size[0] / 190))
    truths = {LUNGS: true_mask, **true_structures}
    for n in (LUNGS, *_ordered(true_structures)):
        if truths[n] is not None:
            draw_outline(rgb, _shrink_mask(truths[n], size), TRUE_COLOR, thickness)
    for n, m in preds.items():
        draw_outline(rgb, m, STRUCTURE_COLORS[n], thickness)
    if ctr is not None and "heart" in structures:
        draw_ctr(rgb, ctr, structures["heart"], image.shape[:2])
    return rgb


def mask_panel(mask: np.ndarray, structures: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Lungs + further structures -> uint8 RGB at `size`: each structure in its colour on black, the mean
    of the colours where structures overlap (clavicles over the lungs show as a blend)."""
    total = np.zeros((*size, 3), np.float32)
    count = np.zeros(size, np.float32)
    for n in (LUNGS, *_ordered(structures)):
        m = _shrink_mask(mask if n == LUNGS else structures[n], size)
        total[m] += STRUCTURE_COLORS[n]
        count[m] += 1
    return np.round(total / np.maximum(count, 1)[..., None]).astype(np.uint8)


def side_by_side(
    image: np.ndarray, true_mask: np.ndarray | None, pred_mask: np.ndarray, title: str = "",
    height: int = TILE_HEIGHT, structures: dict[str, np.ndarray] | None = None,
    true_structures: dict[str, np.ndarray] | None = None, ctr: CTR | None = None,
) -> np.ndarray:
    """X-ray | true mask | predicted mask | overlay, each captioned, under a title bar.

    image: float HxW in [0, 1] or uint8; masks: bool HxW (true_mask None: that panel is left out).
    Returns uint8 RGB: panels `height` pixels tall, a caption bar under each, the title bar on top.
    structures / true_structures / ctr: a multi-structure model's further masks, their truths and the
    CTR, as in overlay(); the mask panels then show each structure in its colour, and the legend names
    them. Without them: the lungs-only picture.
    """
    if pred_mask.shape != image.shape[:2] or (true_mask is not None and true_mask.shape != image.shape[:2]):
        raise ValueError(
            f"masks must match the image's HxW {image.shape[:2]}: pred {pred_mask.shape}, "
            f"truth {None if true_mask is None else true_mask.shape}"
        )
    if structures or true_structures or ctr is not None:
        return _side_by_side_structures(image, true_mask, pred_mask, title, height, structures or {},
                                        true_structures or {}, ctr)
    size = tile_size(image.shape[0], image.shape[1], height)
    scale, bar_h = _font_scale(size[0]), bar_height(size[0])

    def as_panel(mask: np.ndarray) -> np.ndarray:
        return to_rgb(_shrink_mask(mask, size).astype(np.uint8) * np.uint8(255))

    panels = [("X-ray", _shrink(to_rgb(image), size))]
    if true_mask is not None:
        panels.append(("true mask", as_panel(true_mask)))
    panels.append(("predicted mask", as_panel(pred_mask)))
    drawn = overlay(image, true_mask, pred_mask, height)
    columns = [np.vstack([p, text_bar(p.shape[1], name, bar_h, scale)]) for name, p in panels]
    columns.append(np.vstack([drawn, _legend_bar(drawn.shape[1], bar_h, scale, true_mask is not None)]))
    body = _hstack(columns)
    if not title:
        return body
    return np.vstack([text_bar(body.shape[1], title, round(bar_h * 1.2), scale * 1.15), body])


def _side_by_side_structures(image, true_mask, pred_mask, title, height, structures, true_structures, ctr):
    for what, masks in (("", structures), ("true ", true_structures)):
        bad = {n: m.shape for n, m in masks.items() if m.shape != image.shape[:2]}
        if bad:
            raise ValueError(f"masks must match the image's HxW {image.shape[:2]}: {what}{bad}")
    names = _ordered(structures)
    size = tile_size(image.shape[0], image.shape[1], height)
    scale, bar_h = _font_scale(size[0]), bar_height(size[0])
    has_truth = true_mask is not None or bool(true_structures)
    panels = [("X-ray", _shrink(to_rgb(image), size))]
    if has_truth:
        blank = np.zeros(image.shape[:2], bool)
        panels.append(("true masks", mask_panel(blank if true_mask is None else true_mask, true_structures,
                                                 size)))
    panels.append(("predicted masks", mask_panel(pred_mask, structures, size)))
    drawn = overlay(image, true_mask, pred_mask, height, structures=structures,
                    true_structures=true_structures, ctr=ctr)
    columns = [np.vstack([p, text_bar(p.shape[1], name, bar_h, scale)]) for name, p in panels]
    legend = _legend_bar(drawn.shape[1], bar_h, scale, has_truth, names)
    columns.append(np.vstack([drawn, legend]))
    body = _hstack(columns)
    if not title:
        return body
    return np.vstack([text_bar(body.shape[1], title, round(bar_h * 1.2), scale * 1.15), body])


def contact_sheet(tiles: list[np.ndarray], labels: list[str], cols: int = 4) -> np.ndarray:
    """Grid of tiles (uint8 RGB or gray, any sizes) with a label under each, `cols` per row.

    Tiles are shrunk to the height of the smallest one and centred in cells as wide as the widest.
    Returns uint8 RGB (rows * (cell_h + bar_height(cell_h) + GAP) + GAP, cols' * (cell_w + GAP) + GAP, 3),
    cols' = min(cols, n) (see contact_sheet_grid).
    """
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if len(labels) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(labels)} labels")
    cell_h = min(t.shape[0] for t in tiles)
    tiles = [_shrink(to_rgb(t), tile_size(t.shape[0], t.shape[1], cell_h)) for t in tiles]
    cell_w = max(t.shape[1] for t in tiles)
    scale, bar_h = _font_scale(cell_h), bar_height(cell_h)
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    shape = (rows * (cell_h + bar_h + GAP) + GAP, cols * (cell_w + GAP) + GAP, 3)
    sheet = np.full(shape, GAP_COLOR, np.uint8)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=False)):
        r, c = divmod(i, cols)
        y, x = GAP + r * (cell_h + bar_h + GAP), GAP + c * (cell_w + GAP)
        cell = np.full((cell_h, cell_w, 3), BAR_COLOR, np.uint8)
        left = (cell_w - tile.shape[1]) // 2
        cell[: tile.shape[0], left : left + tile.shape[1]] = tile
        sheet[y : y + cell_h, x : x + cell_w] = cell
        sheet[y + cell_h : y + cell_h + bar_h, x : x + cell_w] = text_bar(cell_w, label, bar_h, scale)
    return sheet


def contact_sheet_grid(n: int, cols: int) -> tuple[int, int]:
    """(rows, cols) that contact_sheet uses for n tiles."""
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols
