"""The PyTorch mirror (tinygrad_impl/torch_mirror.py) computes what numpy_ref computes: the benchmark's comparison
with PyTorch is fair only if both run the same model. Skipped without PyTorch (pip install -e '.[bench]')."""
import pytest

from numpy_ref.configs import get_config
from numpy_ref.models import get_model as np_model
from tinygrad_impl import torch_mirror
from util import assert_close, random_inputs, random_params

pytestmark = pytest.mark.skipif(not torch_mirror.have_torch(), reason="PyTorch not installed (pip install -e '.[bench]')")


@pytest.mark.parametrize("name", ["tokenfree-tiny", "uvit-tiny"])
@pytest.mark.parametrize("labels", [True, False])
def test_torch_mirror_matches_numpy_ref(name, labels):
    cfg = get_config(name)
    params = random_params(cfg, seed=3)
    x, t, y = random_inputs(cfg, batch=3, seed=4)
    y = y if labels else None
    ref = np_model(cfg.arch).forward(params, x, t, y, cfg)
    out = torch_mirror.torch_forward_numpy(torch_mirror.torch_params(params), x, t, y, cfg)
    assert_close(ref, out, atol=1e-5, rtol=1e-4, what=f"{name} torch mirror")


def test_torch_mirror_matches_numpy_ref_without_skips_or_pos_conv():
    cfg = get_config("tokenfree-tiny", skips=False, pos_conv=False, depth=2)
    params = random_params(cfg, seed=5)
    x, t, y = random_inputs(cfg, batch=2, seed=6)
    assert_close(np_model(cfg.arch).forward(params, x, t, y, cfg),
                 torch_mirror.torch_forward_numpy(torch_mirror.torch_params(params), x, t, y, cfg), atol=1e-5, rtol=1e-4)
