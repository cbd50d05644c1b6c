"""The U-Net family (unet, mobile_unet, snapgen_unet): the properties that define each architecture.
Forward agreement, weight files, gradients and bad inputs of the tiny presets are in test_models.py."""
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numpy_ref.configs import ModelConfig, PRESETS
from numpy_ref.layers import conv2d, multi_head_attention
from numpy_ref.models import mobile_unet, snapgen_unet, unet
from numpy_ref.weights import check_params
from util import assert_close, both_forwards, random_inputs, random_params

ARCHS = {"unet": unet, "mobile_unet": mobile_unet, "snapgen_unet": snapgen_unet}


def level_of(name, cfg):
    """The resolution level a parameter lives at ('down.2.res.0...' -> 2, 'mid...' -> the lowest), None elsewhere."""
    m = re.match(r"(down|up)\.(\d+)\.", name)
    if m:
        return int(m.group(2))
    return len(cfg.channel_mult) - 1 if name.startswith("mid.") else None


def attention_levels(shapes, cfg):
    """{level: number of attention / transformer blocks there}"""
    prefixes = {re.match(r"(.*\.attn(\.\d+)?)\.", n).group(1) for n in shapes if ".attn." in n or n.startswith("mid.attn.")}
    levels = {}
    for prefix in prefixes:
        levels[level_of(prefix, cfg)] = levels.get(level_of(prefix, cfg), 0) + 1
    return levels


def res_prefixes(shapes):
    return sorted({n.rsplit(".conv1.", 1)[0] for n in shapes if ".conv1." in n})


# ----------------------------------------------------------------------------
# unet
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("channel_mult, attn_levels", [((1, 2, 2), (2,)), ((1, 2, 2), (1,)), ((1, 2, 2), ()),
                                                       ((1, 2, 2), (0, 2)), ((1, 2), (0, 1))])
def test_unet_attention_sits_exactly_at_attn_levels(channel_mult, attn_levels):
    cfg = ModelConfig("unet", img_size=8, channels=8, channel_mult=channel_mult, num_res_blocks=2,
                      attn_levels=attn_levels, heads=2, groups=4)
    levels = attention_levels(unet.param_shapes(cfg), cfg)
    assert set(levels) == set(attn_levels)
    lowest = len(channel_mult) - 1
    for level in attn_levels:   # after every encoder ResBlock, every decoder ResBlock, and in the middle at the lowest
        assert levels[level] == 2 * cfg.num_res_blocks + 1 + (level == lowest)


def test_unet_is_translation_equivariant_in_the_interior():
    """Convs, GroupNorm (the same statistics: the moved content stays clear of the borders), SiLU and a time
    embedding that is the same everywhere: shifting the input by a multiple of the total downsampling factor 2
    shifts the output. An odd shift is not matched (the stride-2 conv samples other positions), nor would a
    model with any positional input be."""
    S = 128   # large enough that the receptive fields of the bump and of the zero-padded borders never meet
    cfg = ModelConfig("unet", img_size=S, in_channels=1, channels=4, channel_mult=(1, 2), num_res_blocks=1,
                      attn_levels=(), groups=2, heads=1)
    params = random_params(cfg, 0, np.float64)

    def bump_at(cy, cx):
        x = np.full((1, 1, S, S), 0.3)
        x[0, 0, cy - 1:cy + 2, cx - 1:cx + 2] += np.array([[1, -2, 0.5], [0.7, 1.5, -1], [0.2, 0, 1]])
        return unet.forward(params, x, [10], None, cfg)[0, 0]

    c, r = S // 2, S // 4
    base = bump_at(c, c)[r:-r, r:-r]
    assert np.abs(base).max() > 0.1
    shifted = bump_at(c + 2, c + 4)[r + 2:S - r + 2, r + 4:S - r + 4]
    np.testing.assert_allclose(shifted, base, atol=1e-9)
    odd = bump_at(c + 1, c + 1)[r + 1:S - r + 1, r + 1:S - r + 1]
    assert np.abs(odd - base).max() > 1e-3


