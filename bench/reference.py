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

    python bench/reference.py --stage final [--runs runs]
trains configs/reference-cpu.yaml (run reference-cpu: both sources, their train splits; val splits pick
the checkpoint and fit best/calibration.json), then scores its TEST splits once: lungs per source, heart,
clavicles and the CTR on JSRT; Montgomery's test films paired against today's lungs-only recipe
(configs/montgomery-cpu.yaml, trained as run montgomery-cpu when absent); and the opacity robustness
(evaluation/opacities.py over >= 30 % of one lung) of both models on every test film.

    python bench/reference.py --stage ship [--runs runs]
copies runs/reference-cpu/best (weights, config, calibration: exactly the measured files) and
LICENSE-WEIGHTS into raysegment/reference_model/, the package data the wheel carries.

    python bench/reference.py --stage finetune --start runs/loso-montgomery-NAME/best [--draws 3]
fine-tuning for a site with a few labelled films: per seeded draw of 20 JSRT films (16 train, 4 val), the
Montgomery-only start fine-tuned on them (run.init_from), the same 20 films from scratch, and the start
alone, each scored on the other 227 JSRT films; mean +- sd over the draws.
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


def cli() -> list[str]:
    return [sys.executable, "-m", "raysegment"]


def train(config: str, run: str, args, *sets: str) -> str:
    """Train (or resume, or reuse a finished) run; returns its best/ checkpoint."""
    best = os.path.join(args.runs, run, "best")
    if not os.path.isfile(os.path.join(best, "model.safetensors")):
        flags = [x for s in sets for x in ("--set", s)]
        subprocess.run([*cli(), "train", "--config", config, "--set", f"run.name={run}",
                        "--set", f"run.storage_path={args.runs}", *flags], check=True)
    return best


def paired(a, b) -> dict:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = bootstrap_ci(d)
    return {"mean": float(d.mean()), "ci95": [lo, hi], "n": len(d)}


def folder_digest(root: str) -> dict:
    """sha256 over every file under `root` (relative path and content, sorted): which data trained it."""
    import hashlib

    h, n = hashlib.sha256(), 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, root).encode() + b"\0" + hashlib.sha256(f.read()).digest())
            n += 1
    return {"files": n, "sha256": h.hexdigest()}


def final_stage(args) -> dict:
    from raysegment.evaluation.evaluate import evaluate, flat_row

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from opacity_robustness import robustness

    best = train("configs/reference-cpu.yaml", "reference-cpu", args)
    rows = [flat_row(r) for r in evaluate(best, split="test").rows if r["status"] == "ok"]
    by = {s: [r for r in rows if r.get("source") == s] for s in ("montgomery", "jsrt")}
    mean = lambda rs, k: float(np.mean([r[k] for r in rs if r.get(k) is not None]))  # noqa: E731
    jsrt = by["jsrt"]
    with open(os.path.join(best, "config.json")) as f:
        config = json.load(f)
    out = {"checkpoint": best, "model_id": config["model_id"], "epoch": config.get("epoch"),
           "split_digest": config.get("split_digest"),
           "data": {s: folder_digest(os.path.join(args.data, f"{s}_512")) for s in ("montgomery", "jsrt")},
           "jsrt_test": {"n": len(jsrt), "lungs": mean(jsrt, "dice"),
                                              "heart": mean(jsrt, "heart_dice"),
                                              "clavicles": mean(jsrt, "clavicles_dice"),
                                              "ctr_mae": mean(jsrt, "ctr_abs_diff"),
                                              "ctr_max": float(max(r["ctr_abs_diff"] for r in jsrt))},
           "montgomery_test": {"n": len(by["montgomery"]), "lungs": mean(by["montgomery"], "dice")}}
    # Today's lungs-only recipe on the same Montgomery test films (split_seed 42 per source: same films).
    lungs_only = train("configs/montgomery-cpu.yaml", "montgomery-cpu", args,
                       f"data.path={os.path.join(args.data, 'montgomery_512')}")
    base = {r["image_id"]: r["dice"] for r in evaluate(lungs_only, split="test").rows if r["status"] == "ok"}
    ids = [r["image_id"] for r in by["montgomery"] if r["image_id"] in base]
    ref = {r["image_id"]: r["dice"] for r in by["montgomery"]}
    out["montgomery_test"]["lungs_only_recipe"] = float(np.mean([base[i] for i in ids]))
    out["montgomery_test"]["paired_vs_lungs_only"] = paired([ref[i] for i in ids], [base[i] for i in ids])
    manifest = os.path.join(args.runs, "reference-cpu", "split_manifest.csv")
    out["opacities"] = {name: robustness(ckpt, manifest, "test") for name, ckpt in
                        (("reference", best), ("montgomery-cpu (today)", lungs_only))}
    for r in out["opacities"].values():
        r.pop("per_image", None)
    return out


