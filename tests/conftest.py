import os

# XLA's optimisation passes cost more compile time than the tests' tiny graphs gain from
# them: measured on tests/test_distiller.py with JAX on CPU, 133 s -> 84 s. Set before
# keras imports jax; results agree with the optimised build to float32 rounding.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import keras
import numpy as np
import pytest


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if keras.backend.backend() == "torch":
    import torch

    # The tests' tensors are tiny: OpenMP threads cost more in synchronisation than they
    # gain, and spin badly when the 2 CPU cores are shared (10x slower matmuls seen).
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.one_backend("torch")`: a test whose subject does not depend on the
    backend of the test process (a CLI run in subprocesses, a script's dry run) runs in one
    of the three backend passes only, so that CI pays for it once."""
    backend = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("one_backend")
        if marker is not None and marker.args and marker.args[0] != backend:
            item.add_marker(pytest.mark.skip(
                reason=f"backend-independent; runs in the {marker.args[0]} pass only"))
