"""Shared fixtures. One local Ray per test session (ray.init costs seconds); synthetic data made once."""

from __future__ import annotations

import os

import pytest

SHARED_MONTGOMERY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "montgomery_512")


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray for the whole session (CI has 2 cores; plans must fit in them)."""
    import ray

    from raysegment.cluster import connect

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_generic(tmp_path_factory) -> str:
    """40 synthetic 128x128 X-rays in the generic layout (cxr/ + masks/)."""
    from raysegment.synth import write_dataset

    out = str(tmp_path_factory.mktemp("synth_generic"))
    write_dataset(out, n=40, size=128, seed=1, layout="generic")
    return out


@pytest.fixture(scope="session")
def synth_montgomery(tmp_path_factory) -> str:
    """20 synthetic 128x128 X-rays in the NLM Montgomery layout (CXR_png/ + ManualMask/{left,right}Mask/)."""
    from raysegment.synth import write_dataset

    out = str(tmp_path_factory.mktemp("synth_montgomery"))
    write_dataset(out, n=20, size=128, seed=2, layout="montgomery")
    return out


@pytest.fixture(scope="session")
def montgomery_512() -> str:
    """The real Montgomery set from ../shared/data, or skip (a user's fresh clone has no shared/)."""
    path = os.path.abspath(SHARED_MONTGOMERY)
    if not os.path.isdir(path):
        pytest.skip(f"real Montgomery data not present at {path}")
    return path
