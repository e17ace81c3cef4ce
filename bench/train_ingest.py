"""Training ingest: object-store peak, start-up and throughput, materialized vs streamed from the Parquet
cache.

    python bench/train_ingest.py [--n 1000] [--size 128] [--epochs 2] [--out bench/results/train_ingest.json]

Same data (N synthetic phantoms, the generic layout), model (configs/train-small.yaml: UNet base 8, depth
3), 2 CPU workers; three runs in one Ray session, side by side:
  materialized      data.object_store_budget_mb large: decoded rows materialized in the object store;
  streamed-build    budget --budget-mb (default 4): the Parquet cache is built in the run dir (files of a
                    quarter of the budget), then streamed each epoch;
  streamed-reuse    the same run again with one more epoch: it resumes and reuses the cache (no decode).
Object store: bytes used in Ray's object store, sampled every 0.2 s during each run (peak minus the
idle level before it). Throughput: training images/s of each epoch's training phase, median over epochs.
Writes a table to stdout and JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StoreSampler:
    """Peak object-store bytes used (cluster-wide) while running, by polling the raylet's memory info."""

    def __init__(self, period_s: float = 0.2) -> None:
        import ray
        from ray._private.internal_api import get_state_from_address

        self.state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self.period_s, self.peak, self._stop = period_s, 0, threading.Event()
        self.idle = self.used()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        from ray._private.internal_api import get_memory_info_reply

        return int(get_memory_info_reply(self.state).store_stats.object_store_bytes_used)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--budget-mb", type=float, default=4.0,
                        help="data.object_store_budget_mb of the streamed runs")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_ingest.json"))
    args = parser.parse_args()

    from raysegment.cluster.plan import connect
    from raysegment.data.synth import write_dataset
    from raysegment.io import storage
    from raysegment.train.config import load_config
    from raysegment.train.driver import train

    work = tempfile.mkdtemp(prefix="train_ingest_")
    data = os.path.join(work, "data")
    write_dataset(data, n=args.n, size=args.size, seed=0, layout="generic")
    connect(num_cpus=2)
    base = {"data.path": data, "run.storage_path": os.path.join(work, "runs"), "scaling.num_workers": 2,
            "scaling.use_gpu": False, "preprocess.size": args.size, "optim.batch_size": 8,
            "run.evaluate_test": False, "optim.early_stopping_patience": 0}
    setups = [("materialized", "m", 10**6, args.epochs), ("streamed-build", "s", args.budget_mb, args.epochs),
              ("streamed-reuse", "s", args.budget_mb, args.epochs + 1)]
    rows = []
    for setup, name, budget, epochs in setups:
        config = load_config(os.path.join(ROOT, "configs", "train-small.yaml"),
                             {**base, "run.name": name, "data.object_store_budget_mb": budget,
                              "optim.epochs": epochs})
        with StoreSampler() as store:
            result = train(config)
        cache_dir = os.path.join(result.run_dir, "cache")
        new = result.history[-(epochs if setup != "streamed-reuse" else 1):]
        rows.append({
            "setup": setup, "budget_mb": budget, "epochs_run": len(new),
            "ingest_s": result.timings["ingest_s"], "fit_s": result.timings["fit_s"],
            "images_per_s": statistics.median(r["images_per_s"] for r in new),
            "store_peak_mb": (store.peak - store.idle) / 2**20,
            "cache_mb": (sum(f.size for f in storage.list_files(cache_dir)) / 2**20
                         if os.path.isdir(cache_dir) else 0.0),
            "val_dice": result.history[-1]["val_dice"],
        })
        print(f"{setup}: done", flush=True)

    preprocessed_mb = args.n * args.size * args.size * 2 / 2**20
    print(f"\n{args.n} phantoms at {args.size} px (~{preprocessed_mb:.1f} MB preprocessed, all splits), "
          f"2 CPU workers, {platform.node()} ({os.cpu_count()} CPUs), load {os.getloadavg()[0]:.1f}")
    header = ("setup", "ingest_s", "fit_s", "images_per_s", "store_peak_mb", "cache_mb", "val_dice")
    print("  ".join(f"{h:>14}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]:>14}" if isinstance(row[h], str) else f"{row[h]:>14.2f}" for h in header))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"n": args.n, "size": args.size, "epochs": args.epochs, "preprocessed_mb": preprocessed_mb,
                   "cpus": os.cpu_count(), "load": os.getloadavg(), "rows": rows}, f, indent=2)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
