"""How well QC finds the bad masks on a labelled set: quality_score against the real dice, and the flags.

Used by `raysegment evaluate` (summary.json "qc", a text table, qc_scatter.png) and bench/qc_quality.py.
"""

from __future__ import annotations

import numpy as np

BAD_DICE = (0.85, 0.90)  # "bad mask" cut-offs of the flag table
GOOD_DICE = 0.95  # masks that should not be flagged


def _share(mask: np.ndarray, of: np.ndarray) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def qc_report(dice, quality, flagged, quality_threshold: float | None = None) -> dict:
    """Correlation of quality_score with dice, and which bad masks the flags find.

    dice, quality (None/NaN where missing), flagged (qc_flag): per image. Spearman / Pearson / MAE use the
    images that have both a dice and a quality_score. The flag table, per dice cut-off c: how many images
    have dice < c, the share of them flagged by qc_flag ("found") and by quality_score < threshold alone;
    and the share of good masks (dice >= GOOD_DICE) flagged ("false flags").
    """
    from scipy.stats import pearsonr, spearmanr

    dice = np.array([np.nan if v is None else v for v in dice], dtype=np.float64)
    quality = np.array([np.nan if v is None else v for v in quality], dtype=np.float64)
    flagged = np.array([bool(v) for v in flagged])
    both = np.isfinite(dice) & np.isfinite(quality)
    out: dict = {"n": int(np.isfinite(dice).sum()), "n_quality": int(both.sum()),
                 "threshold": quality_threshold, "spearman": None, "pearson": None, "mae": None}
    if both.sum() >= 3 and np.ptp(quality[both]) > 0 and np.ptp(dice[both]) > 0:
        out.update(spearman=float(spearmanr(quality[both], dice[both]).statistic),
                   pearson=float(pearsonr(quality[both], dice[both]).statistic))
    if both.any():
        out["mae"] = float(np.abs(quality[both] - dice[both]).mean())
    low = quality < quality_threshold if quality_threshold is not None else np.zeros_like(flagged)
    scored = np.isfinite(dice)
    rows = []
    for cut in BAD_DICE:
        bad = scored & (dice < cut)
        rows.append({"dice_below": cut, "images": int(bad.sum()), "found_qc_flag": _share(flagged, bad),
                     "found_quality_score": _share(low, bad & np.isfinite(quality))})
    good = scored & (dice >= GOOD_DICE)
    out["flag_table"] = rows
    out["good"] = {"dice_at_least": GOOD_DICE, "images": int(good.sum()),
                   "flagged_qc_flag": _share(flagged, good),
                   "flagged_quality_score": _share(low, good & np.isfinite(quality))}
    out["flagged"] = int(flagged[scored].sum())
    return out


def format_qc_report(r: dict) -> str:
    """The report as a few lines of text."""

    def pct(v):
        return "   -" if v is None else f"{100 * v:3.0f}%"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [(f"quality_score vs dice ({r['n_quality']} images): Spearman {num(r['spearman'])}, "
              f"Pearson {num(r['pearson'])}, MAE {num(r['mae'])}; threshold {num(r['threshold'])}; "
              f"{r['flagged']} of {r['n']} images QC-flagged"),
             f"  {'masks':<14}{'images':>7}{'found by qc_flag':>18}{'by quality_score':>18}"]
    for row in r["flag_table"]:
        lines.append(f"  {'dice < ' + format(row['dice_below'], '.2f'):<14}{row['images']:>7}"
                     f"{pct(row['found_qc_flag']):>18}{pct(row['found_quality_score']):>18}")
    g = r["good"]
    lines.append(f"  {'dice >= ' + format(g['dice_at_least'], '.2f'):<14}{g['images']:>7}"
                 f"{pct(g['flagged_qc_flag']):>18}{pct(g['flagged_quality_score']):>18}"
                 "  (flagged: should be few)")
    return "\n".join(lines)


def scatter_png(dice, quality, flagged, quality_threshold: float | None = None, title: str = "") -> bytes:
    """PNG bytes: predicted (quality_score) vs real dice, flagged images in orange, the threshold dashed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = np.array([np.nan if v is None else v for v in dice], dtype=np.float64)
    quality = np.array([np.nan if v is None else v for v in quality], dtype=np.float64)
    flagged = np.array([bool(v) for v in flagged])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for sel, color, label in ((~flagged, "tab:blue", "not flagged"), (flagged, "tab:orange", "QC-flagged")):
        ax.scatter(dice[sel], quality[sel], s=12, c=color, alpha=0.7, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    if quality_threshold is not None:
        ax.axhline(quality_threshold, color="tab:orange", ls="--", lw=0.8,
                   label=f"threshold {quality_threshold:.2f}")
    ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="real dice", ylabel="quality_score (predicted dice)",
           title=title or "QC: predicted vs real dice")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
