"""The token-free model: NumPy vs tinygrad on random configurations, on CPU and OpenCL, and its defining properties."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor

from numpy_ref.configs import ModelConfig, PRESETS, get_config, parse_overrides
from numpy_ref.models import tokenfree
from tinygrad_impl.models import tokenfree as tg_tokenfree
from util import assert_close, both_forwards, opencl_available, random_inputs, random_params


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    stride = draw(st.sampled_from([1, 2, 4]))
    return ModelConfig(
        "tokenfree", width=heads * draw(st.sampled_from([4, 8])), heads=heads, depth=draw(st.integers(1, 4)),
        stride=stride, img_size=stride * draw(st.integers(1, 3)), in_channels=draw(st.sampled_from([1, 3])),
        num_classes=draw(st.sampled_from([0, 3])), skips=draw(st.booleans()), pos_conv=draw(st.booleans()),
        mlp_ratio=draw(st.sampled_from([2.0, 4.0])), pos_embed=draw(st.booleans()),
        stem_kernel=draw(st.sampled_from([0, stride, stride + 2, stride + 4])),
        stem_padding=draw(st.sampled_from(["zeros", "circular"])), share_blocks=draw(st.booleans()))


@settings(max_examples=6)   # each example builds a new tinygrad graph; the ablation tests below cover each option
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
    (dict(stem_kernel=3), r"stem_kernel=3 must be 0 \(= stride \+ 2\) or >= the stride 2 with stem_kernel - stride even"),
    (dict(stem_kernel=1), "stem_kernel=1 must be 0"),
    (dict(stem_kernel=-2), "stem_kernel=-2 must be 0"),
    (dict(stem_padding="reflect"), "stem_padding='reflect' must be 'zeros' or 'circular'"),
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


# ----------------------------------------------------------------------------
# The ablation fields (issue #21): pos_embed, stem_kernel, stem_padding, share_blocks
# ----------------------------------------------------------------------------

TINY = replace(PRESETS["tokenfree-tiny"], width=16)   # 8x8 images, stride 2, depth 3 (in, mid, out), 4 classes
ABLATIONS = {"pos_embed": dict(pos_embed=True), "patchify_stem": dict(stem_kernel=2), "wide_stem": dict(stem_kernel=6),
             "circular": dict(stem_padding="circular"), "shared": dict(share_blocks=True),
             "all": dict(pos_embed=True, stem_kernel=2, stem_padding="circular", share_blocks=True, pos_conv=False)}


def stems(cfg, params, x):
    """(numpy_ref stem, tinygrad stem) of x as NumPy arrays: (B, D, H/S, W/S) each."""
    return (tokenfree.stem(params, x, cfg),
            tg_tokenfree.stem({k: Tensor(v) for k, v in params.items()}, Tensor(x), cfg).numpy())


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablations_agree_between_backends(name):
    cfg = replace(TINY, **ABLATIONS[name])
    params = random_params(cfg, 21)
    if cfg.pos_embed:
        params["pos_embed"] = np.random.default_rng(5).standard_normal(params["pos_embed"].shape).astype(np.float32)
    x, t, y = random_inputs(cfg, 2, 22)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what=name)


def test_ablations_gradient_matches_finite_differences_of_numpy():
    """All four options at once (the pattern of test_models.py): the shared block's weights get the gradient summed
    over its N uses, pos_embed and the circular stem get theirs, in tinygrad as in the NumPy forward's differences."""
    cfg = replace(TINY, **ABLATIONS["all"])
    params64 = random_params(cfg, seed=6, dtype=np.float64)
    x, t, y = random_inputs(cfg, batch=2, seed=7, dtype=np.float64)
    R = np.random.default_rng(8).standard_normal(x.shape)
    loss = lambda p: float((tokenfree.forward(p, x, t, y, cfg) * R).sum())  # noqa: E731
    chosen = ["pos_embed", "stem.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.2.skip_linear.weight"]
    p_tg = {k: Tensor(v.astype(np.float32)) for k, v in params64.items()}
    out = tg_tokenfree.forward(p_tg, Tensor(x.astype(np.float32)), Tensor(t.astype(np.float32)),
                               Tensor(y.astype(np.int32)), cfg)
    grads = (out * Tensor(R.astype(np.float32))).sum().gradient(*[p_tg[k] for k in chosen])
    rng = np.random.default_rng(9)
    for name, g in zip(chosen, grads):
        g = g.numpy()
        for idx in [tuple(rng.integers(0, s) for s in params64[name].shape) for _ in range(2)]:
            h = 1e-5
            p_plus = dict(params64); p_plus[name] = params64[name].copy(); p_plus[name][idx] += h
            p_minus = dict(params64); p_minus[name] = params64[name].copy(); p_minus[name][idx] -= h
            fd = (loss(p_plus) - loss(p_minus)) / (2 * h)
            assert abs(g[idx] - fd) <= 1e-3 + 1e-2 * abs(fd), f"d/d{name}{list(idx)}: tinygrad {g[idx]:.6g}, FD {fd:.6g}"


