"""The documentation: the docstrings' examples run, and Sphinx builds without warnings."""

import doctest
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pyro_lfvi import LFVIWarning

DOCS = Path(__file__).resolve().parents[1] / "docs"

# Modules whose main class or function carries a runnable example.
DOCTESTED = [
    "pyro_lfvi.elbo",  # LFVI
    "pyro_lfvi.implicit",  # ImplicitSite
    "pyro_lfvi.contrastive",  # ContrastiveRatioEstimator
    "pyro_lfvi.joint",  # JointRatioEstimator
    "pyro_lfvi.inference_data",  # to_inference_data
    "pyro_lfvi.training",  # fit
    "pyro_lfvi.history",  # History
    "pyro_lfvi.stationarity",  # check_stationarity
]


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        # An example that trips a diagnostic would show users a false alarm.
        warnings.simplefilter("error", LFVIWarning)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.attempted > 0, f"{name}'s docstrings no longer hold an example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    # The command of .ci/run, in a fresh process (autodoc imports the package).
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "html" / "api.html").exists()
