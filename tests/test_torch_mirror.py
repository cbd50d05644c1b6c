"""The PyTorch mirrors (tinygrad_impl/torch_mirror.py, torch_unets.py, torch_diffit.py) compute what numpy_ref computes:
the benchmark's comparison with PyTorch is fair only if both run the same model. Skipped without PyTorch
(pip install -e '.[bench]')."""
import numpy as np
import pytest

from numpy_ref.configs import ARCHS, ModelConfig, get_config
from numpy_ref.models import get_model as np_model
from tinygrad_impl import torch_mirror
from util import assert_close, random_inputs, random_params

pytestmark = pytest.mark.skipif(not torch_mirror.have_torch(), reason="PyTorch not installed (pip install -e '.[bench]')")


def check_mirror(cfg, labels=True, batch=2, seed=3):
    params = random_params(cfg, seed=seed)
    x, t, y = random_inputs(cfg, batch=batch, seed=seed + 1)
    y = y if labels else None
    ref = np_model(cfg.arch).forward(params, x, t, y, cfg)
    out = torch_mirror.torch_forward_numpy(torch_mirror.torch_params(params), x, t, y, cfg)
    assert_close(ref, out, atol=1e-5, rtol=1e-4, what=f"{cfg.arch} torch mirror")


def test_every_architecture_has_a_mirror():
    assert set(torch_mirror.torch_forwards()) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("labels", [True, False])
def test_torch_mirror_matches_numpy_ref(arch, labels):
    check_mirror(get_config(f"{arch}-tiny"), labels, batch=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_mirror_matches_numpy_ref_on_the_xs_presets(arch):
    """The benchmark's models: the -xs presets on 32x32x3 images with 10 classes"""
    check_mirror(get_config(f"{arch}-xs", img_size=32, in_channels=3, num_classes=10))


@pytest.mark.parametrize("name, overrides", [
    ("tokenfree-tiny", dict(skips=False, pos_conv=False, depth=2)),
    ("uvit-tiny", dict(skips=False, mlp_time_embed=True, final_conv=False)),
    ("diffit-tiny", dict(window=0, num_classes=0)),                                  # whole-map attention
    ("diffit-tiny", dict(channel_mult=(1, 2, 2), window=2, img_size=16)),            # windows at two levels
    ("unet-tiny", dict(attn_levels=(0, 1), num_classes=0)),                          # attention at every level
    ("mobile_unet-tiny", dict(channel_mult=(1, 2, 2), attn_levels=(2,), separable_from=2)),
    ("snapgen_unet-tiny", dict(conv_expansion=3, heads=4, channel_mult=(1, 2, 2), attn_levels=(2,))),
])
def test_torch_mirror_matches_numpy_ref_on_config_variants(name, overrides):
    check_mirror(get_config(name, **overrides))


@pytest.mark.parametrize("overrides", [dict(pos_embed=True, stem_kernel=2, share_blocks=True),
                                       dict(stem_kernel=4, stem_padding="circular", depth=4)])
def test_torch_mirror_matches_numpy_ref_on_tokenfree_ablations(overrides):
    if not all(hasattr(ModelConfig, k) for k in overrides):
        pytest.skip("this ModelConfig has no such tokenfree ablation fields")
    check_mirror(get_config("tokenfree-tiny", **overrides))


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_trainer_starts_at_the_numpy_loss_and_trains_every_parameter(arch):
    """bench's PyTorch training step: its first loss is the NumPy forward's MSE, and one step moves every weight"""
    from tinygrad_impl import bench
    cfg = get_config(f"{arch}-tiny", num_classes=bench.NUM_CLASSES)
    params = random_params(cfg, seed=5)
    b = bench.bench_batches(cfg, 2, 2)
    xt, t, noise, y = b[0]
    ref = float(np.mean((np_model(arch).forward(params, xt, t, y, cfg) - noise) ** 2))
    step = bench.torch_trainer(cfg, params)
    assert abs(step(b[0]) - ref) < 1e-5 * max(1.0, ref)
    step(b[1])
    trained = step.params
    still = [k for k, v in params.items() if np.array_equal(trained[k].detach().numpy(), v)]
    assert not still, f"{arch}: parameters the PyTorch step left unchanged: {still[:5]}"


def test_text_conditioned_models_have_no_mirror():
    """The mirrors are class-conditional; a text-conditioned config is refused, not computed as another model"""
    if not hasattr(ModelConfig, "text_vocab"):
        pytest.skip("this ModelConfig has no text conditioning")
    assert torch_mirror.has_mirror(get_config("unet-tiny"))
    cfg = get_config("unet-tiny", num_classes=0, text_vocab=8)
    assert not torch_mirror.has_mirror(cfg)
    with pytest.raises(NotImplementedError, match="text conditioning"):
        torch_mirror.torch_forward({}, None, None, None, cfg)
