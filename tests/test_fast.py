"""Every kernel of the CPU fast path (tinygrad_impl/fast) against the plain path it stands in for: the same values
and the same gradients, on tinygrad's CPU backend and on OpenCL on a CPU (PoCL) where there is one."""
import os

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from tinygrad import Tensor

import tinygrad_impl.layers as TL
from tinygrad_impl import fast
from util import assert_close, opencl_available

seeds = st.integers(0, 2**31 - 1)
# UOp kernels on tinygrad's CPU backend, OpenCL C matmuls on PoCL
DEVICES = ["CPU"] + (["CL"] if opencl_available() and fast.cpu_like("CL") else [])


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def run(fn, arrays, device, on):
    """fn(*tensors) on `device` with the fast path on or off -> (output, gradients of sum(output * g) per input)"""
    with fast.enabled(on):
        assert fast.applies(device) == on
        ts = [Tensor(a, device=device) for a in arrays]
        out = fn(*ts)
        g = Tensor(rand(np.random.default_rng(1), *out.shape), device=device)
        # gradients built before the forward is realized (realizing first cuts the graph at materialized values)
        grads = (out * g).sum().gradient(*ts)
        Tensor.realize(out, *grads)
        return out.numpy(), [x.numpy() for x in grads]


def check_against_plain(fn, arrays, device, what, names=None):
    got, got_grads = run(fn, arrays, device, True)
    want, want_grads = run(fn, arrays, device, False)
    assert_close(want, got, what=f"{what} forward")
    for i, (a, b) in enumerate(zip(want_grads, got_grads)):
        assert_close(a, b, what=f"{what} d{names[i] if names else i}")


# ----------------------------------------------------------------------------
# Matmuls
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@given(seed=seeds, bt=st.integers(1, 3), m=st.integers(2, 40), n=st.integers(2, 40), k=st.integers(2, 20),
       transpose_a=st.booleans(), transpose_b=st.booleans(), bias=st.booleans())
def test_matmul_every_layout(device, seed, bt, m, n, k, transpose_a, transpose_b, bias):
    """fast.matmul, each layout, against NumPy at the sizes it gets (all > 1): on CL tiles of 1-16 rows (the largest
    that divides m) and 1-16 columns"""
    rng = np.random.default_rng(seed)
    a, b, bb = rand(rng, bt, *((k, m) if transpose_a else (m, k))), rand(rng, bt, *((n, k) if transpose_b else (k, n))), rand(rng, n)
    want = (a.transpose(0, 2, 1) if transpose_a else a) @ (b.transpose(0, 2, 1) if transpose_b else b) + (bb if bias else 0)
    got = fast.matmul(Tensor(a, device=device), Tensor(b, device=device), Tensor(bb, device=device) if bias else None,
                      transpose_a, transpose_b)
    assert_close(want, got.numpy(), what="matmul")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)   # every example compiles both paths
@given(seed=seeds, rows=st.integers(2, 20), n_in=st.integers(2, 20), n_out=st.integers(2, 20), bias=st.booleans())
def test_linear(device, seed, rows, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, 2, rows, n_in), rand(rng, n_out, n_in)] + ([rand(rng, n_out)] if bias else [])
    check_against_plain(lambda *t: TL.linear(t[0], t[1], t[2] if bias else None), arrays, device, "linear", "xwb")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)   # every example compiles both paths
@given(seed=seeds, b=st.integers(1, 2), heads=st.integers(1, 3), lq=st.integers(2, 17), lk=st.integers(2, 21),
       d=st.integers(2, 9), bias=st.booleans())
@example(seed=0, b=2, heads=2, lq=16, lk=16, d=4, bias=True)   # DiffiT's windows: one bias per head, shared by all
def test_attention(device, seed, b, heads, lq, lk, d, bias):
    """both batched matmuls, the softmax, the padding of keys when lk is not a multiple of 8, and the bias shared by
    the batch"""
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, b, heads, n, d) for n in (lq, lk, lk)] + ([rand(rng, 1, heads, lq, lk)] if bias else [])
    check_against_plain(lambda *t: TL.attention(*t[:3], t[3] if bias else None), arrays, device, "attention", "qkvb")


# ----------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)   # every example compiles both paths
@given(seed=seeds, b=st.integers(1, 2), c=st.integers(2, 5), k=st.sampled_from([1, 3, 5]), size=st.integers(1, 7),
       bias=st.booleans())
@example(seed=0, b=2, c=3, k=3, size=16, bias=True)     # rows of 16 (on CL a float16 a row)
@example(seed=1, b=1, c=4, k=3, size=8, bias=False)     # two rows of 8 a vector
def test_depthwise_same_conv2d(device, seed, b, c, k, size, bias):
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, b, c, size, size), rand(rng, c, 1, k, k)] + ([rand(rng, c)] if bias else [])
    check_against_plain(lambda *t: TL.conv2d(t[0], t[1], t[2] if bias else None, padding=k // 2, groups=c),
                        arrays, device, "depthwise conv2d", "xwb")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=4)   # every example compiles both paths; the pinned examples cover the layouts the models use
@given(seed=seeds, b=st.integers(1, 2), cin=st.integers(1, 5), cout=st.integers(2, 19), k=st.sampled_from([1, 3, 5]),
       stride=st.sampled_from([1, 2, 3]), padding=st.integers(0, 2), h=st.integers(5, 9), w=st.integers(5, 20),
       bias=st.booleans())
