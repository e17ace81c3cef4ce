"""Decode time per DICOM transfer syntax and pydicom decoder plugin, to choose the default decoders.

    PYTHONPATH=. python bench/dicom_decoders.py [--size 2048] [--repeats 5]

Encodes one size x size synthetic X-ray (12 bits stored; 8 bits for JPEG baseline/extended) in every
compressed syntax with GDCM (tests/fixtures/dicom/make_fixtures.py), then decodes it with each
installed plugin that claims the syntax, checks the pixels against the original, and prints the median
time. Writes bench/results/dicom_decoders.json. Plugins: pillow (pydicom's default for JPEG baseline and
JPEG 2000), gdcm (python-gdcm), pylibjpeg (dispatching to pylibjpeg-openjpeg / -rle / -libjpeg),
pyjpegls, pydicom (its own pure numpy RLE decoder).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "make_fixtures",
    os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dicom", "make_fixtures.py"))
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)

PLUGINS = ("pillow", "gdcm", "pylibjpeg", "pyjpegls", "pydicom")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import pydicom

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        originals = {}
        for bits in (8, 12):
            path = os.path.join(tmp, f"orig{bits}.dcm")
            ds = make_fixtures.dataset(make_fixtures.phantom(bits, args.size), bits)
            ds.save_as(path, enforce_file_format=True)
            originals[bits] = (path, pydicom.dcmread(path).pixel_array)
        for name, (syntax, bits, lossy) in make_fixtures.SYNTAXES.items():
            path = os.path.join(tmp, name)
            make_fixtures.compress(originals[bits][0], path, syntax, lossy)
            ref = originals[bits][1]
            for plugin in PLUGINS:
                times, err = [], None
                for _ in range(args.repeats):
                    ds = pydicom.dcmread(path)
                    try:
                        ds.pixel_array_options(decoding_plugin=plugin)
                        t0 = time.perf_counter()
                        arr = ds.pixel_array
                        times.append(time.perf_counter() - t0)
                    except Exception:  # noqa: BLE001 - plugin missing or not for this syntax
                        break
                    err = int(np.abs(arr.astype(np.int64) - ref).max())
                if times:
                    rows.append({"file": name, "syntax": syntax, "plugin": plugin,
                                 "bytes": os.path.getsize(path),
                                 "median_ms": round(statistics.median(times) * 1000, 2), "max_abs_err": err})
    print(f"{'syntax':26s} {'plugin':10s} {'MB':>6s} {'median ms':>10s} {'max err':>8s}")
    for r in rows:
        print(f"{r['syntax']:26s} {r['plugin']:10s} {r['bytes'] / 1e6:6.2f} {r['median_ms']:10.1f} "
              f"{r['max_abs_err']:8d}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(__file__), "results", "dicom_decoders.json")
    with open(out, "w") as f:
        json.dump({"size": args.size, "repeats": args.repeats, "rows": rows}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