def test_unet_image_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(ValueError, match=r"img_size=12 is not divisible by 2\*\*\(levels-1\)=8"):
        ModelConfig("unet", img_size=12, channels=8, channel_mult=(1, 2, 2, 2), groups=4)
    cfg = ModelConfig("unet", img_size=8, channels=8, channel_mult=(1, 2, 2), attn_levels=(2,), heads=2, groups=4)
    params = random_params(cfg)
    with pytest.raises(ValueError, match="image size 6x6 is not divisible by 4"):
        unet.forward(params, np.zeros((1, 3, 6, 6), np.float32), [1], None, cfg)
    # any other multiple of 4 works, square or not: nothing in the model depends on the image size
    assert unet.forward(params, np.zeros((1, 3, 4, 12), np.float32), [1], None, cfg).shape == (1, 3, 4, 12)


@pytest.mark.parametrize("bad, match", [
    (dict(attn_levels=(3,)), "attn_levels has level 3"),
    (dict(heads=3), "heads=3 does not divide the 16 channels of attention level 1"),
    (dict(groups=3), "groups=3 does not divide the 8 channels of level 0"),
    (dict(num_res_blocks=0), "num_res_blocks=0"),
    (dict(channel_mult=()), "needs at least one level"),
])
def test_unet_bad_configs_raise_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        replace(PRESETS["unet-tiny"], **bad)


# ----------------------------------------------------------------------------
# mobile_unet
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["mobile_unet-tiny", "mobile_unet-xs", "mobile_unet-s", "snapgen_unet-tiny",
                                    "snapgen_unet-xs", "snapgen_unet-s"])
def test_transformers_only_at_the_lowest_resolution(preset):
    cfg = PRESETS[preset]
    shapes = ARCHS[cfg.arch].param_shapes(cfg)
    lowest = len(cfg.channel_mult) - 1
    assert set(attention_levels(shapes, cfg)) == {lowest}
    at_top = [n for n in shapes if level_of(n, cfg) == 0 and any(k in n for k in ("attn", "kv.", "q.", "fc1"))]
    assert not at_top
    with pytest.raises(ValueError, match="attention only at the lowest resolution"):
        replace(cfg, attn_levels=(0, lowest))


def test_mobile_unet_shares_one_key_value_projection():
    cfg = PRESETS["mobile_unet-tiny"]
    shapes = mobile_unet.param_shapes(cfg)
    blocks = sorted({n.rsplit(".kv.weight", 1)[0] for n in shapes if n.endswith(".kv.weight")})
    assert blocks and all(f"{b}.q.weight" in shapes for b in blocks)
    assert not [n for n in shapes if n.endswith((".k.weight", ".v.weight", ".qkv.weight", ".kv.bias"))]

    # the attention equals standard multi-head attention with Wk = Wv = Wkv
    rng = np.random.default_rng(0)
    D, heads = 16, 4
    p = {"a.q.weight": rng.standard_normal((D, D)) / 4, "a.kv.weight": rng.standard_normal((D, D)) / 4,
         "a.proj.weight": rng.standard_normal((D, D)) / 4, "a.proj.bias": rng.standard_normal(D)}
    h = rng.standard_normal((2, 9, D))
    out = mobile_unet.shared_kv_attention(h, p, "a", heads)
    std = {"m.qkv.weight": np.concatenate([p["a.q.weight"], p["a.kv.weight"], p["a.kv.weight"]]),
           "m.proj.weight": p["a.proj.weight"], "m.proj.bias": p["a.proj.bias"]}
    np.testing.assert_allclose(out, multi_head_attention(h, std, "m", heads), atol=1e-12)
    # ... and differs from one whose values use another matrix: one parameter really is both k and v
    std["m.qkv.weight"][2 * D:] = rng.standard_normal((D, D)) / 4
    assert np.abs(out - multi_head_attention(h, std, "m", heads)).max() > 1e-3


@pytest.mark.parametrize("preset", ["mobile_unet-tiny", "mobile_unet-xs", "mobile_unet-s"])
def test_mobile_unet_separable_convs_in_the_deepest_resblocks_only(preset):
    cfg = PRESETS[preset]
    shapes = mobile_unet.param_shapes(cfg)
    for prefix in res_prefixes(shapes):
        level = level_of(prefix, cfg)
        if level >= cfg.separable_from:
            cin = shapes[f"{prefix}.norm1.weight"][0]
            assert shapes[f"{prefix}.conv1.dw.weight"] == (cin, 1, 3, 3)   # depthwise: groups == channels
            assert shapes[f"{prefix}.conv1.pw.weight"][1:] == (cin, 1, 1)
            assert f"{prefix}.conv1.weight" not in shapes
        else:
            assert len(shapes[f"{prefix}.conv1.weight"]) == 4 and shapes[f"{prefix}.conv1.weight"][2:] == (3, 3)
            assert not [n for n in shapes if n.startswith(f"{prefix}.") and ".dw." in n]
    assert level_of("mid.res.0", cfg) >= cfg.separable_from and "mid.res.0.conv1.dw.weight" in shapes


