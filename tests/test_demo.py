import re
from pathlib import Path

import pyro
import pytest

from pyro_lfvi.demo import main

README = Path(__file__).resolve().parent.parent / "README.md"


def test_demo_prints_posterior_beside_truth(capsys):
    assert main(["--steps", "30", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "truth" in out and "exact posterior" in out and "LFVI" in out
    for label in ("mu", "log tau", "theta_0"):
        assert re.search(rf"^{label}\s+-?\d+\.\d+", out, re.M), label


def test_demo_rejects_bad_steps(capsys):
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_readme_quickstart_runs(capsys):
    text = README.read_text()
    block = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert block.count("\n") <= 35  # the quickstart stays short
    code = block.replace("num_steps = 4000", "num_steps = 30")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "LFVI posterior" in capsys.readouterr().out
    # The ArviZ section continues the quickstart's session.
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    arviz_block = text.split("## From a fit to ArviZ", 1)[1].split("```python", 1)[1]
    arviz_block = arviz_block.split("```", 1)[0].replace("num_steps=4000", "num_steps=20")
    arviz_block = arviz_block.replace("num_samples=1000", "num_samples=50")
    exec(compile(arviz_block, "README.md", "exec"), namespace)
    assert "mu" in capsys.readouterr().out


def test_readme_gives_the_test_command_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text()
    assert "python -m pytest -q" in ci


def test_readme_single_observation_example_runs():
    text = README.read_text()
    block = text.split("## A single observation (N = 1)", 1)[1].split("```python", 1)[1]
    block = block.split("```", 1)[0]
    assert "num_steps=3000" in block
    namespace: dict = {}
    exec(compile(block.replace("num_steps=3000", "num_steps=5"), "README.md", "exec"), namespace)
    assert namespace["observed"].shape == (20,)
    assert "loc" in pyro.get_param_store()
