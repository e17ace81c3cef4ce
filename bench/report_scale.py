"""Size, build time and driver memory of `raysegment report` from 10^3 to 10^5 result rows.

    python bench/report_scale.py [--sizes 1000 10000 100000] [--work DIR] [--screenshot PNG]

Each size is a results folder written without a model (raysegment.testing.results: synthetic rows, 2 %
errors, 1 % `skipped` rows, ground truth, pixel spacing, a heart and CTR per row) whose inputs are hard
links to 8 phantom films (256 px), 1000 per folder (bench/archive_scale.make_archive), so the review
queue's originals are real files and the per-folder table has N/1000 folders. Rows go to Parquet files of
1024 rows, as a run writes them. Then `raysegment report RESULTS` runs as its own process; measured from
outside: peak RSS (VmHWM of that process), the command's wall time, and the build time it prints, plus the
size of the HTML. --screenshot renders the largest report in headless Chromium (when on PATH).
Prints a table and writes JSON (default bench/results/report_scale.json).
Target (issue #25): under ~1 minute for 10^5 rows on 2 cores; RSS flat in the number of rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from archive_scale import make_archive, run_driver  # bench/ is no package


def make_results(root: str, n: int, films) -> str:
    """root/results_N: N synthetic rows over archive_N's files (reused when complete)."""
    from raysegment.testing.results import synthetic_table, write_run

    out = os.path.join(root, f"results_{n}")
    if os.path.exists(os.path.join(out, "summary.json")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    folder = make_archive(root, n, [f.uri for f in films])
    uris = [os.path.join(folder, f"d{i // 1000:04d}", f"img{i:08d}.png") for i in range(n)]
    table = synthetic_table(uris, films, seed=n, error_rate=0.02, skipped_rate=0.01, truth=True,
                            spacing_mm=0.2)
    write_run(out, table, rows_per_file=1024, input_uri=folder, wall_s=round(n / 40.0, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--work", default="/tmp/report_scale")
    p.add_argument("--queue", type=int, default=24)
    p.add_argument("--screenshot", help="PNG of the largest report, rendered by headless Chromium")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "report_scale.json"))
    args = p.parse_args(argv)

    from raysegment.testing.results import write_films

    os.makedirs(args.work, exist_ok=True)
    films = write_films(os.path.join(args.work, "src"), 8, size=256, seed=0)
    env = dict(os.environ)
    rows = []
    for n in args.sizes:
        t0 = time.monotonic()
        results = make_results(args.work, n, films)
        made = time.monotonic() - t0
        html = os.path.join(results, "report.html")
        print(f"== {n} rows ({made:.0f} s to write them): raysegment report", flush=True)
        run = run_driver(["report", results, "--out", html, "--queue", str(args.queue)], None, env)
        built = re.search(r", ([0-9.]+) s\)$", next((x for x in run["tail"] if x.startswith("report: ")), ""))
        rows.append({"rows": n, "rc": run["rc"], "html_mb": round(os.path.getsize(html) / 1e6, 2)
                     if os.path.exists(html) else None, "build_s": float(built.group(1)) if built else None,
                     "command_s": run["command_s"], "peak_rss_mb": run["peak_rss_mb"]})
    print(f"\n{'rows':>9} {'HTML MB':>8} {'build s':>8} {'command s':>10} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['rows']:>9,} {r['html_mb']:>8} {r['build_s']:>8} {r['command_s']:>10} "
              f"{r['peak_rss_mb']:>12}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if args.screenshot and chromium:
        largest = os.path.join(args.work, f"results_{max(args.sizes)}", "report.html")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={os.path.join(args.work, 'chromium')}", "--window-size=1280,3400",
                        f"--screenshot={os.path.abspath(args.screenshot)}", "file://" + largest],
                       capture_output=True, timeout=180, check=False)
        print(f"screenshot: {args.screenshot}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"bench": "report_scale", "queue": args.queue, "rows": rows, "cpus": os.cpu_count(),
                   "platform": platform.platform(), "python": platform.python_version(),
                   "load_avg": os.getloadavg()}, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
