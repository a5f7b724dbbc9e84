import subprocess
import sys

import numpy as np

from vibe.policies.eplb import rebalance_experts


def test_eplb_parity_vector():
    """DeepSeek EPLB's published example (ENGINES.md) must come out exactly."""
    w = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                  [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
    phy2log, _, _ = rebalance_experts(w, 16, 4, 2, 8)
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_core_does_not_import_torch():
    """The data model, cost model and policies run where torch is not installed."""
    code = "import sys, vibe.model, vibe.cost, vibe.policies; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_cli_lists_its_commands(capsys):
    from vibe.cli import build_parser

    text = build_parser().format_help()
    for command in ("place", "evaluate"):
        assert command in text
