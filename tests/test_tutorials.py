"""Every tutorial runs (shrunk by CI=1), and every tutorial is listed here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = ["hierarchical_arviz.py", "implicit_guides.py", "simulator_likelihood.py"]


def test_every_tutorial_is_listed():
    found = sorted(p.name for p in TUTORIALS_DIR.glob("*.py"))
    assert found == sorted(TUTORIALS), "add new tutorials to TUTORIALS in this file"


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs(name, tmp_path):
    env = dict(os.environ, CI="1", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(TUTORIALS_DIR / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