@example(seed=0, b=2, cin=3, cout=16, k=3, stride=1, padding=1, h=6, w=16, bias=True)     # the U-Nets' 3x3 convs
@example(seed=4, b=2, cin=3, cout=8, k=3, stride=1, padding=1, h=8, w=8, bias=False)      # 2 rows of 8 a vector
@example(seed=5, b=1, cin=2, cout=4, k=3, stride=2, padding=1, h=8, w=8, bias=True)       # 4 rows of 4
@example(seed=1, b=1, cin=4, cout=5, k=3, stride=2, padding=1, h=9, w=20, bias=True)      # their downsampling
@example(seed=2, b=2, cin=5, cout=6, k=1, stride=1, padding=0, h=5, w=8, bias=False)      # their skip 1x1 convs
@example(seed=3, b=1, cin=2, cout=3, k=5, stride=2, padding=0, h=9, w=7, bias=True)
def test_conv2d(device, seed, b, cin, cout, k, stride, padding, h, w, bias):
    """groups 1: on CL the direct kernels (stride 1 or 2, padding < k; strided input gradient spread out with zeros),
    otherwise the patches times the weights as the fast linear; rows of 4-20 pixels give tiles of 1-16 pixels, of
    one, two or four rows"""
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, b, cin, h, w), rand(rng, cout, cin, k, k)] + ([rand(rng, cout)] if bias else [])
    check_against_plain(lambda *t: TL.conv2d(t[0], t[1], t[2] if bias else None, stride=stride, padding=padding),
                        arrays, device, "conv2d", "xwb")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)   # every example compiles both paths
@given(seed=seeds, b=st.integers(1, 2), c=st.integers(1, 20), k=st.sampled_from([3, 5]), h=st.integers(2, 6),
       w=st.integers(2, 9))
def test_token_depthwise_conv(device, seed, b, c, k, h, w):
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, b, h * w, c), rand(rng, c, 1, k, k), rand(rng, c)]
    check_against_plain(lambda *t: TL.token_depthwise_conv(*t, (h, w)), arrays, device, "token depthwise", "xwb")


# ----------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)
@given(seed=seeds, b=st.integers(1, 3), groups=st.integers(1, 4), per=st.integers(1, 3), h=st.integers(2, 6),
       w=st.integers(2, 7))
def test_group_norm(device, seed, b, groups, per, h, w):
    rng = np.random.default_rng(seed)
    c = groups * per
    arrays = [rand(rng, b, c, h, w) * 2 + 1, rand(rng, c), rand(rng, c)]
    check_against_plain(lambda *t: TL.group_norm(t[0], groups, t[1], t[2]), arrays, device, "group_norm", "xwb")


# ----------------------------------------------------------------------------
# Elementwise
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_exp_as_arithmetic(device):
    """fast's exp over float32's normal range: within 4e-7 relative of exp (3 ulp); beyond it saturates"""
    x = np.concatenate([np.linspace(-87.3, 88, 20001), [-200.0, 100.0]]).astype(np.float32)
    got = fast.elementwise.exp(Tensor(x, device=device)).numpy().astype(np.float64)
    want = np.exp(np.clip(x.astype(np.float64), np.float32(-87.3), 88.0))
    assert np.abs(got / want - 1).max() < 4e-7


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)
@given(seed=seeds, rows=st.integers(2, 9), d=st.integers(2, 33))
def test_gelu_silu_softmax_layer_norm(device, seed, rows, d):
    rng = np.random.default_rng(seed)
    x = rand(rng, 2, rows, d) * 3
    check_against_plain(lambda t: TL.gelu(t, "erf"), [x], device, "gelu")
    check_against_plain(TL.silu, [x], device, "silu")
    check_against_plain(lambda t: TL.softmax(t, -1), [x], device, "softmax")
    check_against_plain(lambda *t: TL.layer_norm(*t), [x + 1, rand(rng, d), rand(rng, d)], device, "layer_norm", "xwb")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=5)
@given(seed=seeds, b=st.integers(1, 3), length=st.integers(2, 9), d=st.integers(2, 33))
def test_modulate(device, seed, b, length, d):
    rng = np.random.default_rng(seed)
    check_against_plain(TL.modulate, [rand(rng, b, length, d), rand(rng, b, d), rand(rng, b, d)], device, "modulate",
                        ("x", "shift", "scale"))


def test_the_switch_turns_the_fast_path_off():
    """with fast.enabled(False) (what FAST=0 does) layers build tinygrad's own ops: no custom kernel in the graph"""
    x, w = Tensor.ones(4, 8, device="CPU"), Tensor.ones(16, 8, device="CPU")
    ops = {}
    for on in (True, False):
        with fast.enabled(on):
            ops[on] = {u.op.name for u in TL.linear(x, w).uop.toposort()}
    assert "CALL" in ops[True] and "CALL" not in ops[False]


@pytest.mark.skipif("CL" not in DEVICES, reason="no OpenCL device on a CPU (install pocl-opencl-icd)")
def test_no_compiler_warnings_on_opencl(tmp_path):
    """importing tinygrad_impl keeps PoCL's "1 warning generated." (tinygrad renders `if ((a==b))`) out of the
    terminal: a reduction compiled from cold caches prints nothing"""
    import subprocess
    import sys
    code = "import tinygrad_impl; from tinygrad import Tensor; Tensor.rand(64, 64, device='CL').sum().realize()"
    env = dict(os.environ, CCACHE="0", POCL_CACHE_DIR=str(tmp_path))   # no tinygrad or PoCL program cache
    env.pop("POCL_EXTRA_BUILD_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stdout + out.stderr


def test_fast_0_in_the_environment_turns_the_fast_path_off():
    import subprocess
    import sys
    code = "from tinygrad_impl import fast; print(fast.applies('CPU'))"
    says = {v: subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FAST=v), capture_output=True,
                              text=True, timeout=120).stdout.strip() for v in ("0", "1")}
    assert says == {"0": "False", "1": "True"}