def test_separable_conv_is_a_full_conv_with_a_rank_one_kernel_per_channel_pair():
    """depthwise then pointwise == one 3x3 conv whose kernel[o, c] = pw[o, c] * dw[c] (a full conv is not)."""
    rng = np.random.default_rng(1)
    cin, cout = 3, 5
    p = {"s.dw.weight": rng.standard_normal((cin, 1, 3, 3)), "s.dw.bias": rng.standard_normal(cin),
         "s.pw.weight": rng.standard_normal((cout, cin, 1, 1)), "s.pw.bias": rng.standard_normal(cout)}
    x = rng.standard_normal((2, cin, 6, 6))
    pw = p["s.pw.weight"][:, :, 0, 0]
    full = pw[:, :, None, None] * p["s.dw.weight"][:, 0][None]                  # (cout, cin, 3, 3)
    bias = pw @ p["s.dw.bias"] + p["s.pw.bias"]
    np.testing.assert_allclose(mobile_unet.separable_conv(p, "s", x, None), conv2d(x, full, bias, padding=1), atol=1e-12)


# ----------------------------------------------------------------------------
# snapgen_unet
# ----------------------------------------------------------------------------

def test_snapgen_multi_query_attention_has_one_kv_head():
    cfg = PRESETS["snapgen_unet-xs"]
    shapes = snapgen_unet.param_shapes(cfg)
    D = cfg.channels * cfg.channel_mult[-1]
    d = D // cfg.heads
    ks = [n for n in shapes if n.endswith(".k.weight")]
    assert ks and all(shapes[n] == (d, D) and shapes[n.replace(".k.", ".v.")] == (d, D) for n in ks)

    # == standard multi-head attention whose per-head K and V weights are all copies of the shared ones
    rng = np.random.default_rng(2)
    D, heads = 12, 3
    d = D // heads
    p = {"a.q.weight": rng.standard_normal((D, D)) / 3, "a.k.weight": rng.standard_normal((d, D)) / 3,
         "a.v.weight": rng.standard_normal((d, D)) / 3, "a.proj.weight": rng.standard_normal((D, D)) / 3,
         "a.proj.bias": rng.standard_normal(D)}
    h = rng.standard_normal((2, 7, D))
    out = snapgen_unet.multi_query_attention(h, p, "a", heads)
    std = {"m.qkv.weight": np.concatenate([p["a.q.weight"], np.tile(p["a.k.weight"], (heads, 1)),
                                           np.tile(p["a.v.weight"], (heads, 1))]),
           "m.proj.weight": p["a.proj.weight"], "m.proj.bias": p["a.proj.bias"]}
    np.testing.assert_allclose(out, multi_head_attention(h, std, "m", heads), atol=1e-12)
    std["m.qkv.weight"][D + d:2 * D] += rng.standard_normal((D - d, D))           # heads 2.. get their own keys
    assert np.abs(out - multi_head_attention(h, std, "m", heads)).max() > 1e-3


@pytest.mark.parametrize("preset", ["snapgen_unet-tiny", "snapgen_unet-xs", "snapgen_unet-s"])
def test_snapgen_ffn_ratio_3_and_separable_convs_expanded_2x(preset):
    cfg = PRESETS[preset]
    shapes = snapgen_unet.param_shapes(cfg)
    fc1 = [n for n in shapes if n.endswith(".fc1.weight")]
    assert fc1 and all(shapes[n][0] == 3 * shapes[n][1] for n in fc1)
    prefixes = res_prefixes(shapes)
    assert len(prefixes) == (2 * cfg.num_res_blocks + 1) * len(cfg.channel_mult) + 2     # down, up, mid
    for prefix in prefixes:                                  # every ResBlock, every conv
        for conv in ("conv1", "conv2"):
            hid, cin = shapes[f"{prefix}.{conv}.expand.weight"][:2]
            assert hid == 2 * cin
            assert shapes[f"{prefix}.{conv}.dw.weight"] == (hid, 1, 3, 3)
            assert shapes[f"{prefix}.{conv}.project.weight"][1:] == (hid, 1, 1)
    assert not [n for n, s in shapes.items() if ".res." in n and len(s) == 4 and s[1] > 1 and s[2:] == (3, 3)]


