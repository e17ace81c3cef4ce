"""How well QC finds the bad masks: quality_score and qc_flag against the real dice, in and across sites.

    python bench/qc_quality.py --checkpoint RUN_DIR/best [--jsrt ../shared/data/jsrt_512] [--phantoms 40]
        [--candidates] [--out bench/results/qc_quality.json]

The checkpoint must carry a calibration (`raysegment calibrate --checkpoint RUN_DIR/best`: fitted on the
validation split and shifted copies of it only). Scored sets, each unshifted and under every shift of
raysegment.evaluation.shifts.ISSUE_SHIFTS (rotation 90/180, central 50% crop, zoom out 0.6, gamma 0.4/2.5,
contrast x0.25, noise 0.1, blur 4 px, white block 25%, half the film cut away, inverted):
  - montgomery test: the run's test split (RUN_DIR/split_manifest.csv);
  - jsrt: every film of another hospital's set (cross-site; the model never saw it);
  - phantoms: synthetic phantoms (raysegment.data.synth).
Each image is predicted exactly as `raysegment infer` does it; its quality_score, qc_flag and real dice
(against the equally shifted expert mask) are recorded. Targets (issue #12), per set: Spearman >= 0.6;
of the masks with dice < 0.85 at least 80% flagged; of those with dice >= 0.95 at most 10% flagged.
Writes a scatter plot (predicted vs real dice) per set beside the JSON. Also timed: the quality score's
cost against the forward + postprocess of the same image (one thread).

--candidates also reproduces the choice of method: twelve candidate scores (single features, TTA agreement,
regressions over many features) fitted on the same validation samples as `raysegment calibrate`, compared
by grouped cross-validation on them and by the scored sets. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np

from raysegment.data.datasets import discover, load_pair, load_split_dataset
from raysegment.data.preprocess import preprocess_image
from raysegment.data.synth import make_phantom
from raysegment.evaluation.calibrate import (
    DEFAULT_COPIES,
    choose_threshold,
    fit_logistic,
)
from raysegment.evaluation.qc_report import format_qc_report, qc_report, scatter_png
from raysegment.evaluation.shifts import ISSUE_SHIFTS, random_shift
from raysegment.model.checkpoint import load_model
from raysegment.model.forward import forward_probabilities
from raysegment.postprocess.masks import PostprocessConfig, postprocess, qc_reasons, split_reasons
from raysegment.postprocess.metrics import image_metrics
from raysegment.postprocess.quality import References, load_calibration, shape_descriptor

TARGETS = {"spearman": 0.6, "bad_found": 0.80, "good_flagged": 0.10}


def variants(images: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(shift name, image index, image, mask) for every image unshifted and under every ISSUE_SHIFT."""
    out = []
    for k, (image, mask) in enumerate(images):
        out.append(("none", k, image, mask))
        out += [(name, k, *fn(image, mask)) for name, fn in ISSUE_SHIFTS.items()]
    return out


