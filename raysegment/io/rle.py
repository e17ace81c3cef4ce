"""Compact masks: COCO-style compressed run-length encoding (the `mask_rle` results column).

A mask is read in column-major (Fortran) order, as COCO / pycocotools do, and cut into runs that
alternate background, foreground, background, ... starting with background (so the first count is 0
when the first pixel is foreground). The counts are written as pycocotools' compressed string
(`rleToString`): each count, minus the count two places before it from the third on, as a signed
LEB128-like sequence of 5-bit groups, each stored as chr(48 + group), with 0x20 meaning "more groups
follow". The string is plain ASCII (48..111), so it goes into a Parquet string column as it is.

The result equals pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
(a test checks it when pycocotools is installed) and decodes with pycocotools too, given
{"size": [height, width], "counts": text}. Here only numpy is needed:

    from raysegment.io.rle import decode_rle
    mask = decode_rle(row["mask_rle"], row["height"], row["width"])  # bool HxW
"""

from __future__ import annotations

import numpy as np


def run_lengths(mask: np.ndarray) -> np.ndarray:
    """bool HxW -> int64 run lengths over the column-major pixels, starting with a background run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds)
    return np.concatenate([[0], counts]) if flat[0] else counts


def counts_to_string(counts: np.ndarray) -> str:
    """pycocotools' rleToString: run lengths -> compressed ASCII string."""
    out = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(text: str) -> np.ndarray:
    """pycocotools' rleFrString: compressed ASCII string -> run lengths."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, np.int64)


def encode_rle(mask: np.ndarray) -> str:
    """bool (or 0/1) HxW mask -> COCO compressed RLE string (column-major)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    return counts_to_string(run_lengths(mask.astype(bool, copy=False)))


def decode_rle(text: str, height: int, width: int) -> np.ndarray:
    """COCO compressed RLE string + size -> bool HxW mask. Raises ValueError when they disagree."""
    counts = string_to_counts(text)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE covers {int(counts.sum())} pixels, not {height}x{width} = {height * width}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")