# ----------------------------------------------------------------------------
# The whole family
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_changes_the_output(arch):
    """No parameter is created and then left out of the forward (numpy; tinygrad agrees in test_models)."""
    cfg = PRESETS[f"{arch}-tiny"]
    params = random_params(cfg, 3, np.float64)
    x, t, y = random_inputs(cfg, 2, 4, dtype=np.float64)
    ref = ARCHS[arch].forward(params, x, t, y, cfg)
    rng, unused = np.random.default_rng(5), []
    for name in params:   # a random change: a constant one is lost in the next GroupNorm (e.g. a conv bias)
        bumped = dict(params, **{name: params[name] + rng.standard_normal(params[name].shape)})
        if np.abs(ARCHS[arch].forward(bumped, x, t, y, cfg) - ref).max() < 1e-9:
            unused.append(name)
    assert not unused


@pytest.mark.parametrize("arch", ARCHS)
def test_no_label_is_the_null_class_and_fresh_init_predicts_zero(arch):
    cfg = PRESETS[f"{arch}-tiny"]
    params = random_params(cfg, 5)
    x, t, _ = random_inputs(cfg, 2, 6)
    fwd = ARCHS[arch].forward
    np.testing.assert_array_equal(fwd(params, x, t, None, cfg), fwd(params, x, t, np.full(2, cfg.null_class), cfg))
    assert np.abs(fwd(params, x, t, None, cfg) - fwd(params, x, t, np.array([0, 1]), cfg)).max() > 1e-4
    # ADM zero-inits the last layer of every residual branch and the output conv
    assert np.abs(fwd(ARCHS[arch].init_params(cfg, 0), x, t, None, cfg)).max() == 0


@pytest.mark.parametrize("bad, match", [
    (dict(arch="mobile_unet", separable_from=0), "separable_from=0 must be in 1..1"),
    (dict(arch="snapgen_unet", conv_expansion=0), "conv_expansion=0 must be >= 1"),
    (dict(arch="mobile_unet", channel_mult=(1,), attn_levels=(0,)), "needs at least 2 levels"),
])
def test_mobile_and_snapgen_bad_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        replace(PRESETS["unet-tiny"], **bad)


def test_unet_with_attention_at_the_top_agrees_on_a_non_square_image():
    """A shape the tiny presets do not cover: attention at full resolution too, 1 channel, unconditional, 8x16."""
    cfg = ModelConfig("unet", img_size=8, in_channels=1, num_classes=0, channels=4, channel_mult=(1, 2),
                      num_res_blocks=1, attn_levels=(0, 1), heads=2, groups=2)
    params = random_params(cfg, 7)
    x, t, y = random_inputs(cfg, 1, 8)
    x = np.concatenate([x, -x], axis=3)                                          # (1, 1, 8, 16)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what="unet 8x16")


@st.composite
def family_configs(draw):
    arch = draw(st.sampled_from(sorted(ARCHS)))
    levels = draw(st.integers(1 if arch == "unet" else 2, 3))
    attn = (tuple(level for level in range(levels) if draw(st.booleans())) if arch == "unet" else (levels - 1,))
    return ModelConfig(arch, img_size=2 ** (levels - 1) * draw(st.sampled_from([1, 2])), in_channels=draw(st.sampled_from([1, 3])),
                       num_classes=draw(st.sampled_from([0, 3])), channels=4,
                       channel_mult=tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(levels)),
                       num_res_blocks=draw(st.integers(1, 2)), attn_levels=attn, heads=2, groups=2,
                       separable_from=draw(st.integers(1, max(1, levels - 1))), conv_expansion=draw(st.integers(1, 2)))


@settings(max_examples=40)
@given(cfg=family_configs())
def test_any_valid_config_builds_and_runs(cfg):
    """The channel bookkeeping of layout (skips pushed and popped, channel changes) fits every configuration:
    init_params follows param_shapes and the forward returns an image of the input's shape."""
    model = ARCHS[cfg.arch]
    check_params(model.init_params(cfg, 0), cfg)
    x, t, y = random_inputs(cfg, 2, 0)
    eps = model.forward(random_params(cfg, 1), x, t, y, cfg)
    assert eps.shape == x.shape and np.isfinite(eps).all()