def _tta_agreement(loaded, model_input: np.ndarray, prob: np.ndarray, threshold: float) -> float:
    """Candidate (heavy: a second forward): dice between the mask and the mask of a zoomed/shifted input."""
    s = model_input.shape[0]
    matrix = np.float32([[0.92, 0, 0.06 * s], [0, 0.92, 0.06 * s]])
    second = forward_probabilities(loaded.model, cv2.warpAffine(model_input, matrix, (s, s))[None])[0]
    back = cv2.warpAffine(second, cv2.invertAffineTransform(matrix), (s, s))
    a, b = prob > threshold * 255, back > threshold * 255
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def candidate_features(loaded, model_input, prob, seg, threshold: float, refs: References,
                       atlas: np.ndarray, exclude: int | None) -> dict[str, float]:
    """Every candidate feature of one prediction (the product computes only the chosen two)."""
    p = prob.astype(np.float32) / 255
    m = p > threshold
    area, total = float(m.sum()), float(p.sum())
    mask = seg.mask
    big, small = max(seg.right_area_px, seg.left_area_px), min(seg.right_area_px, seg.left_area_px)

    def best(d, r):
        dice = 2 * (r * d).sum(axis=(1, 2)) / np.maximum(r.sum(axis=(1, 2)) + d.sum(), 1e-6)
        return float(np.delete(dice, exclude).max() if exclude is not None else dice.max())

    full = cv2.resize(mask.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    return {
        "mean_confidence": seg.mean_confidence if np.isfinite(seg.mean_confidence) else 0.0,
        "soft_dice": 2 * float(p[m].sum()) / (total + area) if total + area else 0.0,
        "ambiguous": min(float(((prob > 25) & (prob < 230)).sum()) / max(area, 1.0), 5.0),
        "lung_fraction": seg.fraction,
        "balance": small / big if big else 0.0,
        "log_components": float(np.log1p(seg.n_components)),
        "shape_match": best(shape_descriptor(mask), refs.shape),
        "atlas_match": best(full, atlas),
        "tta_agreement": _tta_agreement(loaded, model_input, prob, threshold),
    }


def score_samples(loaded, calibration, samples, candidates: bool = False, refs=None, atlas=None,
                  exclude=None) -> dict[str, list]:
    """Predict every (name, index, image, mask) sample as infer does; quality, flags, dice, timings."""
    post, threshold = PostprocessConfig(), loaded.spec.threshold
    out = {k: [] for k in ("shift", "index", "dice", "quality", "flagged", "reasons", "base_ms", "quality_ms",
                           "features")}
    for j, (name, k, image, mask) in enumerate(samples):
        t0 = time.perf_counter()
        model_input, geo = preprocess_image(image.astype(np.float32, copy=False), loaded.spec.preprocess)
        prob = forward_probabilities(loaded.model, model_input[None])[0]
        seg = postprocess(prob, geo, threshold, post)
        t1 = time.perf_counter()
        quality = calibration.score(seg)
        flags, _ = split_reasons(qc_reasons(seg, post, quality, calibration.threshold))
        t2 = time.perf_counter()
        out["shift"].append(name)
        out["index"].append(k)
        out["dice"].append(image_metrics(seg.mask, mask, with_hd95=False)["dice"])
        out["quality"].append(quality)
        out["flagged"].append(bool(flags))
        out["reasons"].append(flags)
        out["base_ms"].append((t1 - t0) * 1000)
        out["quality_ms"].append((t2 - t1) * 1000)
        if candidates:
            out["features"].append(candidate_features(loaded, model_input, prob, seg, threshold, refs, atlas,
                                                      None if exclude is None else exclude[j]))
    return out


def targets(report: dict) -> dict:
    bad = report["flag_table"][0]["found_qc_flag"]
    good = report["good"]["flagged_qc_flag"]
    return {"spearman": report["spearman"] is not None and report["spearman"] >= TARGETS["spearman"],
            "bad_found": bad is None or bad >= TARGETS["bad_found"],
            "good_flagged": good is None or good <= TARGETS["good_flagged"]}


def summarize_set(name: str, scored: dict, threshold: float) -> dict:
    dice, quality, flagged = (np.array(scored[k]) for k in ("dice", "quality", "flagged"))
    shifts = np.array(scored["shift"])
    full = qc_report(dice, quality, flagged, threshold)
    unshifted = qc_report(dice[shifts == "none"], quality[shifts == "none"], flagged[shifts == "none"],
                          threshold)
    per_shift = {s: {"n": int((shifts == s).sum()), "dice": float(dice[shifts == s].mean()),
                     "quality": float(quality[shifts == s].mean()),
                     "flagged": float(flagged[shifts == s].mean())}
                 for s in dict.fromkeys(scored["shift"])}
    base, extra = float(np.median(scored["base_ms"])), float(np.median(scored["quality_ms"]))
    return {"set": name, "samples": len(dice), "all": full, "targets": targets(full), "unshifted": unshifted,
            "per_shift": per_shift, "cost": {"forward_postprocess_ms": base, "quality_ms": extra,
                                             "added_share": extra / base}}


# --- candidates (--candidates) ---------------------------------------------------------------------

def _cv_and_holdout(fit_x, fit_y, groups, sets, fitter) -> dict:
    """Grouped CV (one validation image and its shifted copies out at a time) on the fit samples, and
    the model fitted on all of them applied to each scored set (threshold chosen on the fit, as calibrate
    does)."""
    from scipy.stats import spearmanr

    cv = np.zeros_like(fit_y)
    for g in np.unique(groups):
        cv[groups == g] = fitter(fit_x[groups != g], fit_y[groups != g])(fit_x[groups == g])
    model = fitter(fit_x, fit_y)
    threshold = choose_threshold(model(fit_x), fit_y)

    def stats(p, y, t):
        return {"spearman": float(spearmanr(p, y).statistic), "mae": float(np.abs(p - y).mean()),
                "bad_found": float((p[y < 0.85] < t).mean()) if (y < 0.85).any() else None,
                "good_flagged": float((p[y >= 0.95] < t).mean()) if (y >= 0.95).any() else None}

    return {"cv": stats(cv, fit_y, choose_threshold(cv, fit_y)),
            **{name: stats(model(x), y, threshold) for name, (x, y) in sets.items()}}


def _logistic(x, y):
    mean, scale, coef, intercept = fit_logistic(x, y)
    return lambda z: 1 / (1 + np.exp(-(((z - mean) / scale) @ coef + intercept)))


def _ridge(x, y, alpha: float = 1.0):
    mean, scale = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return lambda q: np.clip(((q - mean) / scale) @ coef + y.mean(), 0, 1)


def compare_candidates(fit: dict, sets: dict[str, dict]) -> dict:
    names = list(fit["features"][0])
    def as_x(s, cols):
        return np.array([[f[c] for c in cols] for f in s["features"]])

    groups = np.array(fit["index"])
    models = {f"{c} alone": ([c], _logistic) for c in ("mean_confidence", "soft_dice", "shape_match",
                                                         "atlas_match", "tta_agreement")}
    models.update({
        "mean_confidence + shape_match (chosen)": (["mean_confidence", "shape_match"], _logistic),
        "+ soft_dice": (["mean_confidence", "shape_match", "soft_dice"], _logistic),
        "+ atlas_match": (["mean_confidence", "shape_match", "atlas_match"], _logistic),
        "uncertainty (confidence, soft dice, ambiguous)": (["mean_confidence", "soft_dice", "ambiguous"],
                                                           _logistic),
        "all but TTA, logistic": ([n for n in names if n != "tta_agreement"], _logistic),
        "all but TTA, ridge": ([n for n in names if n != "tta_agreement"], _ridge),
        "all + TTA (heavy), logistic": (names, _logistic),
    })
    out = {}
    for label, (cols, fitter) in models.items():
        out[label] = _cv_and_holdout(as_x(fit, cols), np.array(fit["dice"]), groups,
                                     {n: (as_x(s, cols), np.array(s["dice"])) for n, s in sets.items()},
                                     fitter)
    return out


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None, help="split manifest (default: beside the checkpoint)")
    parser.add_argument("--jsrt", default="../shared/data/jsrt_512", help="another site's labelled films")
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--limit-jsrt", type=int, default=None, help="only every k-th JSRT film, this many")
    parser.add_argument("--candidates", action="store_true", help="also compare the candidate methods")
    parser.add_argument("--out", default="bench/results/qc_quality.json")
    args = parser.parse_args()
    t_start = time.perf_counter()
    loaded = load_model(args.checkpoint)
    calibration = load_calibration(args.checkpoint, loaded.model_id)
    if calibration is None:
        raise SystemExit(f"{args.checkpoint} has no calibration: run `raysegment calibrate --checkpoint "
                         f"{args.checkpoint}` first")
    data = args.data or os.path.join(os.path.dirname(args.checkpoint.rstrip("/")), "split_manifest.csv")
    split = load_split_dataset(data)
    sets = {"montgomery test": [load_pair(p) for p in sorted(split.pairs("test"), key=lambda p: p.image_id)]}
    if os.path.isdir(args.jsrt):
        pairs = discover(args.jsrt).pairs
        if args.limit_jsrt:
            pairs = pairs[:: max(1, len(pairs) // args.limit_jsrt)][: args.limit_jsrt]
        sets["jsrt (cross-site)"] = [load_pair(p) for p in pairs]
    else:
        print(f"note: no {args.jsrt}: the cross-site set is skipped (pass --jsrt)")
    if args.phantoms:
        sets["phantoms"] = [(p.image.astype(np.float32) / 255, p.mask)
                            for p in (make_phantom(7, i, 512) for i in range(args.phantoms))]

    val_masks = [load_pair(p) for p in sorted(split.pairs("val"), key=lambda p: p.image_id)]
    refs = References.from_masks([m for _, m in val_masks])
    atlas = np.stack([cv2.resize(m.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
                      for _, m in val_masks])
    results: dict = {"checkpoint": args.checkpoint, "model_id": loaded.model_id,
                     "calibration_id": calibration.calibration_id, "threshold": calibration.threshold,
                     "calibration": calibration.fitted_on, "targets": TARGETS, "sets": {}}
    scored_sets = {}
    for name, images in sets.items():
        scored = score_samples(loaded, calibration, variants(images), args.candidates, refs, atlas)
        scored_sets[name] = scored
        results["sets"][name] = summarize_set(name, scored, calibration.threshold)
        results["sets"][name]["images"] = len(images)
        print_set(results["sets"][name])
        png = os.path.splitext(args.out)[0] + f"_{name.split()[0]}.png"  # predicted vs real dice
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        with open(png, "wb") as f:
            f.write(scatter_png(scored["dice"], scored["quality"], scored["flagged"], calibration.threshold,
                                f"{name}: {len(images)} images x {1 + len(ISSUE_SHIFTS)} variants"))
    if args.candidates:
        # The calibration's own fit samples: val images + DEFAULT_COPIES random shifts each, seed 0.
        rng = np.random.default_rng(0)
        fit_samples, owners = [], []
        for k, (image, mask) in enumerate(val_masks):
            fit_samples.append(("none", k, image, mask))
            for _ in range(DEFAULT_COPIES):
                name, fn = random_shift(rng)
                fit_samples.append((name, k, *fn(image, mask)))
            owners += [k] * (DEFAULT_COPIES + 1)
        fit = score_samples(loaded, calibration, fit_samples, True, refs, atlas, owners)
        results["candidates"] = compare_candidates(fit, scored_sets)
        print_candidates(results["candidates"])
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out} ({results['seconds']} s)")


def print_set(s: dict) -> None:
    t = s["targets"]
    print(f"\n== {s['set']}: {s['images']} images x {1 + len(ISSUE_SHIFTS)} variants = "
          f"{s['samples']} samples ==")
    print(format_qc_report(s["all"]))
    print("targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}" for k, v in t.items()))
    print("unshifted only: " + format_qc_report(s["unshifted"]).splitlines()[0])
    print(f"  {'shift':<18}{'n':>5}{'mean dice':>11}{'mean quality':>14}{'flagged':>9}")
    for name, r in s["per_shift"].items():
        print(f"  {name:<18}{r['n']:>5}{r['dice']:>11.3f}{r['quality']:>14.3f}{100 * r['flagged']:>8.0f}%")
    c = s["cost"]
    print(f"cost per image: forward + postprocess {c['forward_postprocess_ms']:.1f} ms, quality score "
          f"{c['quality_ms']:.2f} ms (+{100 * c['added_share']:.1f}%)")


def print_candidates(c: dict) -> None:
    columns = list(next(iter(c.values())))
    print("\n== candidate quality scores: Spearman / bad found / good flagged "
          "(threshold chosen on the fit) ==")
    print(f"{'candidate':<48}" + "".join(f"{k[:24]:>26}" for k in columns))

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"

    for label, r in c.items():
        cells = []
        for k in columns:
            s = r[k]
            cells.append(f"{s['spearman']:.3f} / {pct(s['bad_found'])} / {pct(s['good_flagged'])}")
        print(f"{label:<48}" + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