def test_defaults_keep_the_model():
    """The new fields off: the same parameters (names, shapes, init values) as spelled out before they existed."""
    cfg = PRESETS["tokenfree-tiny"]
    assert (cfg.pos_embed, cfg.stem_kernel, cfg.stem_padding, cfg.share_blocks) == (False, 0, "zeros", False)
    shapes = tokenfree.param_shapes(cfg)
    assert shapes["stem.weight"] == (32, 3, 4, 4) and "pos_embed" not in shapes
    assert sorted({k.split(".")[1] for k in shapes if k.startswith("blocks.")}) == ["0", "1", "2"]
    on = tokenfree.init_params(replace(cfg, stem_kernel=cfg.stride + 2), 0)   # stem_kernel=S+2 spelled out
    assert all((on[k] == v).all() for k, v in tokenfree.init_params(cfg, 0).items())


def test_old_config_json_without_the_new_fields_loads_with_defaults():
    import json
    d = json.loads(PRESETS["tokenfree-tiny"].to_json())
    for k in ("pos_embed", "stem_kernel", "stem_padding", "share_blocks"):
        del d[k]
    assert ModelConfig.from_json(json.dumps(d)) == PRESETS["tokenfree-tiny"]


def test_share_blocks_keeps_only_blocks_0_and_equals_copied_weights():
    """One block's weights for all N blocks; the out blocks' skip_linear stays per block. The forward equals the
    unshared model whose every block holds a copy of blocks.0."""
    cfg = replace(TINY, depth=5)
    shared, unshared = replace(cfg, share_blocks=True), cfg
    s_shapes, u_shapes = tokenfree.param_shapes(shared), tokenfree.param_shapes(unshared)
    block_names = {k for k in s_shapes if k.startswith("blocks.") and ".skip_linear." not in k}
    assert block_names == {k for k in u_shapes if k.startswith("blocks.0.")}
    assert {k for k in s_shapes if ".skip_linear." in k} == {k for k in u_shapes if ".skip_linear." in k} == {
        f"blocks.{i}.skip_linear.{w}" for i in (3, 4) for w in ("weight", "bias")}
    assert set(s_shapes) <= set(u_shapes) and all(s_shapes[k] == u_shapes[k] for k in s_shapes)
    assert set(tokenfree.init_params(shared)) == set(s_shapes)
    p_shared = random_params(shared, 4)
    p_copied = {k: p_shared[k if k in p_shared else "blocks.0." + k.split(".", 2)[2]] for k in u_shapes}
    x, t, y = random_inputs(cfg, 2, 5)
    np.testing.assert_allclose(tokenfree.forward(p_shared, x, t, y, shared),
                               tokenfree.forward(p_copied, x, t, y, unshared), rtol=1e-5, atol=1e-6)


def test_pos_embed_parameter_and_fixed_image_size():
    cfg = replace(TINY, pos_embed=True, img_size=12, stride=2)
    shapes = tokenfree.param_shapes(cfg)
    assert shapes["pos_embed"] == (1, 36, cfg.width)                 # L = (12 / 2)^2
    pe = tokenfree.init_params(cfg, 0)["pos_embed"]
    assert 0.01 < pe.std() < 0.03                                    # N(0, 0.02)
    # zero pos_embed: the model without it
    params = random_params(cfg, 1)
    x, t, y = random_inputs(cfg, 2, 2)
    params["pos_embed"][:] = 0
    base = {k: v for k, v in params.items() if k != "pos_embed"}
    np.testing.assert_allclose(tokenfree.forward(params, x, t, y, cfg),
                               tokenfree.forward(base, x, t, y, replace(cfg, pos_embed=False)), rtol=1e-5, atol=1e-5)
    for size in (8, 24):
        xs = np.zeros((2, 3, size, size), np.float32)
        with pytest.raises(ValueError, match=f"image size {size}x{size} does not match img_size=12: pos_embed=True"):
            tokenfree.forward(params, xs, t, y, cfg)
        with pytest.raises(ValueError, match=f"image size {size}x{size} does not match img_size=12: pos_embed=True"):
            tg_tokenfree.forward({k: Tensor(v) for k, v in params.items()}, Tensor(xs), Tensor(t), Tensor(y), cfg)


