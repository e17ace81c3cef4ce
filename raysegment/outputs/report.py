"""THE text form of a results summary (results.summarize_results), for infer, evaluate, train and the demo.

Each command prints its own one-line header (what ran, where, how fast) and then `format_summary`:
counts, errors by reason with examples, QC, and, with ground truth, one table of the metrics (mean, sd,
median, min, max, n) plus micro dice.
"""

from __future__ import annotations

import math

REPORT_METRICS = ("dice", "iou", "precision", "recall", "hd95", "hd95_mm")


def metrics_table(metrics: dict, names: tuple[str, ...] = REPORT_METRICS) -> list[str]:
    """The metric rows of summarize_results()["metrics"] as aligned text lines."""
    lines = [f"  {'metric':<10}{'mean':>9}{'sd':>9}{'median':>9}{'min':>9}{'max':>9}{'n':>6}"]
    for name in names:
        s = metrics.get(name)
        if not s or not s.get("n"):
            continue  # e.g. hd95_mm without pixel spacing
        stats = "".join(f"{_num(s.get(k)):>9}" for k in ("mean", "sd", "median", "min", "max"))
        lines.append(f"  {name:<10}{stats}{s['n']:>6}")
    return lines


def _num(value) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def format_structures(s: dict) -> list[str]:
    """Lines for a multi-structure model's summary: dice per structure, the CTR, its agreement with the
    expert masks' CTR and lung dice per source (evaluate); nothing for a lungs-only summary."""
    lines = []
    if s.get("structure_dice"):
        parts = [f"{name} {_num(d.get('mean'))} (n {d.get('n', 0)})"
                 for name, d in s["structure_dice"].items()]
        lines.append("  dice per structure (mean over the images whose truth labels it): " + ", ".join(parts))
    agreement = s.get("ctr_agreement")
    if agreement:
        p, e, d = agreement["predicted"], agreement["expert"], agreement["abs_diff"]
        lines.append(f"  CTR: predicted mean {_num(p.get('mean'))}, expert mean {_num(e.get('mean'))}; "
                     f"|predicted - expert| mean {_num(d.get('mean'))}, max {_num(d.get('max'))} over "
                     f"{d.get('n', 0)} images; {agreement['not_measurable']} not measurable")
    elif s.get("ctr") and s["ctr"].get("n"):
        c = s["ctr"]
        lines.append(f"  CTR: median {_num(c['median'])} (min {_num(c['min'])}, max {_num(c['max'])}) over "
                     f"{c['n']} images")
    for source, per in (s.get("sources") or {}).items():
        lines.append(f"  source {source}: " + ", ".join(f"{n} dice {_num(d.get('mean'))} (n {d['n']})"
                                                        for n, d in per.items() if d.get("n")))
    return lines


def format_skipped(counts: dict[str, int], examples: list[str]) -> str:
    """The files a listing passed over by name, as one line: "  skipped 9: hidden 4, os-clutter 3, output 2
    (e.g. .DS_Store, ._a.png, .git/ (12 files)); every path is in the log"; "" when none."""
    total = sum(counts.values())
    if not total:
        return ""
    shown = f" (e.g. {', '.join(examples)})" if examples else ""
    return (f"  skipped {total}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + shown
            + "; every path is in the log")


def format_summary(s: dict, worst: list[dict] | None = None, micro: bool = True) -> str:
    """A summarize_results() dict (plus optional worst cases: image_id, dice, iou, hd95, qc_reasons).

    `micro=False` leaves out the pooled-pixel dice (the demo prints one test dice)."""
    qc = ", ".join(f"{k} x{v}" for k, v in s["qc_reasons"].items())
    passed = f", {s['skipped_files']} skipped (not chest films)" if s.get("skipped_files") else ""
    lines = [f"  {s['images']} images: {s['ok']} ok, {s['errors']} errors{passed}; QC flagged "
             f"{s['qc_flagged']}" + (f" ({qc})" if qc else "")]
    if s["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} x{v}" for k, v in s["errors_by_reason"].items()))
        lines += [f"    {e}" for e in s["error_examples"]]
    if s.get("skipped_by_reason"):
        lines.append("  skipped: " + ", ".join(f"{k} x{v}" for k, v in s["skipped_by_reason"].items()))
        lines += [f"    {e}" for e in s.get("skipped_examples") or []]
    if s.get("quality_scored"):
        q = s["quality_score"]
        lines.append(f"  quality_score (predicted dice): median {q['median']:.3f}, min {q['min']:.3f} over "
                     f"{s['quality_scored']} images; {s['quality_flagged']} below the threshold")
    m = s.get("metrics")
    if m:
        extra = [f"{m[k]} {label}" for k, label in (("n_without_truth", "without ground truth"),
                                                    ("truth_errors", "with unreadable ground truth")) if m[k]]
        lines.append(f"  vs ground truth, at the original resolution ({m['n_scored']} images scored"
                     + "".join(f", {e}" for e in extra) + "):")
        lines += metrics_table(m)
        if micro:
            lines.append(f"  micro dice (pixels pooled over images): {_num(m['micro_dice'])}")
    lines += format_structures(s)
    if worst:
        lines.append(f"  worst {len(worst)} by dice:")
        for w in worst:
            qc = f"  QC: {', '.join(w['qc_reasons'])}" if w.get("qc_reasons") else ""
            lines.append(f"    {w['image_id']:<32} dice {_num(w['dice'])}  iou {_num(w['iou'])}  "
                         f"hd95 {_num(w['hd95'])} px{qc}")
    return "\n".join(lines)
