"""Each numpy_ref layer against tinygrad's own ops (and the tinygrad_impl twin) on random shapes, with the CPU fast
path on and off (the plain path is what GPUs run; tests/test_fast.py compares the two kernel by kernel)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor, nn

import numpy_ref.layers as L
import tinygrad_impl.layers as TL
from util import assert_close

pytestmark = pytest.mark.usefixtures("both_paths")
small = st.integers(1, 3)
seeds = st.integers(0, 2**31 - 1)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@given(seed=seeds, b=small, n_in=st.integers(1, 9), n_out=st.integers(1, 9), bias=st.booleans())
def test_linear(seed, b, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x, w, bb = rand(rng, b, 3, n_in), rand(rng, n_out, n_in), rand(rng, n_out) if bias else None
    ref = L.linear(x, w, bb)
    assert_close(ref, Tensor(x).linear(Tensor(w).T, None if bb is None else Tensor(bb)).numpy(), what="linear")
    assert_close(ref, TL.linear(Tensor(x), Tensor(w), None if bb is None else Tensor(bb)).numpy(), what="TL.linear")


@given(seed=seeds, b=small, cg=st.integers(1, 3), groups=st.sampled_from([1, 2]), cout_g=st.integers(1, 3),
       k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), size=st.integers(4, 9))
def test_conv2d(seed, b, cg, groups, cout_g, k, stride, padding, size):
    rng = np.random.default_rng(seed)
    x, w, bias = rand(rng, b, cg * groups, size, size), rand(rng, cout_g * groups, cg, k, k), rand(rng, cout_g * groups)
    ref = L.conv2d(x, w, bias, stride=stride, padding=padding, groups=groups)
    out = Tensor(x).conv2d(Tensor(w), Tensor(bias), groups=groups, stride=stride, padding=padding).numpy()
    assert_close(ref, out, what="conv2d")
    assert_close(ref, TL.conv2d(Tensor(x), Tensor(w), Tensor(bias), stride, padding, groups).numpy(), what="TL.conv2d")


@given(seed=seeds, b=small, c=st.integers(2, 5), k=st.sampled_from([1, 3, 5]), size=st.integers(1, 7), bias=st.booleans())
def test_depthwise_conv2d_and_its_gradient(seed, b, c, k, size, bias):
    """TL.conv2d, depthwise 'same' (on a CPU the fast path, with its own backward), against numpy_ref and tinygrad's
    autograd of x.conv2d"""
    rng = np.random.default_rng(seed)
    x, w, bb, r = rand(rng, b, c, size, size), rand(rng, c, 1, k, k), rand(rng, c) if bias else None, rand(rng, b, c, size, size)
    ts = [Tensor(a) for a in (x, w) + ((bb,) if bias else ())]
    out = TL.conv2d(ts[0], ts[1], ts[2] if bias else None, padding=k // 2, groups=c)
    assert_close(L.conv2d(x, w, bb, padding=k // 2, groups=c), out.numpy(), what="depthwise forward")
    ref = ts[0].conv2d(ts[1], ts[2] if bias else None, groups=c, padding=k // 2)
    for got, want, name in zip((out * Tensor(r)).sum().gradient(*ts), (ref * Tensor(r)).sum().gradient(*ts), "xwb"):
        assert_close(want.numpy(), got.numpy(), what=f"depthwise d{name}")


@given(seed=seeds, b=small, c=st.integers(1, 20), k=st.sampled_from([1, 3, 5]), h=st.integers(1, 6), w=st.integers(1, 9))
def test_token_depthwise_conv_and_its_gradient(seed, b, c, k, h, w):
    """token_depthwise_conv == the depthwise 'same' conv2d of the token map (numpy_ref against conv2d, TL against
    numpy_ref), and TL's gradients == tinygrad's autograd of x.conv2d on the map"""
    rng = np.random.default_rng(seed)
    x, wt, bb, g = rand(rng, b, h * w, c), rand(rng, c, 1, k, k), rand(rng, c), rand(rng, b, h * w, c)
    as_map = lambda z: z.transpose(0, 2, 1).reshape(b, c, h, w)                      # (B, L, C) -> (B, C, H, W)
    ref = L.token_depthwise_conv(x, wt, bb, (h, w))
    assert_close(as_map(ref), L.conv2d(as_map(x), wt, bb, padding=k // 2, groups=c), what="numpy token depthwise")
    ts, g = [Tensor(a, device="CPU") for a in (x, wt, bb)], Tensor(g, device="CPU")
    out = TL.token_depthwise_conv(*ts, (h, w))
    want = ts[0].transpose(1, 2).reshape(b, c, h, w).conv2d(ts[1], ts[2], groups=c, padding=k // 2)
    want = want.reshape(b, c, h * w).transpose(1, 2)
    grads = zip((out * g).sum().gradient(*ts), (want * g).sum().gradient(*ts), "xwb")
    assert_close(ref, out.numpy(), what="TL token depthwise forward")
    for got, exp, name in grads:
        assert_close(exp.numpy(), got.numpy(), what=f"token depthwise d{name}")


@given(seed=seeds, cin=small, cout=small, k=st.integers(1, 4), stride=st.integers(1, 3), size=st.integers(2, 6))
def test_conv_transpose2d(seed, cin, cout, k, stride, size):
    rng = np.random.default_rng(seed)
    padding = min(k - 1, 1)
    x, w, bias = rand(rng, 2, cin, size, size), rand(rng, cin, cout, k, k), rand(rng, cout)
    ref = L.conv_transpose2d(x, w, bias, stride=stride, padding=padding)
    out = Tensor(x).conv_transpose2d(Tensor(w), Tensor(bias), stride=stride, padding=padding).numpy()
    assert_close(ref, out, what="conv_transpose2d")


@given(seed=seeds, d=st.integers(2, 33), affine=st.booleans(), eps=st.sampled_from([1e-6, 1e-5]))
def test_layer_norm(seed, d, affine, eps):
    """numpy_ref, tinygrad's nn.LayerNorm and TL.layer_norm agree, and so do TL's gradients and nn.LayerNorm's"""
    rng = np.random.default_rng(seed)
    x, g = rand(rng, 2, 5, d) * 3 + 1, rand(rng, 2, 5, d)
    w, b = (rand(rng, d), rand(rng, d)) if affine else (None, None)
    ref = L.layer_norm(x, w, b, eps)
    ln = nn.LayerNorm(d, eps=eps, elementwise_affine=affine)
    ts = [Tensor(a, device="CPU") for a in (x, w, b) if a is not None]
    if affine:
        ln.weight, ln.bias = ts[1:]
    want, out = ln(ts[0]), TL.layer_norm(*ts, *(() if affine else (None, None)), eps)
    grads = zip((out * Tensor(g)).sum().gradient(*ts), (want * Tensor(g)).sum().gradient(*ts), "xwb")
    assert_close(ref, want.numpy(), what="layer_norm")
    assert_close(ref, out.numpy(), what="TL.layer_norm")
    for got, exp, name in grads:
        assert_close(exp.numpy(), got.numpy(), what=f"layer_norm d{name}")