def test_stem_kernel_equal_to_the_stride_is_a_non_overlapping_stem():
    """k = S: each stem position sees exactly its own S x S patch (a patchify); k = S + 2 overlaps its neighbours."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)
    x2 = x.copy()
    x2[..., 4, 7] += 1.0                                              # a pixel on the border of patch (1, 1)
    for k, overlapping in ((4, False), (0, True), (8, True)):
        cfg = replace(TINY, stride=4, img_size=12, stem_kernel=k)
        params = random_params(cfg, 3)
        assert params["stem.weight"].shape[-1] == (k or 6)
        for a, b in zip(stems(cfg, params, x), stems(cfg, params, x2)):
            assert a.shape == (1, cfg.width, 3, 3)
            changed = np.abs(a - b).max(axis=(0, 1)) > 1e-6           # (3, 3) stem positions
            assert changed[1, 1]
            assert (changed.sum() > 1) if overlapping else (changed.sum() == 1), (k, changed)
    # k = S is literally a patchify + linear
    cfg = replace(TINY, stride=4, img_size=12, stem_kernel=4)
    params = random_params(cfg, 3)
    patches = x.reshape(1, 3, 3, 4, 3, 4).transpose(0, 2, 4, 1, 3, 5).reshape(1, 3, 3, -1)        # (1, 3, 3, C*S*S)
    lin = patches @ params["stem.weight"].reshape(cfg.width, -1).T + params["stem.bias"]           # (1, 3, 3, D)
    np.testing.assert_allclose(stems(cfg, params, x)[0], lin.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 2, 6])
def test_circular_stem_is_translation_equivariant_on_the_torus(k):
    """Rolling the image by S pixels rolls the circular stem's output by one position (both backends);
    the zero-padded stem's border positions see the zeros, so it does not (unless k = S: no padding at all)."""
    S = 2
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    rolled = np.roll(x, S, axis=-1)                                  # horizontally, on the torus
    for padding in ("circular", "zeros"):
        equivariant = padding == "circular" or k == S
        cfg = replace(TINY, stride=S, stem_kernel=k, stem_padding=padding)
        params = random_params(cfg, 2)
        for a, b in zip(stems(cfg, params, x), stems(cfg, params, rolled)):
            err = np.abs(np.roll(a, 1, axis=-1) - b).max()
            assert (err < 1e-5) if equivariant else (err > 1e-2), (padding, k, err)


def test_circular_padding_that_would_wrap_twice_is_a_clear_error():
    cfg = replace(TINY, stride=1, stem_kernel=7, stem_padding="circular", num_classes=0)   # padding 3
    params = random_params(cfg)
    x = np.zeros((1, 3, 2, 2), np.float32)
    match = "image size 2x2 is smaller than the stem's circular padding 3"
    with pytest.raises(ValueError, match=match):
        tokenfree.forward(params, x, np.array([1]), None, cfg)
    with pytest.raises(ValueError, match=match):
        tg_tokenfree.forward({k: Tensor(v) for k, v in params.items()}, Tensor(x), Tensor(np.array([1.0])), None, cfg)


def test_the_training_cli_sets_the_ablation_fields():
    out = parse_overrides(["pos_embed=true", "share_blocks=true", "stem_kernel=4", "stem_padding=circular"])
    assert out == dict(pos_embed=True, share_blocks=True, stem_kernel=4, stem_padding="circular")
    assert type(out["stem_kernel"]) is int
    cfg = get_config("tokenfree-xs", **out)                            # stride 4: a patchify stem
    assert tokenfree.param_shapes(cfg)["stem.weight"] == (128, 3, 4, 4)
    assert parse_overrides(["pos_embed=0", "share_blocks=False"]) == dict(pos_embed=False, share_blocks=False)
    with pytest.raises(ValueError, match="stem_kernel takes int, not 'four'"):
        parse_overrides(["stem_kernel=four"])
    with pytest.raises(ValueError, match="pos_embed takes true/false"):
        parse_overrides(["pos_embed=yes"])
    with pytest.raises(ValueError, match="stem_padding='wrap' must be 'zeros' or 'circular'"):
        get_config("tokenfree-xs", **parse_overrides(["stem_padding=wrap"]))
