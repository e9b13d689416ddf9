"""Fixtures shared by the SBL and AdaMoLE tests. Nothing here imports torch at collection time."""

import importlib.util
import os
import pathlib
import sys

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests (tests/sbl/test_*_properties.py): a small, reproducible budget by default;
# SPARSEKIT_HYPOTHESIS_EXAMPLES=500 for a longer run on demand.
settings.register_profile(
    "sparsekit",
    max_examples=int(os.environ.get("SPARSEKIT_HYPOTHESIS_EXAMPLES", "12")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("sparsekit")

_HELPERS = "sparsekit_test_helpers"


def _helpers():
    """``tests/helpers.py``, imported once under a fixed module name (so its classes pickle)."""
    if _HELPERS not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            _HELPERS, pathlib.Path(__file__).with_name("helpers.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[_HELPERS] = module
        spec.loader.exec_module(module)
    return sys.modules[_HELPERS]


@pytest.fixture(scope="session")
def recorder_cls():
    """The :class:`tests.helpers.Recorder` callback class."""
    return _helpers().Recorder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: the tiny models gain nothing from threads,
    and the CI cores are shared. Restores the previous setting afterwards."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dask_client():
    """A two-worker LocalCluster of processes, one thread each, loopback only, no dashboard;
    skipped where ``distributed`` is not installed."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
