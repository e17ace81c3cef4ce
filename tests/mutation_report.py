"""Print the mutation score per module and list the surviving mutants, from mutmut's results in mutants/.

Run by `make mutation` after `mutmut run` (configuration: [tool.mutmut] in pyproject.toml; docs/testing.md).

    score = detected / (mutants - equivalent)
    detected = killed (a test failed) + timeout (the mutant hung the tests)

"No tests" mutants (code no fast unit test runs) count as survivors: untested code is not tested code.
Mutants listed in docs/testing.md as equivalent (they cannot change behaviour) are left out of the
denominator and printed separately. Exits 1 when a module scores under --min (default 85).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTED = {1, 3, 36, 24, -24, 152, 255, -11}  # mutmut exit codes: killed, pytest error, timeouts, segfault
SURVIVED = {0, 5, 33}  # survived, no tests


def equivalent_mutants(path: str) -> dict[str, str]:
    """mutant name -> reason, from the table under "### Equivalent mutants" in docs/testing.md."""
    out, inside = {}, False
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#"):
                    inside = line.strip().lower() == "### equivalent mutants"
                m = re.match(r"\|\s*`([\w.]+__mutmut_\d+)`\s*\|\s*([^|]+?)\s*\|\s*$", line)
                if inside and m:
                    out[m.group(1)] = m.group(2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=85.0, help="minimum score per module, percent")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        modules = tomllib.load(f)["tool"]["mutmut"]["only_mutate"]
    equivalent = equivalent_mutants(os.path.join(ROOT, "docs", "testing.md"))
    scores, failing = {}, []
    print(f"{'module':40s} {'mutants':>8s} {'killed':>7s} {'timeout':>8s} {'survived':>9s} {'no tests':>9s} "
          f"{'equiv':>6s} {'score':>7s}")
    survivors: list[tuple[str, str]] = []
    for module in modules:
        meta = os.path.join(ROOT, "mutants", module + ".meta")
        if not os.path.exists(meta):
            print(f"{module:40s} no results (run `mutmut run` first)")
            failing.append(module)
            continue
        with open(meta, encoding="utf-8") as f:
            codes = json.load(f)["exit_code_by_key"]
        counts = {"killed": 0, "timeout": 0, "survived": 0, "no tests": 0, "equiv": 0, "other": 0}
        for name, code in sorted(codes.items()):
            if name in equivalent and code not in DETECTED:
                counts["equiv"] += 1
            elif code in (1, 3):
                counts["killed"] += 1
            elif code in DETECTED:
                counts["timeout"] += 1
            elif code == 0:
                counts["survived"] += 1
                survivors.append((module, name))
            elif code in SURVIVED:
                counts["no tests"] += 1
                survivors.append((module, name + " (no tests)"))
            else:
                counts["other"] += 1
                survivors.append((module, f"{name} (exit {code})"))
        considered = len(codes) - counts["equiv"]
        score = 100.0 * (counts["killed"] + counts["timeout"]) / considered if considered else 100.0
        scores[module] = {**counts, "mutants": len(codes), "score": round(score, 1)}
        if score < args.min:
            failing.append(module)
        print(f"{module:40s} {len(codes):8d} {counts['killed']:7d} {counts['timeout']:8d} "
              f"{counts['survived']:9d} "
              f"{counts['no tests']:9d} {counts['equiv']:6d} {score:6.1f}%")
    if survivors:
        print(f"\nsurviving mutants ({len(survivors)}; see one with `mutmut show NAME`):")
        for _, name in survivors:
            print(f"  {name}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=2)
    if failing:
        print(f"\nunder {args.min:.0f}%: {', '.join(failing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
