"""Tests that run vibe's policies and files through the engines' own code. They need the
pinned engine releases in .venv-engines (`make test-engines` builds it and sets
VIBE_ENGINE_TESTS=1); the default `make test` skips them."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("VIBE_ENGINE_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="engine tests run with `make test-engines` (VIBE_ENGINE_TESTS=1)")
    for item in items:
        if "tests/engines/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
