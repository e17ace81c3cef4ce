"""The reference model's selection (issue #21): leave-one-source-out screening of a training recipe.

    python bench/reference.py --stage loso --name 256-eq --set preprocess.size=256 \\
        --set preprocess.normalize=equalize [--set augment.opacity_p=0.5] [--epochs 25] \\
        [--runs /work/runs] [--out bench/results/reference_loso_256-eq.json]

For each direction (Montgomery -> JSRT, JSRT -> Montgomery) it trains the lungs-only recipe
(configs/montgomery-cpu.yaml plus the --set overrides) on ONE source (its own train split; its val split
picks the checkpoint), then scores every film of the OTHER source as `raysegment evaluate --split all`
does (lungs; the model never saw that source). Each training is a Ray Train run named
loso-<direction>-<name> under --runs: rerunning the same command resumes an interrupted run, and skips a
finished one. Prints a table with 95 % bootstrap intervals of the mean dice and writes JSON. Never the
test split of a shipped model: this is the selection criterion.

The other stages (final training, fine-tuning) are still to come; see docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DIRECTIONS = (("montgomery", "montgomery_512", "jsrt_512"), ("jsrt", "jsrt_512", "montgomery_512"))


def bootstrap_ci(values, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def train_and_score(run: str, train_on: str, score_on: str, args) -> dict:
    """Train (or resume, or reuse) one run, then evaluate it on every film of the other source."""
    cli = [sys.executable, "-m", "raysegment"]
    best = os.path.join(args.runs, run, "best")
    t0 = time.perf_counter()
    if not os.path.isfile(os.path.join(best, "model.safetensors")):
        sets = [x for s in args.set for x in ("--set", s)]
        subprocess.run([*cli, "train", "--config", "configs/montgomery-cpu.yaml",
                        "--data", os.path.join(args.data, train_on), "--set", f"optim.epochs={args.epochs}",
                        "--set", f"run.name={run}", "--set", f"run.storage_path={args.runs}", *sets],
                       check=True)
    train_s = time.perf_counter() - t0
    from raysegment.evaluation.evaluate import evaluate

    rows = evaluate(best, os.path.join(args.data, score_on), "all").rows
    dice = [r["dice"] for r in rows if r["status"] == "ok" and r.get("dice") is not None]
    lo, hi = bootstrap_ci(dice)
    return {"run": run, "n": len(dice), "mean": float(np.mean(dice)), "ci95": [lo, hi],
            "median": float(np.median(dice)), "min": float(np.min(dice)), "train_s": round(train_s, 1),
            "per_image": {r["image_id"]: r.get("dice") for r in rows}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["loso"], default="loso")
    p.add_argument("--name", required=True, help="the recipe variant's name (runs are loso-<source>-NAME)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train overrides")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out")
    args = p.parse_args()
    args.runs = os.path.abspath(args.runs)
    results = {f"{src}->{other.split('_')[0]}":
               train_and_score(f"loso-{src}-{args.name}", train_on, other, args)
               for src, train_on, other in DIRECTIONS}
    print(f"\nleave one source out, recipe {args.name} ({' '.join(args.set) or 'defaults'}), "
          f"{args.epochs} epochs")
    print(f"{'direction':<24}{'n':>5}{'mean dice':>11}{'95% CI':>18}{'median':>9}{'min':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['n']:>5}{r['mean']:>11.4f}   [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]"
              f"{r['median']:>9.4f}{r['min']:>8.4f}")
    out = args.out or f"bench/results/reference_loso_{args.name}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"name": args.name, "overrides": args.set, "epochs": args.epochs, "results": results}, f,
                  indent=2)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
