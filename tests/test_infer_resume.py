"""Resume of bulk inference end to end (Ray): what invalidates a done image, and an interrupted run.

One tiny archive (5 images, 48 px), a tiny model, one output; each step is one `run_inference` (or the CLI)
over the same output and checks how many images were redone:

  1. CLI, manifest with a custom column (--manifest-column) and identity columns (size, mtime_ns, etag, as
     a listing tool would write them), --limit 3: as if the run
     was interrupted after 3 images; a torn Parquet file is left behind as by a killed writer;
  2. the rerun: does the 2 missing images, nothing else, and reads past the torn file;
  3. one file's bytes changed (size), one touched (mtime), one manifest ETag changed: exactly those 3;
  4. ground truth added later: every image that now has a truth (to add its metrics);
  5. another model: everything;  6. --no-resume: everything again, never a duplicate in the dedup read.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from raysegment.data.preprocess import PreprocessConfig
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig
from raysegment.outputs.results import read_results

pytestmark = pytest.mark.slow
N = 5


def _checkpoint(path: str, seed: int) -> str:
    torch.manual_seed(seed)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32), threshold=0.5)
    save_checkpoint(path, UNet(base_channels=4, depth=2), spec)
    return path


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory):
    from raysegment.data.synth import write_dataset

    root = tmp_path_factory.mktemp("resume")
    write_dataset(str(root / "data"), n=N, size=48, seed=5, layout="generic")
    names = sorted(os.listdir(root / "data" / "cxr"))
    return {"root": root, "names": names, "cxr": root / "data" / "cxr", "out": str(root / "out"),
            "m1": _checkpoint(str(root / "m1"), 1), "m2": _checkpoint(str(root / "m2"), 2)}


def _manifest(world, etags: dict[str, str]) -> str:
    """A manifest with identity columns (size, mtime_ns from the files now; etag as given), image column
    'scan'."""
    path = world["root"] / "manifest.csv"
    lines = ["scan,size,mtime_ns,etag"]
    for n in world["names"]:
        st = os.stat(world["cxr"] / n)
        lines.append(f"data/cxr/{n},{st.st_size},{st.st_mtime_ns},{etags.get(n, 'e0')}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(world, etags=None, checkpoint=None, **io) -> dict:
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference

    return run_inference(InferConfig(
        IOSection(input=_manifest(world, etags or {}), output=world["out"], manifest_column="scan", **io),
        ModelSection(checkpoint=checkpoint or world["m1"]), ScalingSection(num_actors=1, batch_size=4)))


def test_resume_invalidation_end_to_end(world):
    from raysegment.cli import main

    out, names = world["out"], world["names"]
    # 1. An interrupted first run: 3 of 5 images done, and a torn file from the killed writer.
    assert main(["infer", "--input", _manifest(world, {}), "--manifest-column", "scan", "--checkpoint",
                 world["m1"], "--output", out, "--limit", "3", "--num-actors", "1"]) == 0
    torn = os.path.join(out, "runs", "29991231T235959Z-dead00")
    os.makedirs(torn)
    with open(os.path.join(torn, "part-0.parquet"), "wb") as f:
        f.write(b"PAR1\x00\x00 torn")
    assert read_results(out).num_rows == 3

    # 2. The rerun does exactly the missing ones.
    s = _run(world)
    assert (s["inputs_seen"], s["processed"], s["skipped_resume"], s["ok"], s["missing"]) == (N, 2, 3, N, 0)

    # 3. Changed bytes (size), a touched file (mtime), a new manifest ETag: exactly these three.
    changed, touched, retagged = (world["cxr"] / names[0]), (world["cxr"] / names[1]), names[2]
    pixels = cv2.imread(str(changed), cv2.IMREAD_UNCHANGED)
    size_before = os.path.getsize(changed)
    cv2.imwrite(str(changed), pixels, [cv2.IMWRITE_PNG_COMPRESSION, 0])  # same pixels, other bytes
    assert os.path.getsize(changed) != size_before
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s = _run(world, etags={retagged: "e1"})
    assert (s["processed"], s["skipped_resume"], s["ok"]) == (3, N - 3, N)
    latest = {os.path.basename(r["image_uri"]): r for r in read_results(out).to_pylist()}
    assert latest[names[0]]["input_size"] == os.path.getsize(changed)
    assert latest[retagged]["input_etag"] == "e1"
    assert len({latest[n]["run_id"] for n in names[:3]}) == 1  # all three redone by this run

    # 4. Ground truth added later: images now having a truth are redone (to add their metrics).
    s = _run(world, etags={retagged: "e1"}, ground_truth=str(world["root"] / "data"))
    assert (s["processed"], s["skipped_resume"]) == (N, 0) and s["metrics"]["n_scored"] == N
    s = _run(world, etags={retagged: "e1"}, ground_truth=str(world["root"] / "data"))
    assert (s["processed"], s["skipped_resume"]) == (0, N)  # and then they are done

    # 5. Another model: everything again.  6. --no-resume: everything again.
    s = _run(world, etags={retagged: "e1"}, ground_truth=str(world["root"] / "data"), checkpoint=world["m2"])
    assert (s["processed"], s["skipped_resume"]) == (N, 0)
    s = _run(world, etags={retagged: "e1"}, ground_truth=str(world["root"] / "data"), checkpoint=world["m2"],
             resume=False)
    assert (s["processed"], s["skipped_resume"], s["rows_written"]) == (N, 0, N)

    history = read_results(out, all_rows=True, columns=["image_uri", "model_id"])
    assert history.num_rows == 3 + 2 + 3 + N + N + N
    final = read_results(out)
    assert final.num_rows == N and len(set(final.column("image_uri").to_pylist())) == N
    assert len(set(final.column("model_id").to_pylist())) == 1
    assert np.all(np.array(final.column("dice").to_pylist(), dtype=float) >= 0)