def write_manifest(path: str, rows: list[tuple[str, str, str, str]]) -> None:
    with open(path, "w") as f:
        f.write("image_id,split,image,mask\n")
        f.writelines(",".join(row) + "\n" for row in rows)


def finetune_stage(args) -> dict:
    from raysegment.data.datasets import load_split_dataset
    from raysegment.evaluation.evaluate import evaluate

    jsrt = sorted(load_split_dataset(os.path.join(args.data, "jsrt_512")).discovery.pairs,
                  key=lambda p: p.image_id)
    arms = {"start only": [], "20 films from scratch": [], "start + 20 films": []}
    for seed in range(args.draws):
        pick = set(np.random.default_rng(seed).choice(len(jsrt), size=20, replace=False).tolist())
        chosen = [k for k in range(len(jsrt)) if k in pick]
        split = {k: "train" for k in chosen[:16]} | {k: "val" for k in chosen[16:]}
        path = os.path.join(args.runs, f"finetune-draw{seed}.csv")
        write_manifest(path, [(p.image_id, split.get(k, "test"), p.image_uri, "|".join(p.mask_uris))
                              for k, p in enumerate(jsrt)])
        sets = [f"data.path={path}", f"optim.epochs={args.ft_epochs}", f"run.seed={seed}",
                "preprocess.size=256", "preprocess.normalize=equalize", "augment.opacity_p=0.5",
                "augment.edge_air_p=0.5", "optim.early_stopping_patience=0"]
        config = "configs/montgomery-cpu.yaml"
        runs = {"20 films from scratch": train(config, f"ft{seed}-scratch", args, *sets),
                "start + 20 films": train(config, f"ft{seed}-start", args, *sets,
                                          f"run.init_from={os.path.abspath(args.start)}", "optim.lr=3e-4")}
        runs["start only"] = args.start
        for arm, ckpt in runs.items():
            rows = evaluate(ckpt, path, "test").rows
            arms[arm].append(float(np.mean([r["dice"] for r in rows if r["status"] == "ok"])))
    return {arm: {"per_draw": v, "mean": float(np.mean(v)),
                  "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for arm, v in arms.items()}


def ship_stage(args) -> dict:
    """Copy the measured checkpoint (weights, config, QC calibration: exactly the measured files) and the
    weights' terms into the package: raysegment/reference_model/."""
    import shutil

    best = os.path.join(args.runs, "reference-cpu", "best")
    dest = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raysegment",
                        "reference_model")
    os.makedirs(dest, exist_ok=True)
    for name in ("model.safetensors", "config.json", "calibration.json"):
        shutil.copyfile(os.path.join(best, name), os.path.join(dest, name))
    shutil.copyfile(os.path.join(os.path.dirname(dest), "..", "LICENSE-WEIGHTS"),
                    os.path.join(dest, "LICENSE-WEIGHTS"))
    with open(os.path.join(dest, "config.json")) as f:
        model_id = json.load(f)["model_id"]
    return {"shipped": dest, "model_id": model_id,
            "bytes": {n: os.path.getsize(os.path.join(dest, n)) for n in sorted(os.listdir(dest))}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["loso", "final", "finetune", "ship"], default="loso")
    p.add_argument("--name", help="loso: the recipe variant's name (runs are loso-<source>-NAME)")
    p.add_argument("--start", help="finetune: the Montgomery-only checkpoint to start from")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=40)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train overrides")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out")
    args = p.parse_args()
    args.runs = os.path.abspath(args.runs)
    if args.stage != "loso":
        if args.stage == "finetune" and not args.start:
            p.error("--stage finetune needs --start CHECKPOINT")
        res = {"final": final_stage, "finetune": finetune_stage, "ship": ship_stage}[args.stage](args)
        print(json.dumps(res, indent=1))
        out = args.out or f"bench/results/reference_{args.stage}.json"
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=2)
        print(f"-> {out}")
        return
    if not args.name:
        p.error("--stage loso needs --name")
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
