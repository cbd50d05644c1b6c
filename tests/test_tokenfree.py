"""The token-free model: NumPy vs tinygrad on random configurations, on CPU and OpenCL, and its defining properties."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numpy_ref.configs import ModelConfig, PRESETS, get_config
from numpy_ref.models import tokenfree
from util import assert_close, both_forwards, opencl_available, random_inputs, random_params


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    stride = draw(st.sampled_from([1, 2, 4]))
    return ModelConfig(
        "tokenfree", width=heads * draw(st.sampled_from([4, 8])), heads=heads, depth=draw(st.integers(1, 4)),
        stride=stride, img_size=stride * draw(st.integers(1, 3)), in_channels=draw(st.sampled_from([1, 3])),
        num_classes=draw(st.sampled_from([0, 3])), skips=draw(st.booleans()), pos_conv=draw(st.booleans()),
        mlp_ratio=draw(st.sampled_from([2.0, 4.0])))


@given(cfg=configs(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 2))
def test_forward_agreement_random_configs(cfg, seed, batch):
    params = random_params(cfg, seed)
    x, t, y = random_inputs(cfg, batch, seed + 1)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what=str(cfg))


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device (install pocl-opencl-icd)")
@settings(max_examples=3)
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_forward_agreement_on_opencl(cfg, seed):
    params = random_params(cfg, seed)
    x, t, y = random_inputs(cfg, 2, seed + 1)
    ref, out = both_forwards(cfg, params, x, t, y, device="CL")
    assert_close(ref, out, what=f"CL {cfg}")


def test_preset_xs_agrees():
    cfg = get_config("tokenfree-xs", num_classes=10)
    params = random_params(cfg, 11)
    x, t, y = random_inputs(cfg, 1, 12)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what="tokenfree-xs")


def test_no_positional_parameters_and_any_size_divisible_by_the_stride():
    cfg = PRESETS["tokenfree-tiny"]
    assert not [n for n in tokenfree.param_shapes(cfg) if "pos_embed" in n or "pos_emb" in n]
    params = random_params(cfg)
    for size in (cfg.stride, 2 * cfg.img_size, 3 * cfg.stride):   # never seen at "training" size: still works
        x, t, y = random_inputs(cfg, 1, size=size)
        assert tokenfree.forward(params, x, t, y, cfg).shape == x.shape


def test_every_block_has_the_same_shapes():
    """The hardware claim: one fixed-size block (only the out-blocks' skip_linear differs, and it runs before the block)."""
    cfg = PRESETS["tokenfree-xs"]
    shapes = tokenfree.param_shapes(cfg)
    per_block = [{k.split(".", 2)[2]: v for k, v in shapes.items() if k.startswith(f"blocks.{i}.") and "skip_linear" not in k}
                 for i in range(cfg.depth)]
    assert all(b == per_block[0] for b in per_block)


def test_zero_padding_of_the_stem_is_where_position_comes_from():
    """Without pos_conv and with a position-independent input, attention cannot tell positions apart, so every
    interior position gives the same output; the zero-padded stem makes the border differ."""
    cfg = replace(PRESETS["tokenfree-tiny"], pos_conv=False, num_classes=0, img_size=16, stride=2)
    params = random_params(cfg, 3)
    params["final_conv.weight"][:] = 0
    params["final_conv.weight"][:, :, 1, 1] = np.eye(cfg.in_channels)     # identity head conv: look at the raw map
    x = np.full((1, cfg.in_channels, 16, 16), 0.5, np.float32)
    eps = tokenfree.forward(params, x, np.array([100]), None, cfg)
    tokens = eps[0].reshape(cfg.in_channels, 8, 2, 8, 2).transpose(1, 3, 0, 2, 4).reshape(8, 8, -1)   # per stem position
    interior = tokens[1:-1, 1:-1].reshape(-1, tokens.shape[-1])
    assert np.abs(interior - interior[0]).max() < 1e-4            # all interior positions alike
    assert np.abs(tokens[0, 0] - interior[0]).max() > 1e-3         # the corner knows it is a corner


def test_the_conditioning_vector_starts_at_unit_scale_and_differs_by_class():
    """Init decision (DESIGN.md is silent): a N(0, 1) class embedding and a Xavier time MLP make c = temb + yemb O(1)
    from step 0. With DiT's N(0, 0.02) for both, |c| was ~0.02, the zero-init adaLN layers learn ~50x slower from
    so small an input, and 2000 steps of the main job drew shapes that ignored their class."""
    cfg = get_config("tokenfree-xs", num_classes=6)
    p = tokenfree.init_params(cfg, 0)
    t = np.array([10, 500, 990])
    c0, c1 = (tokenfree.conditioning(p, t, np.full(3, y), cfg, np.float32) for y in (0, 1))   # (3, D) each
    assert 0.3 < np.abs(c0).mean() < 3
    assert np.abs(c0 - c1).mean() > 0.5                         # the class moves c as much as c is large
    assert np.abs(c0[0] - c0[2]).mean() > 0.05                  # and the time still does too


@pytest.mark.parametrize("bad, match", [
    (dict(width=30, heads=4), "heads=4 does not divide width=30"),
    (dict(img_size=30, stride=4), "not divisible by the stem stride 4"),
    (dict(arch="vit"), "arch 'vit' is not one of"),
    (dict(num_classes=-1), "num_classes"),
    (dict(prediction="x0"), "prediction='x0' must be 'eps' or 'v'"),
])
def test_bad_configs_raise_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        replace(PRESETS["tokenfree-tiny"], **bad)


def test_bad_inputs_name_the_problem():
    cfg = PRESETS["tokenfree-tiny"]
    params = random_params(cfg)
    x, t, y = random_inputs(cfg)
    with pytest.raises(ValueError, match="x has 1 channels but the model was built for in_channels=3"):
        tokenfree.forward(params, x[:, :1], t, y, cfg)
    with pytest.raises(ValueError, match="image size 9x9 is not divisible by 2"):
        tokenfree.forward(params, np.zeros((2, 3, 9, 9), np.float32), t, y, cfg)
    with pytest.raises(ValueError, match=r"class id out of range: ids must be in 0\.\.3"):
        tokenfree.forward(params, x, t, np.array([0, 7]), cfg)
    with pytest.raises(ValueError, match="unconditional"):
        tokenfree.forward(random_params(replace(cfg, num_classes=0)), x, t, np.array([0, 1]), replace(cfg, num_classes=0))
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("tokenfree-xxl")
