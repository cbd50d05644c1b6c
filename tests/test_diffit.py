"""DiffiT (image space): NumPy vs tinygrad on random configurations, and the architecture's defining properties:
time-dependent self-attention, a shift-invariant relative position bias, attention inside windows, the U shape."""
from dataclasses import replace
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor

import tinygrad_impl.models.diffit as tg_diffit
from numpy_ref.configs import ModelConfig, PRESETS, get_config
from numpy_ref.layers import attention, layer_norm, linear, merge_heads, split_heads
from numpy_ref.models import diffit
from util import assert_close, both_forwards, random_inputs, random_params

TINY = PRESETS["diffit-tiny"]


# ----------------------------------------------------------------------------
# NumPy vs tinygrad
# ----------------------------------------------------------------------------

@st.composite
def configs(draw):
    heads, groups = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    levels = draw(st.integers(1, 3))
    return ModelConfig(
        "diffit", channels=2 * heads * groups, channel_mult=tuple(draw(st.sampled_from([1, 2])) for _ in range(levels)),
        num_res_blocks=draw(st.integers(1, 2)), heads=heads, groups=groups, window=draw(st.sampled_from([0, 2, 4])),
        mlp_ratio=draw(st.sampled_from([1.0, 2.0])), img_size=2 ** (levels - 1) * draw(st.sampled_from([2, 4])),
        in_channels=draw(st.sampled_from([1, 3])), num_classes=draw(st.sampled_from([0, 3])))


@settings(max_examples=2)   # every example compiles a new graph: keep CI short
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 2))
def test_forward_agreement_random_configs(cfg, seed, batch):
    params = random_params(cfg, seed)
    x, t, y = random_inputs(cfg, batch, seed + 1)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what=str(cfg))


def test_agreement_with_whole_map_windows_non_square_and_a_larger_image():
    """Three levels at 8x8 with window 4: level 0 windowed, level 1 whole map = window, level 2 whole map smaller
    than the window (its own (2*2-1)^2 table). Fed a 8x16 image, the last level's whole-map window is 2x4, wider than
    its table was sized for: offsets are clipped to the table's border, on both sides alike."""
    cfg = replace(TINY, channel_mult=(1, 2, 2))
    assert [diffit.table_window(cfg, level) for level in range(3)] == [4, 4, 2]
    params = random_params(cfg, 21)
    rng = np.random.default_rng(22)
    x = rng.uniform(-1, 1, (2, 3, 8, 16)).astype(np.float32)
    ref, out = both_forwards(cfg, params, x, np.array([3, 900]), np.array([1, 4]))
    assert ref.shape == x.shape
    assert_close(ref, out, what="diffit 8x16")


# ----------------------------------------------------------------------------
# TMSA: time-dependent self-attention
# ----------------------------------------------------------------------------

def _tmsa_case(seed=0, window=4, C=8, heads=2, T=12, size=8):
    rng = np.random.default_rng(seed)
    w_table = window if 0 < window < size else size
    p = {"a.qkv.weight": rng.standard_normal((3 * C, C)) / np.sqrt(C), "a.qkv.bias": rng.standard_normal(3 * C) * 0.1,
         "a.qkv_t.weight": rng.standard_normal((3 * C, T)) / np.sqrt(T),
         "a.rel_bias": rng.standard_normal(((2 * w_table - 1) ** 2, heads)),
         "a.proj.weight": rng.standard_normal((C, C)) / np.sqrt(C), "a.proj.bias": rng.standard_normal(C) * 0.1}
    x = layer_norm(rng.standard_normal((2, size, size, C)))
    xt = rng.standard_normal((2, T))
    run = lambda p, x=x, xt=xt: diffit.tmsa(p, "a", x, xt, window, w_table, heads)  # noqa: E731
    return p, x, xt, run


def _with_time_weights(p, rows):
    """A copy of p where only the given row blocks of qkv_t (0: Wqt, 1: Wkt, 2: Wvt) keep their values."""
    C = p["a.qkv.weight"].shape[1]
    w = np.zeros_like(p["a.qkv_t.weight"])
    for r in rows:
        w[r * C:(r + 1) * C] = p["a.qkv_t.weight"][r * C:(r + 1) * C]
    return dict(p, **{"a.qkv_t.weight": w})


def test_tmsa_depends_on_the_time_token_and_its_weights():
    p, x, xt, run = _tmsa_case()
    base = run(p)
    assert np.abs(run(p, xt=xt + 0.5) - base).max() > 1e-2                       # only t changes
    p2 = dict(p, **{"a.qkv_t.weight": p["a.qkv_t.weight"] * 1.5})
    assert np.abs(run(p2) - base).max() > 1e-2                                    # only Wqt, Wkt, Wvt change
    no_time = run(_with_time_weights(p, []))
    for rows in ([0], [2]):                                                       # Wqt alone, Wvt alone
        assert np.abs(run(_with_time_weights(p, rows)) - no_time).max() > 1e-2, rows
    # Wkt alone adds x_t Wkt . q_i to every logit of query i: softmax is shift-invariant, so it has no effect
    np.testing.assert_allclose(run(_with_time_weights(p, [1])), no_time, atol=1e-12)


