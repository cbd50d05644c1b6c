"""AdamW over flat state: the views follow their buffer, and one update (the CPU kernels and tinygrad's own ops)
equals AdamW with clipping, decoupled decay and an EMA written in NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor

from tinygrad_impl import adamw, fast

DEVICE = "CPU"
SHAPES = st.lists(st.one_of(st.tuples(st.integers(1, 40)), st.tuples(st.integers(1, 9), st.integers(1, 9))),
                  min_size=1, max_size=5)


def numpy_adamw(parts, grads, lr, decay, bc1, bc2, weight_decay, clip):
    """The reference: AdamW as in train.py's docstring, in float64, per parameter"""
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    scale = min(1.0, clip / (norm + 1e-6))
    b1, b2 = adamw.BETAS
    out = {part: {} for part in parts}
    for k, g in grads.items():
        g = g.astype(np.float64) * scale
        p, m, v, e = (parts[part][k].astype(np.float64) for part in ("params", "m", "v", "ema"))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        update = (m / bc1) / (np.sqrt(v / bc2) + adamw.ADAM_EPS)
        p = p - lr * (update + weight_decay * p if g.ndim >= 2 else update)
        for part, x in (("params", p), ("m", m), ("v", v), ("ema", decay * e + (1 - decay) * p)):
            out[part][k] = x
    return norm, out


def random_parts(shapes, rng):
    parts = {part: {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for part in ("params", "m", "ema")}
    parts["v"] = {k: rng.random(s).astype(np.float32) for k, s in shapes.items()}
    return parts


def test_views_follow_their_flat_buffer():
    shapes = {"w": (3, 4), "b": (5,), "k": (2, 1, 3, 3)}
    rng = np.random.default_rng(0)
    parts = random_parts(shapes, rng)
    state = adamw.pack_state(parts, shapes, DEVICE)
    assert state["flat"]["params"].shape == (12 + 5 + 18,)
    for k in shapes:   # packed in the order of shapes, each view showing its own values
        np.testing.assert_array_equal(state["m"][k].numpy(), parts["m"][k])
    state["params"]["b"].numpy()   # reading a view (realizing a copy of it) does not detach it from the buffer
    state["flat"]["params"].assign(state["flat"]["params"] * 2).realize()
    np.testing.assert_array_equal(state["params"]["b"].numpy(), 2 * parts["params"]["b"])
    with pytest.raises(KeyError):
        adamw.pack_state({"params": {"w": parts["params"]["w"]}}, shapes, DEVICE)


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu-kernels", "tinygrad-ops"])
@settings(max_examples=6, deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2**16), weight_decay=st.sampled_from([0.0, 0.05]),
       clip=st.sampled_from([0.5, 1e3]))
def test_one_update_is_adamw(kernels, shapes, seed, weight_decay, clip):
    # both paths run for real: the fast path's two kernels, and the plain update with the switch off
    with fast.enabled(kernels):
        check_one_update(shapes, seed, weight_decay, clip)


def check_one_update(shapes, seed, weight_decay, clip):
    shapes = {f"p{i}": s for i, s in enumerate(shapes)}
    rng = np.random.default_rng(seed)
    parts, grads = random_parts(shapes, rng), {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    state = adamw.pack_state(parts, shapes, DEVICE)
    lr, decay, bc1, bc2 = 0.05, 0.7, 0.19, 0.002
    norm = adamw.adamw_update(state, [Tensor(grads[k], device=DEVICE) for k in shapes],
                              *(Tensor([x], device=DEVICE) for x in (lr, decay, bc1, bc2)), weight_decay, clip)
    Tensor.realize(norm, *state["flat"].values())
    want_norm, want = numpy_adamw(parts, grads, lr, decay, bc1, bc2, weight_decay, clip)
    assert norm.item() == pytest.approx(want_norm, rel=1e-5)
    for part in want:
        for k in shapes:
            np.testing.assert_allclose(state[part][k].numpy(), want[part][k], rtol=1e-5, atol=1e-6, err_msg=f"{part} {k}")


def test_many_parameters_take_several_kernels():
    # U-ViT has 116 parameters; tinygrad's CPU backend passes at most 63 arguments to a kernel
    shapes = [(3, 5), (7,), (4, 4), (1,)] * 33
    assert len(shapes) > 2 * fast.adamw.MAX_GRADS
    check_one_update(shapes, seed=1, weight_decay=0.05, clip=0.5)
