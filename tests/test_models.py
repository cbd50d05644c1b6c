"""Every architecture, both backends: forward agreement, weight files both ways, gradients, bad inputs.
Parametrised over the `<arch>-tiny` presets, so a new architecture is covered as soon as it has one."""
from dataclasses import replace

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import weights as np_weights
from numpy_ref.configs import PRESETS
from numpy_ref.models import get_model as np_model
from tinygrad_impl import weights as tg_weights
from tinygrad_impl.models import get_model as tg_model
from util import assert_close, both_forwards, random_inputs, random_params

TINY = sorted(name for name in PRESETS if name.endswith("-tiny"))


def test_every_architecture_has_a_tiny_preset():
    from numpy_ref.configs import ARCHS
    have = {PRESETS[n].arch for n in TINY}
    missing = [a for a in ARCHS if a not in have and (__import__("importlib").util.find_spec(f"numpy_ref.models.{a}"))]
    assert not missing, f"architectures without a -tiny preset: {missing}"


@pytest.mark.usefixtures("both_paths")   # the fast path and the plain path
@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("conditional", [True, False])
def test_forward_agreement(preset, conditional):
    cfg = PRESETS[preset] if conditional else replace(PRESETS[preset], num_classes=0)
    params = random_params(cfg, seed=1)
    x, t, y = random_inputs(cfg, batch=2, seed=2)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert np.abs(ref).max() > 1e-2, "the reference output is ~0: the comparison would prove nothing"
    assert_close(ref, out, what=preset)


@pytest.mark.parametrize("preset", TINY)
def test_init_params_are_the_same_on_both_sides(preset):
    cfg = PRESETS[preset]
    a = np_model(cfg.arch).init_params(cfg, seed=3)
    b = tg_model(cfg.arch).init_params(cfg, seed=3)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy(), err_msg=k)
    np_weights.check_params(a, cfg)   # init_params follows param_shapes


@pytest.mark.parametrize("preset", TINY)
def test_weights_written_by_one_side_read_by_the_other(preset, tmp_path):
    cfg = PRESETS[preset]
    params = random_params(cfg, seed=4)
    x, t, y = random_inputs(cfg, seed=5)
    ref = np_model(cfg.arch).forward(params, x, t, y, cfg)
    # numpy writes, tinygrad reads
    np_weights.save_weights(tmp_path / "a.safetensors", params, cfg, {"step": 7})
    p_tg, cfg_tg, meta = tg_weights.load_weights(tmp_path / "a.safetensors")
    assert cfg_tg == cfg and meta == {"step": 7}
    yt = None if y is None else Tensor(y.astype(np.int32))
    out = tg_model(cfg.arch).forward(p_tg, Tensor(x), Tensor(t.astype(np.float32)), yt, cfg).numpy()
    assert_close(ref, out, what=f"{preset} numpy->tinygrad")
    # tinygrad writes, numpy reads: bit-exact round trip
    tg_weights.save_weights(tmp_path / "b.safetensors", p_tg, cfg)
    p_np, cfg_np, _ = np_weights.load_weights(tmp_path / "b.safetensors")
    assert cfg_np == cfg
    for k in params:
        np.testing.assert_array_equal(params[k], p_np[k], err_msg=k)
    np.testing.assert_array_equal(np_model(cfg.arch).forward(p_np, x, t, y, cfg), ref)


@pytest.mark.parametrize("preset", TINY)
def test_weight_file_with_a_missing_or_misshaped_tensor_is_named(preset, tmp_path):
    from safetensors.numpy import save_file
    cfg = PRESETS[preset]
    params = random_params(cfg)
    np_weights.save_weights(tmp_path / "ok.safetensors", params, cfg)
    tensors, _, _ = np_weights.read_file(tmp_path / "ok.safetensors")
    meta = {"format": np_weights.FORMAT, "config": cfg.to_json(), "meta": "{}"}
    victim = sorted(params)[len(params) // 2]
    missing = {k: v for k, v in tensors.items() if k != victim}
    save_file(missing, tmp_path / "missing.safetensors", metadata=meta)
    bad = dict(tensors, **{victim: np.zeros((3, 5), np.float32)})
    save_file(bad, tmp_path / "bad.safetensors", metadata=meta)
    for loader in (np_weights.load_weights, tg_weights.load_weights):
        with pytest.raises(ValueError, match=f"missing tensor '{victim}'"):
            loader(tmp_path / "missing.safetensors")
        with pytest.raises(ValueError, match=f"tensor '{victim}' has shape \\(3, 5\\)"):
            loader(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("preset", TINY)
def test_gradient_matches_finite_differences_of_numpy(preset):
    """tinygrad's gradient of L = sum(eps * R) equals central differences of the float64 NumPy forward."""
    cfg = PRESETS[preset]
    params64 = random_params(cfg, seed=6, dtype=np.float64)
    x, t, y = random_inputs(cfg, batch=2, seed=7, dtype=np.float64)
    R = np.random.default_rng(8).standard_normal(x.shape)
    fwd = np_model(cfg.arch).forward
    loss = lambda p: float((fwd(p, x, t, y, cfg) * R).sum())  # noqa: E731

    names = sorted(params64)
    chosen = [names[0], names[len(names) // 3], names[2 * len(names) // 3], names[-1]]
    p_tg = {k: Tensor(v.astype(np.float32)) for k, v in params64.items()}
    yt = None if y is None else Tensor(y.astype(np.int32))
    out = tg_model(cfg.arch).forward(p_tg, Tensor(x.astype(np.float32)), Tensor(t.astype(np.float32)), yt, cfg)
    grads = (out * Tensor(R.astype(np.float32))).sum().gradient(*[p_tg[k] for k in chosen])

    rng = np.random.default_rng(9)
    for name, g in zip(chosen, grads):
        g = g.numpy()
        for idx in [tuple(rng.integers(0, s) for s in params64[name].shape) for _ in range(3)]:
            h = 1e-5
            p_plus = dict(params64); p_plus[name] = params64[name].copy(); p_plus[name][idx] += h
            p_minus = dict(params64); p_minus[name] = params64[name].copy(); p_minus[name][idx] -= h
            fd = (loss(p_plus) - loss(p_minus)) / (2 * h)
            assert abs(g[idx] - fd) <= 1e-3 + 1e-2 * abs(fd), f"{preset} d/d{name}{list(idx)}: tinygrad {g[idx]:.6g}, FD {fd:.6g}"


@pytest.mark.parametrize("preset", TINY)
def test_bad_inputs_raise_a_clear_value_error(preset):
    cfg = PRESETS[preset]
    params = random_params(cfg)
    x, t, y = random_inputs(cfg)
    for fwd, wrap, p in ((np_model(cfg.arch).forward, lambda a: a, params),
                         (tg_model(cfg.arch).forward, Tensor, {k: Tensor(v) for k, v in params.items()})):
        wrong_c = np.zeros((2, cfg.in_channels + 1, cfg.img_size, cfg.img_size), np.float32)
        with pytest.raises(ValueError, match="channels"):
            fwd(p, wrap(wrong_c), t, y, cfg)
        with pytest.raises(ValueError, match="class id out of range"):
            fwd(p, wrap(x), t, np.array([0, cfg.num_classes + 1]), cfg)
        with pytest.raises(ValueError, match="not divisible|size"):
            odd = np.zeros((2, cfg.in_channels, cfg.img_size + 1, cfg.img_size + 1), np.float32)
            fwd(p, wrap(odd), t, y, cfg)
