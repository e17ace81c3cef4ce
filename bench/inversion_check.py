"""The inversion check (data/inversion.py) over real films, turned, cut and inverted.

    PYTHONPATH=. python bench/inversion_check.py [--data ../shared/data] [--out FILE.json]

For every film of montgomery_512/cxr and jsrt_512/cxr (385 real films) and 80 synthetic phantoms, as it is,
turned 90 / 180 / 270 degrees clockwise, cut in half (left, right, top, bottom), and the inverted copy of
each: how many the check calls inverted (and would invert back). A normal film of any form must never be
called inverted; every inverted upright film must be. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from raysegment.data.inversion import looks_inverted
from raysegment.data.synth import make_phantom
from raysegment.io.decode import decode_image

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
FORMS = {
    "upright": lambda i: i,
    "turned 90": lambda i: np.rot90(i, -1), "turned 180": lambda i: np.rot90(i, 2),
    "turned 270": lambda i: np.rot90(i, 1),
    "left half": lambda i: i[:, : i.shape[1] // 2], "right half": lambda i: i[:, i.shape[1] // 2:],
    "top half": lambda i: i[: i.shape[0] // 2], "bottom half": lambda i: i[i.shape[0] // 2:],
}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def films(data: str) -> dict[str, list[np.ndarray]]:
    sets = {}
    for name in ("montgomery_512", "jsrt_512"):
        paths = sorted(glob.glob(os.path.join(data, name, "cxr", "*.png")))
        if paths:
            sets[name] = [decode_image(_read(p)).image for p in paths]
    sets["synthetic"] = ([make_phantom(1, i, 128).image.astype(np.float32) / 255 for i in range(40)]
                         + [make_phantom(11, i, 256).image.astype(np.float32) / 255 for i in range(40)])
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("RAYSEGMENT_SHARED_DATA", DEFAULT))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "inversion_check.json"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for name, images in films(args.data).items():
        per = {}
        for form, f in FORMS.items():
            normal = sum(looks_inverted(np.ascontiguousarray(f(i))) for i in images)
            inverted = sum(looks_inverted(np.ascontiguousarray(f(1.0 - i))) for i in images)
            per[form] = {"films": len(images), "normal_called_inverted": int(normal),
                         "inverted_called_inverted": int(inverted)}
        results[name] = per
    wall = time.perf_counter() - t0
    print(f"{'set':<16}{'form':<13}{'films':>6}{'normal corrected':>18}{'inverted corrected':>20}")
    for name, per in results.items():
        for form, r in per.items():
            print(f"{name:<16}{form:<13}{r['films']:>6}{r['normal_called_inverted']:>18}"
                  f"{r['inverted_called_inverted']:>20}")
    real = [n for n in results if n != "synthetic"]
    summary = {
        "real_films": sum(results[n]["upright"]["films"] for n in real),
        "real_normal_called_inverted_any_form": sum(r["normal_called_inverted"] for n in real
                                                    for r in results[n].values()),
        "real_inverted_upright_missed": sum(r["films"] - r["inverted_called_inverted"]
                                            for r in (results[n]["upright"] for n in real)),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(summary))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "sets": results}, f, indent=2)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
