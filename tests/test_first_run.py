"""First use: numba kernels are cached on disk, and their first compilation is announced once."""

import os
import subprocess
import sys

from sparsekit.utils._numba import COMPILE_MESSAGE

FIT = (
    "import numpy as np\n"
    "from sparsekit import DQNSBLRegressor\n"
    "X = np.random.default_rng(0).normal(size=(40, 3))\n"
    "DQNSBLRegressor().fit(X, X[:, 0])\n"
    "DQNSBLRegressor().fit(X[::-1], X[::-1, 1])\n"
)


def _fit_in_fresh_process(cache_dir, **extra_env):
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_QUIET"}
    env.update(NUMBA_CACHE_DIR=str(cache_dir), **extra_env)
    return subprocess.run(
        [sys.executable, "-c", FIT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_first_compile_prints_one_line_then_cache_is_used(tmp_path):
    first = _fit_in_fresh_process(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(COMPILE_MESSAGE) == 1, first.stderr
    assert any(tmp_path.rglob("*.nbi")), "numba wrote no cache index"
    # A second process loads the kernels from the cache: nothing compiles, nothing is printed.
    second = _fit_in_fresh_process(tmp_path)
    assert second.returncode == 0, second.stderr
    assert COMPILE_MESSAGE not in second.stderr, second.stderr


def test_compile_message_can_be_silenced(tmp_path):
    out = _fit_in_fresh_process(tmp_path, SPARSEKIT_QUIET="1")
    assert out.returncode == 0, out.stderr
    assert COMPILE_MESSAGE not in out.stderr
