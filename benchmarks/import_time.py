"""Time ``import pyro_lfvi`` in fresh interpreters, run from each given source tree.

Prints the median over 7 runs of the package's own import (after ``import
pyro, tqdm.auto``) and of a cold import. To compare with an older commit::

    git worktree add /tmp/before <commit>
    python benchmarks/import_time.py /tmp/before .
"""

from __future__ import annotations

import statistics
import subprocess
import sys

TIMED = "t = time.perf_counter(); import pyro_lfvi; print(time.perf_counter() - t)"
OWN = "import time, pyro, tqdm.auto; " + TIMED
COLD = "import time; " + TIMED


def median_seconds(code: str, cwd: str, runs: int = 7) -> float:
    """Median wall time printed by ``code`` over fresh interpreters started in ``cwd``."""
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(runs)
    ]
    return statistics.median(times)


def main() -> None:
    for path in sys.argv[1:] or ["."]:
        own, cold = median_seconds(OWN, path), median_seconds(COLD, path)
        print(f"{path}: own import {own:.3f} s after pyro and tqdm; cold {cold:.3f} s")


if __name__ == "__main__":
    main()
