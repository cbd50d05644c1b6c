"""--beam: tinygrad's BEAM search switched on for the CLIs, on CPU-like devices without work-groups."""
import os

import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.helpers import BEAM

from tinygrad_impl.beam import cpu_like, use_beam
from tinygrad_impl.layers import linear

ENV_BEFORE = {k: os.environ.get(k) for k in ("BEAM", "BEAM_LOCAL_MAX", "POCL_AFFINITY")}


@pytest.fixture
def restore_beam():
    """use_beam writes os.environ (for worker processes): put it back, or every later subprocess would search"""
    saved = {k: os.environ.pop(k, None) for k in ("BEAM", "BEAM_LOCAL_MAX", "POCL_AFFINITY")}
    yield
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    BEAM.value = 0


def test_cpu_backend_is_cpu_like():
    assert cpu_like("CPU") and not cpu_like("CUDA")


def test_negative_width_is_refused(restore_beam):
    with pytest.raises(ValueError, match="--beam must be >= 0"):
        use_beam(-1, "CPU")
    assert BEAM.value == 0


def test_beam_searched_linear_computes_the_same_numbers(restore_beam):
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 5, 12), (7, 12), (7,)))
    use_beam(1, "CPU")
    assert "POCL_AFFINITY" not in os.environ                                  # PoCL's setting, not the CPU backend's
    assert BEAM.value == 1 and os.environ["BEAM"] == "1" and os.environ["BEAM_LOCAL_MAX"] == "1"
    xt = Tensor(x, device="CPU")
    y = linear(xt, Tensor(w, device="CPU"), Tensor(b, device="CPU"))
    (dx,) = y.square().sum().gradient(xt)
    np.testing.assert_allclose(y.numpy(), x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.numpy(), 2 * (x @ w.T + b) @ w, rtol=1e-4, atol=1e-4)


def test_on_pocl_the_search_pins_the_worker_threads(restore_beam):
    use_beam(2, "CL")      # unpinned, PoCL timed the same kernel at 1x or 2x at random and the search chose badly
    assert os.environ["POCL_AFFINITY"] == "1" and os.environ["BEAM_LOCAL_MAX"] == "1" and BEAM.value == 2


def test_the_fixture_leaves_no_beam_in_the_environment():
    # the last test: nothing the searches above set is left for later tests' subprocesses
    assert {k: os.environ.get(k) for k in ENV_BEFORE} == ENV_BEFORE and BEAM.value == 0