def test_tmsa_without_time_weights_is_plain_windowed_self_attention():
    """Wqt = Wkt = Wvt = 0: each w x w window attends to itself with layers.attention and the bias B_ij =
    table[row of offset(i) - offset(j)], built here by explicit loops."""
    window, heads, C = 4, 2, 8
    p, x, xt, run = _tmsa_case(window=window, C=C, heads=heads)
    p0 = _with_time_weights(p, [])
    out = run(p0)
    assert np.abs(run(p0, xt=xt * 3 + 1) - out).max() < 1e-12                     # t no longer matters
    qkv = linear(x, p0["a.qkv.weight"], p0["a.qkv.bias"])
    bias = np.zeros((heads, window ** 2, window ** 2))
    for (i, (yi, xi)), (j, (yj, xj)) in product(enumerate(product(range(window), repeat=2)), repeat=2):
        bias[:, i, j] = p0["a.rel_bias"][(yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)]
    expected = np.zeros_like(x)
    for b, wy, wx in product(range(2), range(2), range(2)):
        sl = (b, slice(wy * window, (wy + 1) * window), slice(wx * window, (wx + 1) * window))
        tokens = qkv[sl].reshape(1, window ** 2, 3 * C)
        q, k, v = (split_heads(z, heads) for z in np.split(tokens, 3, axis=-1))
        o = merge_heads(attention(q, k, v, bias[None]))[0]
        expected[sl] = linear(o, p0["a.proj.weight"], p0["a.proj.bias"]).reshape(window, window, C)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# Relative position bias
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_relative_position_bias_depends_only_on_the_offset(w):
    cfg = replace(TINY, img_size=4 * w, window=w, channel_mult=(1,))
    table_shape = diffit.param_shapes(cfg)["enc.0.0.attn.rel_bias"]
    assert table_shape == ((2 * w - 1) ** 2, cfg.heads)
    table = np.random.default_rng(w).standard_normal(table_shape)                # all entries distinct
    bias = diffit.relative_bias(table, w, w, w)                                   # (heads, N, N)
    assert bias.shape == (cfg.heads, w * w, w * w)
    pos = list(product(range(w), repeat=2))
    by_offset = {}
    for (i, (yi, xi)), (j, (yj, xj)) in product(enumerate(pos), repeat=2):
        by_offset.setdefault((yi - yj, xi - xj), []).append(bias[:, i, j])
    assert len(by_offset) == (2 * w - 1) ** 2                                     # every row of the table is used
    for entries in by_offset.values():                                           # equal offsets, equal bias
        assert all(np.array_equal(e, entries[0]) for e in entries)
    firsts = np.array([e[0] for e in by_offset.values()])                         # different offsets, different rows
    assert len(np.unique(firsts, axis=0)) == len(by_offset)
    tg = tg_diffit.relative_bias(Tensor(table.astype(np.float32)), w, w, w).numpy()
    np.testing.assert_array_equal(tg, bias.astype(np.float32))


def test_a_window_smaller_than_its_table_uses_the_central_rows():
    table = np.arange(49 * 2, dtype=np.float64).reshape(49, 2)                    # w_table = 4
    bias = diffit.relative_bias(table, 2, 2, 4)                                   # a 2x2 map
    center = 3 * 7 + 3
    assert np.array_equal(bias[:, 0, 0], table[center]) and np.array_equal(bias[:, 3, 0], table[center + 7 + 1])


# ----------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------

