"""Shared fixtures. Tests that need the real data in ../shared/data skip with a clear
reason when it is absent (a user's fresh clone) and run in CI, where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests: `make test` (and CI) draws the same examples every run, so CI never
# turns red on an unrelated change; `make fuzz` runs the random profile with more examples.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, max_examples=400, print_blob=True)
# `make property-runs`: the random profile at hypothesis' default size, one seed per run
settings.register_profile("seeded", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("VIBE_HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
ESFT = SHARED_DATA / "routing" / "esft-dsv2lite"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set VIBE_SHARED_DATA or place ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def esft_dir() -> Path:
    return _need(ESFT)


@pytest.fixture(scope="session")
def esft_loads(esft_dir):
    """Real loads of the ESFT 'intent' domain (26 MoE layers x 64 experts, top-6)."""
    from vibe.engines.esft import load_esft_loads

    return load_esft_loads(esft_dir / "intent")


@pytest.fixture(scope="session")
def esft_law_loads(esft_dir):
    """Real loads of the ESFT 'law' domain (the same 26 x 64 shape): the traffic that
    the domain-switch tests send to a plan made for 'intent'."""
    from vibe.engines.esft import load_esft_loads

    return load_esft_loads(esft_dir / "law")


@pytest.fixture(scope="session")
def esft_trace(esft_dir):
    from vibe.engines.esft import load_esft_trace

    return load_esft_trace(esft_dir / "intent")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
