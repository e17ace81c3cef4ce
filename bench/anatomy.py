"""Anatomy model figures (issue #15): per-structure dice and the CTR on JSRT's test split, the cross-source
check on Montgomery's test split, and leave-one-source-out, all scored as `raysegment evaluate` scores.

    python bench/anatomy.py --anatomy runs/anatomy-cpu/best \\
        --montgomery-model runs/montgomery-cpu/best --jsrt-model runs/jsrt-lungs-cpu/best \\
        [--montgomery ../shared/data/montgomery_512] [--jsrt ../shared/data/jsrt_512] \\
        [--out bench/results/anatomy.json]

--anatomy: a lungs + heart + clavicles checkpoint trained on Montgomery + JSRT (configs/anatomy-cpu.yaml);
its run's split_manifest.csv gives each source's test split (each source is split on its own, so these are
the same images a run on that source alone tests on; evaluating the lungs-only model on that manifest
warns that its split differs: expected, the images are the same). --montgomery-model / --jsrt-model:
lungs-only checkpoints trained on one source (configs/montgomery-cpu.yaml with --data on each).

  1. JSRT test split: lung, heart and clavicle dice; CTR from the predicted masks vs CTR from the expert
     masks (the same rule, postprocess/ctr.py): mean absolute difference.
  2. Cross-source: the anatomy model's lung dice on Montgomery's test split against the lungs-only
     Montgomery model's on the SAME images: mean of the paired per-image difference, with a 95% interval.
  3. Leave-one-source-out, both ways: the Montgomery model on every JSRT film, the JSRT model on every
     Montgomery film (lungs; neither saw the other source).
Prints a table, writes JSON and, beside it, a scatter plot of predicted vs expert CTR (*_ctr.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from raysegment.evaluation.evaluate import evaluate

TARGETS = {"jsrt_lungs": 0.97, "jsrt_heart": 0.90, "jsrt_clavicles": 0.80, "ctr_mae": 0.02,
           "montgomery_paired_diff": -0.01}


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def paired(a: dict[str, float], b: dict[str, float]) -> dict:
    """Mean of a - b over the ids both have, its sd and a 95% t interval (normal quantile beyond 30)."""
    ids = sorted(set(a) & set(b))
    d = np.array([a[i] - b[i] for i in ids])
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    t = {5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 12: 2.201, 15: 2.145, 20: 2.093}
    q = next((v for k, v in sorted(t.items()) if n - 1 <= k), 1.96) if n > 1 else float("nan")
    half = q * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": float(d.mean()), "sd": sd,
            "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "min": float(d.min()), "max": float(d.max())}


def ctr_scatter(rows: list[dict], path: str) -> None:
    """Predicted vs expert CTR per film, with the identity line and the 0.5 cardiomegaly cut-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["truth_ctr"], r["ctr"]) for r in rows if r.get("ctr") is not None and r.get("truth_ctr")]
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    lo = min(min(p) for p in pts) - 0.03
    hi = max(max(p) for p in pts) + 0.03
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, label="identity")
    ax.axvline(0.5, color="0.85", lw=1, ls="--")
    ax.axhline(0.5, color="0.85", lw=1, ls="--")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color="#0072B2")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="CTR from the expert masks",
           ylabel="CTR from the predicted masks", title=f"JSRT test split ({len(pts)} films)")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anatomy", required=True)
    p.add_argument("--montgomery-model", required=True)
    p.add_argument("--jsrt-model", required=True)
    p.add_argument("--montgomery", default="../shared/data/montgomery_512")
    p.add_argument("--jsrt", default="../shared/data/jsrt_512")
    p.add_argument("--out", default="bench/results/anatomy.json")
    args = p.parse_args()
    t0 = time.perf_counter()

    manifest = os.path.join(os.path.dirname(args.anatomy.rstrip("/")), "split_manifest.csv")
    anatomy = evaluate(args.anatomy, manifest, "test")
    rows = [r for r in anatomy.flat_rows() if r["status"] == "ok"]  # heart_dice, clavicles_dice columns
    jsrt = [r for r in rows if r.get("source") == "jsrt"]
    mont = {r["image_id"]: r["dice"] for r in rows if r.get("source") == "montgomery"}
    diffs = [r["ctr_abs_diff"] for r in jsrt if r.get("ctr_abs_diff") is not None]
    keep = ("image_id", "dice", "heart_dice", "clavicles_dice", "ctr", "truth_ctr", "ctr_abs_diff")
    out = {"anatomy": args.anatomy, "jsrt_test": {
        "n": len(jsrt), "lungs": _mean(r["dice"] for r in jsrt),
        "heart": _mean(r["heart_dice"] for r in jsrt),
        "clavicles": _mean(r["clavicles_dice"] for r in jsrt),
        "ctr_mae": _mean(diffs), "ctr_abs_diff_max": max(diffs) if diffs else None,
        "ctr_measured": len(diffs), "ctr_predicted_mean": _mean(r["ctr"] for r in jsrt),
        "ctr_expert_mean": _mean(r["truth_ctr"] for r in jsrt),
        "per_image": [{k: r.get(k) for k in keep} for r in jsrt]}}

    # 2. The same Montgomery test images, scored with the lungs-only Montgomery model.
    lungs_only = evaluate(args.montgomery_model, manifest, "test")
    base = {r["image_id"]: r["dice"] for r in lungs_only.rows
            if r["status"] == "ok" and r.get("source") == "montgomery"}
    out["montgomery_test"] = {"anatomy": _mean(mont.values()), "lungs_only": _mean(base.values()),
                              "paired_diff": paired(mont, base)}

    # 3. Leave one source out: train on one, score every image of the other (lungs).
    loso = {}
    for name, model, data in (("montgomery->jsrt", args.montgomery_model, args.jsrt),
                              ("jsrt->montgomery", args.jsrt_model, args.montgomery)):
        e = evaluate(model, data, "all")
        dice = [r["dice"] for r in e.rows if r["status"] == "ok" and r.get("dice") is not None]
        loso[name] = {"n": len(dice), "mean": _mean(dice), "median": float(np.median(dice)),
                      "min": float(np.min(dice))}
    # ... and each lungs-only model at home (its own test split) for reference
    for name, model in (("montgomery->montgomery test", args.montgomery_model),
                        ("jsrt->jsrt test", args.jsrt_model)):
        e = evaluate(model, None, "test")
        dice = [r["dice"] for r in e.rows if r["status"] == "ok" and r.get("dice") is not None]
        loso[name] = {"n": len(dice), "mean": _mean(dice), "median": float(np.median(dice)),
                      "min": float(np.min(dice))}
    out["leave_one_source_out"] = loso
    out["targets"] = TARGETS
    out["wall_s"] = round(time.perf_counter() - t0, 1)

    j, m = out["jsrt_test"], out["montgomery_test"]
    print(f"JSRT test split ({j['n']} films), anatomy model:")
    print(f"  {'structure':<10} {'dice':>7}  target")
    for s, target in (("lungs", 0.97), ("heart", 0.90), ("clavicles", 0.80)):
        print(f"  {s:<10} {j[s]:7.4f}  >= {target}")
    print(f"  CTR |predicted - expert|: mean {j['ctr_mae']:.4f} (target <= 0.02), "
          f"max {j['ctr_abs_diff_max']:.4f}, {j['ctr_measured']}/{j['n']} measured; "
          f"mean CTR predicted {j['ctr_predicted_mean']:.3f}, "
          f"expert {j['ctr_expert_mean']:.3f}")
    d = m["paired_diff"]
    print(f"Montgomery test split ({d['n']} films): lung dice anatomy {m['anatomy']:.4f} vs lungs-only "
          f"{m['lungs_only']:.4f}; paired difference {d['mean']:+.4f} (95% CI {d['ci95'][0]:+.4f} .. "
          f"{d['ci95'][1]:+.4f}; target: within 0.01)")
    print("Leave one source out (lungs-only models, lung dice):")
    print(f"  {'trained -> scored':<28} {'n':>4} {'mean':>7} {'median':>7} {'min':>7}")
    for name, v in loso.items():
        print(f"  {name:<28} {v['n']:>4} {v['mean']:7.4f} {v['median']:7.4f} {v['min']:7.4f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if j["ctr_measured"]:
        ctr_scatter(jsrt, os.path.splitext(args.out)[0] + "_ctr.png")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