def test_window_partition_and_reverse_round_trip_on_both_sides():
    x = np.random.default_rng(0).standard_normal((2, 8, 12, 3)).astype(np.float32)
    for wh, ww in ((4, 4), (2, 3), (8, 12), (1, 1)):
        parts = diffit.window_partition(x, wh, ww)
        assert parts.shape == (2 * (8 // wh) * (12 // ww), wh * ww, 3)
        np.testing.assert_array_equal(parts[0], x[0, :wh, :ww].reshape(-1, 3))   # windows row-major
        if ww < 12:
            np.testing.assert_array_equal(parts[1], x[0, :wh, ww:2 * ww].reshape(-1, 3))
        np.testing.assert_array_equal(diffit.window_reverse(parts, wh, ww, 8, 12), x)
        tparts = tg_diffit.window_partition(Tensor(x), wh, ww)
        np.testing.assert_array_equal(tparts.numpy(), parts)
        np.testing.assert_array_equal(tg_diffit.window_reverse(tparts, wh, ww, 8, 12).numpy(), x)


@pytest.mark.parametrize("pixel", [(1, 6), (4, 0), (7, 7)])
def test_attention_does_not_cross_windows(pixel):
    """A change at one pixel of the attention's input changes outputs in its own 4x4 window (not only itself) and
    nowhere else; with window=0 (whole map) the same change reaches the other windows."""
    p, x, xt, run = _tmsa_case(window=4)
    x2 = x.copy()
    x2[:, pixel[0], pixel[1]] += 1.0
    diff = np.abs(run(p, x=x2) - run(p)).max(-1)                                 # (B, H, W)
    inside = np.zeros((8, 8), bool)
    wy, wx = pixel[0] // 4 * 4, pixel[1] // 4 * 4
    inside[wy:wy + 4, wx:wx + 4] = True
    assert diff[:, ~inside].max() == 0.0
    others = inside.copy()
    others[pixel] = False
    assert diff[:, others].min() > 1e-6
    p_all, x_all, xt_all, run_all = _tmsa_case(window=0)
    x2 = x_all.copy()
    x2[:, pixel[0], pixel[1]] += 1.0
    assert (np.abs(run_all(p_all, x=x2) - run_all(p_all)).max(-1)[:, ~inside] > 1e-6).all()


def test_window_size_falls_back_to_the_whole_axis():
    assert [diffit.window_size(n, 4) for n in (16, 8, 4, 2, 1)] == [4, 4, 4, 2, 1]
    assert diffit.window_size(16, 0) == 16
    with pytest.raises(ValueError, match="side of 6, not divisible by window=4"):
        diffit.window_size(6, 4)


# ----------------------------------------------------------------------------
# U shape, conditioning, configs
# ----------------------------------------------------------------------------

def test_u_shape_pairs_matching_resolutions_at_any_valid_size():
    """The decoder concatenates each upsampled map with the encoder map of the same level: any H, W that are
    multiples of 2**(levels-1) (and of the window where windowed) go through and come back at full size."""
    cfg = replace(TINY, channel_mult=(1, 2, 2))
    params = random_params(cfg, 5)
    for H, W in ((4, 4), (8, 8), (16, 16), (8, 16), (32, 8)):
        x = np.random.default_rng(H * W).uniform(-1, 1, (1, 3, H, W)).astype(np.float32)
        assert diffit.forward(params, x, np.array([7]), None, cfg).shape == (1, 3, H, W)
    shapes = diffit.param_shapes(cfg)
    for level, C in enumerate(diffit.level_channels(cfg)[:-1]):                  # concat of two C_l maps -> C_l
        assert shapes[f"skip.{level}.weight"] == (C, 2 * C, 1, 1)
    assert "skip.2.weight" not in shapes                                         # the deepest level has no skip
    with pytest.raises(ValueError, match="image size 6x6 is not divisible by 4"):
        diffit.forward(params, np.zeros((1, 3, 6, 6), np.float32), np.array([7]), None, cfg)
    with pytest.raises(ValueError, match="not divisible by window=4"):            # 24 -> 12 -> 6: 6 % 4
        diffit.forward(params, np.zeros((1, 3, 24, 24), np.float32), np.array([7]), None, cfg)
    with pytest.raises(ValueError, match=r"img_size=10 is not divisible by 2\*\*\(levels-1\)=4"):
        replace(cfg, img_size=10)


def test_the_skips_carry_the_encoder_maps():
    """Zeroing the encoder half of a skip conv changes the output: the concatenation is really used."""
    params = random_params(TINY, 6)
    x, t, y = random_inputs(TINY, seed=7)
    cut = dict(params, **{"skip.0.weight": params["skip.0.weight"].copy()})
    cut["skip.0.weight"][:, TINY.channels:] = 0
    assert np.abs(diffit.forward(cut, x, t, y, TINY) - diffit.forward(params, x, t, y, TINY)).max() > 1e-3


def test_no_label_means_the_null_class_and_labels_change_the_output():
    params = random_params(TINY, 8)
    x, t, _ = random_inputs(TINY, seed=9)
    null = diffit.forward(params, x, t, None, TINY)
    np.testing.assert_array_equal(null, diffit.forward(params, x, t, np.full(2, TINY.null_class), TINY))
    assert np.abs(diffit.forward(params, x, t, np.array([0, 1]), TINY) - null).max() > 1e-3


def test_fresh_model_predicts_zero_and_xs_has_the_intended_size():
    cfg = get_config("diffit-xs", num_classes=10)
    n = sum(int(np.prod(s)) for s in diffit.param_shapes(cfg).values())
    assert 1_000_000 < n < 3_000_000, n
    x, t, y = random_inputs(TINY)
    assert np.abs(diffit.forward(diffit.init_params(TINY), x, t, y, TINY)).max() == 0.0   # zero output conv


@pytest.mark.parametrize("bad, match", [
    (dict(heads=3), "heads=3 does not divide the 8 channels of level 0"),
    (dict(groups=3), "groups=3 does not divide"),
    (dict(window=3), r"window=3 does not divide the 8x8 map of level 0"),
    (dict(window=-1), "window=-1 must be >= 0"),
    (dict(img_size=6, channel_mult=(1, 2, 2)), "not divisible by 2"),
    (dict(channel_mult=()), "needs at least one level"),
    (dict(num_res_blocks=0), "num_res_blocks=0"),
])
def test_bad_configs_raise_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        replace(TINY, **bad)