@given(seed=seeds, groups=st.sampled_from([1, 2, 4]), per=st.integers(1, 3), size=st.integers(1, 6))
def test_group_norm(seed, groups, per, size):
    rng = np.random.default_rng(seed)
    C = groups * per
    x, w, b = rand(rng, 2, C, size, size) * 2 - 1, rand(rng, C), rand(rng, C)
    gn = nn.GroupNorm(groups, C, eps=1e-5)
    gn.weight, gn.bias = Tensor(w), Tensor(b)
    ref = L.group_norm(x, groups, w, b)
    assert_close(ref, gn(Tensor(x)).numpy(), what="group_norm")
    assert_close(ref, TL.group_norm(Tensor(x), groups, Tensor(w), Tensor(b)).numpy(), what="TL.group_norm")


def test_activations_against_tinygrad_and_closed_forms():
    x = np.linspace(-6, 6, 240).astype(np.float32)
    tx = Tensor(x)
    erf_exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(L.erf(x.astype(np.float64)) - erf_exact).max() < 2e-7
    assert_close(L.gelu(x, "erf"), tx.gelu(approximate="none").numpy(), what="gelu erf")
    assert_close(L.gelu(x, "tanh"), tx.gelu().numpy(), what="gelu tanh")
    gelu_exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x.astype(np.float64)]))
    assert_close(L.gelu(x, "erf"), gelu_exact, atol=1e-6, what="gelu erf closed form")
    assert_close(L.silu(x), tx.silu().numpy(), what="silu")
    assert_close(L.softmax(x.reshape(3, -1)), tx.reshape(3, -1).softmax().numpy(), what="softmax")
    assert_close(L.softmax(x.reshape(3, -1)), TL.softmax(tx.reshape(3, -1)).numpy(), what="TL.softmax")
    for name in ("gelu", "silu", "sigmoid"):
        assert_close(getattr(L, name)(x), getattr(TL, name)(tx).numpy(), what=f"TL.{name}")
    # the gradients of tinygrad's own formulas
    tx, g = Tensor(x.reshape(3, -1), device="CPU"), Tensor(np.cos(x).reshape(3, -1), device="CPU")
    for got, want, name in ((TL.gelu(tx), tx.gelu(approximate="none"), "gelu"), (TL.softmax(tx), tx.softmax(), "softmax")):
        assert_close((want * g).sum().gradient(tx)[0].numpy(), (got * g).sum().gradient(tx)[0].numpy(), what=f"d TL.{name}")


@given(seed=seeds, b=small, h=st.integers(1, 3), lq=st.integers(1, 7), lk=st.integers(1, 7), d=st.integers(1, 8),
       shared_kv=st.booleans())
