"""The engine modules the tests in this folder drive: under `make test-engines` a missing
module is a failure (the pinned release did not install); elsewhere a skip."""

from __future__ import annotations

import importlib
import os

import pytest


def engine_module(name: str):
    if os.environ.get("VIBE_ENGINE_TESTS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)
