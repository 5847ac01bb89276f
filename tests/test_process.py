"""``ecom_ml.process.leave``: the trainer's way out keeps the exit code and Python's exit work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_leave_runs_exit_handlers_flushes_and_keeps_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, pathlib, sys, pyarrow.parquet; "
            f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes')); "
            "sys.stdout.write('unflushed output'); "
            "from ecom_ml.process import leave; leave(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout == "unflushed output"
    assert marker.read_text() == "yes"


def test_the_trainer_module_leaves_through_it() -> None:
    """``python -m ecom_ml.train`` ends with ``leave``: a user error keeps its exit code 2 and its line."""
    done = subprocess.run([sys.executable, "-m", "ecom_ml.train", "--model", "nope", "--features", "/nowhere",
                           "--out", "/nowhere"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ecom-ml train: error: unknown model 'nope'; known models: demand, propensity, recommender"]