def test_attention(seed, b, h, lq, lk, d, shared_kv):
    rng = np.random.default_rng(seed)
    hk = 1 if shared_kv else h   # one K/V head broadcast over all query heads (multi-query attention)
    q, k, v = rand(rng, b, h, lq, d), rand(rng, b, hk, lk, d), rand(rng, b, hk, lk, d)
    bias = rand(rng, h, lq, lk)
    ref = L.attention(q, k, v, bias)
    kt, vt = Tensor(k).expand(b, h, lk, d), Tensor(v).expand(b, h, lk, d)
    out = Tensor(q).scaled_dot_product_attention(kt, vt, attn_mask=Tensor(bias)).numpy()
    assert_close(ref, out, what="attention")
    assert_close(ref, TL.attention(Tensor(q), Tensor(k), Tensor(v), Tensor(bias)).numpy(), what="TL.attention")


@given(seed=seeds, heads=st.sampled_from([1, 2, 4]), d=st.sampled_from([2, 4]), n=st.integers(1, 6), qkv_bias=st.booleans())
def test_multi_head_attention(seed, heads, d, n, qkv_bias):
    rng = np.random.default_rng(seed)
    D = heads * d
    p = {"a.qkv.weight": rand(rng, 3 * D, D), "a.proj.weight": rand(rng, D, D), "a.proj.bias": rand(rng, D)}
    if qkv_bias:
        p["a.qkv.bias"] = rand(rng, 3 * D)
    x = rand(rng, 2, n, D)
    ref = L.multi_head_attention(x, p, "a", heads)
    # against tinygrad's own attention with explicit per-head reshapes
    qkv = Tensor(x).linear(Tensor(p["a.qkv.weight"]).T, Tensor(p["a.qkv.bias"]) if qkv_bias else None)
    q, k, v = [z.reshape(2, n, heads, d).transpose(1, 2) for z in qkv.chunk(3, -1)]
    o = q.scaled_dot_product_attention(k, v).transpose(1, 2).reshape(2, n, D)
    out = o.linear(Tensor(p["a.proj.weight"]).T, Tensor(p["a.proj.bias"])).numpy()
    assert_close(ref, out, what="mha")
    assert_close(ref, TL.multi_head_attention(Tensor(x), {k_: Tensor(v_) for k_, v_ in p.items()}, "a", heads).numpy())


@given(dim=st.integers(1, 17), t=st.lists(st.integers(0, 999), min_size=1, max_size=4))
def test_timestep_embedding(dim, t):
    ref = L.timestep_embedding(np.array(t), dim)
    assert ref.shape == (len(t), dim)
    half = dim // 2
    if half:   # closed form of the first frequency: cos(t), sin(t)
        np.testing.assert_allclose(ref[:, 0], np.cos(t), atol=1e-6)
        np.testing.assert_allclose(ref[:, half], np.sin(t), atol=1e-6)
    out = TL.timestep_embedding(Tensor(np.array(t, np.float32)), dim).numpy()
    assert_close(ref, out, atol=2e-4, what="timestep_embedding")   # float32 sin/cos of args up to 1000


@given(seed=seeds, r=st.integers(1, 3), c=small, h=small, w=small)
def test_depth_to_space_matches_pixel_shuffle(seed, r, c, h, w):
    rng = np.random.default_rng(seed)
    x = rand(rng, 2, c * r * r, h, w)
    ref = L.depth_to_space(x, r)
    # PyTorch pixel_shuffle: out[b, ch, i*r+a, j*r+bb] = x[b, ch*r*r + a*r + bb, i, j]
    for ch, a, bb, i, j in [(rng.integers(c), rng.integers(r), rng.integers(r), rng.integers(h), rng.integers(w))
                            for _ in range(5)]:
        assert ref[1, ch, i * r + a, j * r + bb] == x[1, ch * r * r + a * r + bb, i, j]
    np.testing.assert_array_equal(TL.depth_to_space(Tensor(x), r).numpy(), ref)
    np.testing.assert_array_equal(L.space_to_depth(ref, r), x)
    np.testing.assert_array_equal(TL.space_to_depth(Tensor(ref), r).numpy(), x)


def test_modulate_and_embedding():
    rng = np.random.default_rng(0)
    x, shift, scale = rand(rng, 2, 3, 4), rand(rng, 2, 4), rand(rng, 2, 4)
    ref = L.modulate(x, shift, scale)
    np.testing.assert_allclose(ref[1, 2], x[1, 2] * (1 + scale[1]) + shift[1], rtol=1e-6)
    assert_close(ref, TL.modulate(Tensor(x), Tensor(shift), Tensor(scale)).numpy())
    # the gradients of the formula
    ts, g = [Tensor(a, device="CPU") for a in (x, shift, scale)], Tensor(rand(rng, 2, 3, 4), device="CPU")
    want = ts[0] * (1 + ts[2].unsqueeze(1)) + ts[1].unsqueeze(1)
    grads = zip((TL.modulate(*ts) * g).sum().gradient(*ts), (want * g).sum().gradient(*ts), ("x", "shift", "scale"))
    for got, exp, name in grads:
        assert_close(exp.numpy(), got.numpy(), what=f"modulate d{name}")
    table = rand(rng, 5, 3)
    np.testing.assert_array_equal(L.embedding([4, 0], table), table[[4, 0]])
    np.testing.assert_array_equal(TL.embedding(np.array([4, 0]), Tensor(table)).numpy(), table[[4, 0]])
