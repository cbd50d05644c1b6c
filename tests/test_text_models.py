"""Text-conditioned models (issue #23, deliverable 3): every architecture with a tiny text encoder, both backends.
Forward agreement, gradients of the text encoder and the cross-attention against finite differences, the zero-init
gates at a fresh start, padding invariance, the empty prompt (the null condition), bad token ids and configs."""
from dataclasses import replace

import numpy as np
import pytest
from tinygrad import Tensor

import numpy_ref.text as T
from numpy_ref import weights as np_weights
from numpy_ref.configs import (ARCHS, PRESETS, SETTABLE, ModelConfig, check_inputs, drop_condition, null_condition,
                               text_config)
from numpy_ref.models import get_model as np_model
from tinygrad_impl import weights as tg_weights
from tinygrad_impl.models import get_model as tg_model
from tinygrad_impl.weights import to_tensors
from util import assert_close, random_params

TEXT = dict(num_classes=0, text_vocab=12, text_len=6, text_width=16, text_depth=1, text_heads=2)
# the -tiny presets cut further where text needs no more (fewer kernels: each tinygrad graph is costly to build)
SMALLER = {"tokenfree": dict(depth=2), "uvit": dict(depth=1), "unet": dict(channel_mult=(1,), attn_levels=(0,)),
           "diffit": dict(channel_mult=(1,))}


def text_cfg(arch, **kw):
    return replace(PRESETS[f"{arch}-tiny"], **TEXT, **{**SMALLER.get(arch, {}), **kw})


def prompts(seed=0):
    """(3, 5) token ids: a 4-word prompt, a 1-word prompt, the empty prompt (all PAD)"""
    rng = np.random.default_rng(seed)
    ids = np.zeros((3, 5), np.int64)
    ids[0, :4] = rng.integers(1, TEXT["text_vocab"], 4)
    ids[1, :1] = rng.integers(1, TEXT["text_vocab"], 1)
    return ids


def inputs(cfg, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (3, cfg.in_channels, cfg.img_size, cfg.img_size)).astype(dtype)
    return x, rng.integers(0, 1000, 3), prompts(seed)


# ----------------------------------------------------------------------------
# Config and parameters
# ----------------------------------------------------------------------------

def test_text_config_fields_and_checks():
    cfg = text_cfg("tokenfree")
    assert text_config(cfg) == T.TextConfig(vocab_size=12, max_len=6, width=16, depth=1, heads=2)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert "text_vocab" not in SETTABLE and "text_width" in SETTABLE       # the data decides the vocabulary size
    with pytest.raises(ValueError, match="text_vocab=12 and num_classes=4 are exclusive"):
        replace(cfg, num_classes=4)
    with pytest.raises(ValueError, match="text_heads=3 does not divide text_width=16"):
        replace(cfg, text_heads=3)
    with pytest.raises(ValueError, match="text_vocab=1 must be 0"):
        replace(cfg, text_vocab=1)
    with pytest.raises(ValueError, match="text_len=0 must be >= 1"):
        replace(cfg, text_len=0)
    with pytest.raises(ValueError, match="no text conditioning"):
        text_config(PRESETS["tokenfree-tiny"])


def test_defaults_have_no_text():
    for name, cfg in PRESETS.items():
        assert cfg.text_vocab == 0
        assert not any(k.startswith(("text", "context_embed")) or ".cross." in k
                       for k in np_model(cfg.arch).param_shapes(cfg)), name
    # a config written before the text fields existed still loads
    old = {k: v for k, v in PRESETS["uvit-tiny"].__dict__.items() if not k.startswith("text_")}
    assert ModelConfig(**old) == PRESETS["uvit-tiny"]


@pytest.mark.parametrize("arch", ARCHS)
def test_text_params_live_in_the_model(arch):
    cfg = text_cfg(arch)
    shapes = np_model(arch).param_shapes(cfg)
    text = T.param_shapes(text_config(cfg))
    assert all(shapes[k] == v for k, v in text.items())
    assert "label_embed.weight" not in shapes and "label_emb.weight" not in shapes
    a, b = np_model(arch).init_params(cfg, seed=3), tg_model(arch).init_params(cfg, seed=3)
    assert list(a) == list(shapes) and sorted(b) == sorted(a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy(), err_msg=k)
    for k, v in T.init_params(text_config(cfg), seed=3).items():      # the text encoder's own initialisation
        np.testing.assert_array_equal(a[k], v, err_msg=k)
    np_weights.check_params(a, cfg)
    if arch == "uvit":
        assert shapes["pos_embed"][1] == 1 + cfg.text_len + (cfg.img_size // cfg.stride) ** 2
        assert shapes["context_embed.weight"] == (cfg.width, cfg.text_width)
    else:
        assert any(".cross.kv.weight" in k for k in shapes) and "text_pool.weight" in shapes


def test_shared_block_shares_its_cross_attention():
    cfg = text_cfg("tokenfree", share_blocks=True)
    cross = [k for k in np_model("tokenfree").param_shapes(cfg) if ".cross." in k]
    assert cross and all(k.startswith("blocks.0.cross.") for k in cross)


# ----------------------------------------------------------------------------
# Forward and gradients, both backends
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_text_forward_and_gradients_agree(arch):
    """One tinygrad graph per architecture (building one costs tens of seconds on a busy CPU): its output matches the
    NumPy forward (float32; the batch holds a long, a short and the empty prompt), and its gradient of
    L = sum(eps * R) for text-encoder, pooling/projection and cross-attention parameters matches central differences
    of the float64 NumPy forward, at the largest gradient entry and at a random one."""
    cfg = text_cfg(arch)
    params64 = random_params(cfg, seed=6, dtype=np.float64)
    x, t, y = inputs(cfg, seed=7, dtype=np.float64)
    R = np.random.default_rng(8).standard_normal(x.shape)
    fwd = np_model(arch).forward
    names = list(params64)
    first = lambda part: next(k for k in names if part in k)  # noqa: E731
    chosen = ["text.tok_embed.weight", "text.layers.0.attn.qkv.weight",
              "context_embed.weight" if arch == "uvit" else "text_pool.weight"]
    if arch != "uvit":
        chosen += [first(".cross.kv.weight"), first(".cross.q.weight"),
                   first(".cross.ada.weight" if arch == "tokenfree" else ".cross.norm.weight")]
    p_tg = {k: Tensor(v.astype(np.float32)) for k, v in params64.items()}
    out = tg_model(arch).forward(p_tg, Tensor(x.astype(np.float32)), Tensor(t.astype(np.float32)),
                                 Tensor(y.astype(np.int32)), cfg)
    if arch in ("mobile_unet", "snapgen_unet"):   # their cross-attention and pooling are the same functions as unet's,
        chosen = []                                # whose gradients are checked: here the forward only (compiles 3x faster)
    grads = (out * Tensor(R.astype(np.float32))).sum().gradient(*[p_tg[k] for k in chosen]) if chosen else []
    Tensor.realize(out, *grads)

    ref = fwd({k: v.astype(np.float32) for k, v in params64.items()}, x.astype(np.float32), t, y, cfg)
    assert np.abs(ref).max() > 1e-2 and np.abs(ref[0] - ref[2]).max() > 1e-3, "the prompt must matter"
    assert_close(ref, out.numpy(), what=arch)

    loss = lambda p: float((fwd(p, x, t, y, cfg) * R).sum())  # noqa: E731
    rng = np.random.default_rng(9)
    for name, g in zip(chosen, grads):
        g = g.numpy()
        assert np.abs(g).max() > 1e-4, f"{arch}: no gradient reaches {name}"
        for idx in (np.unravel_index(np.abs(g).argmax(), g.shape), tuple(rng.integers(0, s) for s in g.shape)):
            h = 1e-5
            p_plus = dict(params64); p_plus[name] = params64[name].copy(); p_plus[name][idx] += h
            p_minus = dict(params64); p_minus[name] = params64[name].copy(); p_minus[name][idx] -= h
            fd = (loss(p_plus) - loss(p_minus)) / (2 * h)
            assert abs(g[idx] - fd) <= 1e-3 + 1e-2 * abs(fd), f"{arch} d/d{name}{list(idx)}: tinygrad {g[idx]:.6g}, FD {fd:.6g}"


@pytest.mark.usefixtures("both_paths")   # the fast path and the plain path
def test_text_conditioning_pieces_agree():
    """The shared pieces on small graphs: the encoded prompt (padded inside from L = 4, and y=None, the null
    condition) and a cross-attention with a key padding mask, queries longer than the text."""
    import numpy_ref.models.text_cond as N
    import tinygrad_impl.models.text_cond as G
    cfg = text_cfg("unet")
    params = random_params(cfg, seed=3)
    p_tg = to_tensors(params)
    x = np.random.default_rng(4).standard_normal((3, 10, cfg.channels)).astype(np.float32)   # (B, L, D)
    prefix = next(k for k in params if k.endswith(".cross.q.weight"))[:-len(".q.weight")]
    for y in (prompts()[:, :4], None):
        a = N.encode(params, y, cfg, 3)
        b = G.encode(p_tg, None if y is None else Tensor(y.astype(np.int32)), cfg, 3)
        for name, u, v in zip(a._fields, a, b):
            assert_close(u, v.numpy(), what=f"{name} y={'None' if y is None else 'L=4'}")
        assert_close(N.cross_attention(params, prefix, x, a, cfg.heads),
                     G.cross_attention(p_tg, prefix, Tensor(x), b, cfg.heads).numpy(), what="cross_attention")


# ----------------------------------------------------------------------------
# Behaviour: zero-init gates, padding, the null condition
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_cross_attention_is_closed(arch):
    """init_params: tokenfree, the U-Nets and DiffiT start at eps = 0 whatever the prompt (adaLN-Zero / zero output
    conv); U-ViT's text tokens are live from the start (no gate, as the official model). In a trained-looking model
    (random weights) with the cross-attention's zero-initialised parameters at their init (its adaLN gate, or its
    output projection) and the pooled text's projection at zero, the output does not depend on the prompt."""
    cfg = text_cfg(arch)
    model = np_model(arch)
    x, t, y = inputs(cfg, seed=4)
    other = np.roll(y, 1, axis=0)
    fresh = model.init_params(cfg, seed=0)
    a, b = model.forward(fresh, x, t, y, cfg), model.forward(fresh, x, t, other, cfg)
    if arch == "uvit":
        assert np.abs(a - b).max() > 1e-6
        return
    assert not a.any() and not b.any()
    closed = {k: v for k, v in fresh.items() if ".cross." in k and not v.any()}
    assert any(k.endswith(".weight") for k in closed), f"{arch}: no zero-initialised cross-attention weight"
    params = dict(random_params(cfg, seed=5), **closed, **{k: 0 * fresh[k] for k in fresh if k.startswith("text_pool")})
    np.testing.assert_array_equal(model.forward(params, x, t, y, cfg), model.forward(params, x, t, other, cfg))
    opened = dict(params, **{k: random_params(cfg, seed=6)[k] for k in closed})
    assert np.abs(model.forward(opened, x, t, y, cfg) - model.forward(opened, x, t, other, cfg)).max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_and_the_empty_prompt(arch):
    """A prompt gives the same output whatever PAD padding it comes with (the model pads to text_len itself); the
    empty prompt, y=None and null_condition are one null condition (tinygrad: test_text_conditioning_pieces_agree)."""
    cfg = text_cfg(arch)
    model = np_model(arch)
    params = random_params(cfg, seed=11)
    x, t, y = inputs(cfg, seed=12)
    ref = model.forward(params, x, t, y, cfg)                                        # L = 5
    for L in (4, cfg.text_len):
        padded = np.zeros((3, L), np.int64)
        padded[:, :min(L, 5)] = y[:, :min(L, 5)]
        np.testing.assert_array_equal(model.forward(params, x, t, padded, cfg), ref, err_msg=f"L={L}")
    null = model.forward(params, x, t, None, cfg)
    np.testing.assert_array_equal(null[2], ref[2])                                   # row 2 of y is the empty prompt
    for empty in (null_condition(cfg, 3), np.zeros((3, 1), np.int64),
                  T.encode_batch(["", "", ""], T.VOCAB, cfg.text_len)):
        np.testing.assert_array_equal(model.forward(params, x, t, empty, cfg), null)
    assert np.isfinite(null).all() and np.abs(null[0] - ref[0]).max() > 1e-4


def test_null_condition_and_dropping():
    text, classes, uncond = text_cfg("tokenfree"), PRESETS["tokenfree-tiny"], replace(PRESETS["tokenfree-tiny"],
                                                                                    num_classes=0)
    assert null_condition(text, 2).shape == (2, 6) and not null_condition(text, 2).any()
    np.testing.assert_array_equal(null_condition(classes, 3), [4, 4, 4])
    assert null_condition(uncond, 3) is None and drop_condition(uncond, None, [True]) is None
    np.testing.assert_array_equal(drop_condition(classes, np.array([0, 1, 2]), [True, False, True]), [4, 1, 4])
    ids = np.arange(1, 13).reshape(2, 6)
    np.testing.assert_array_equal(drop_condition(text, ids, [False, True]), [ids[0], np.zeros(6)])
    with pytest.raises(ValueError, match="pad prompts to text_len=6"):
        drop_condition(text, ids[:, :4], [False, True])


def test_weights_round_trip_with_text(tmp_path):
    cfg = text_cfg("tokenfree")
    params = random_params(cfg, seed=4)
    x, t, y = inputs(cfg, seed=5)
    np_weights.save_weights(tmp_path / "a.safetensors", params, cfg)
    p_np, cfg_np, _ = np_weights.load_weights(tmp_path / "a.safetensors")
    p_tg, cfg_tg, _ = tg_weights.load_weights(tmp_path / "a.safetensors")
    assert cfg_np == cfg_tg == cfg and sorted(p_np) == sorted(p_tg) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(p_tg[k].numpy(), params[k], err_msg=k)
    np.testing.assert_array_equal(np_model("tokenfree").forward(p_np, x, t, y, cfg),
                                  np_model("tokenfree").forward(params, x, t, y, cfg))


# ----------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["tokenfree", "unet"])
def test_bad_token_ids_raise_a_clear_value_error(arch):
    cfg = text_cfg(arch)
    params = random_params(cfg)
    x, t, y = inputs(cfg)
    for fwd, wrap, p in ((np_model(arch).forward, lambda a: a, params),
                         (tg_model(arch).forward, Tensor, to_tensors(params))):
        with pytest.raises(ValueError, match=r"token ids of shape \(B, L\).*not class ids"):
            fwd(p, wrap(x), t, np.array([1, 2, 3]), cfg)
        with pytest.raises(ValueError, match=r"token ids of shape \(B, L\) = \(3, L\)"):
            fwd(p, wrap(x), t, y[:2], cfg)
        with pytest.raises(ValueError, match="7 tokens per prompt.*text_len=6"):
            fwd(p, wrap(x), t, np.zeros((3, 7), np.int64), cfg)
        with pytest.raises(ValueError, match=r"token id out of range: ids must be in 0..11.*got 12"):
            fwd(p, wrap(x), t, np.full((3, 2), 12), cfg)
        with pytest.raises(ValueError, match="token ids y must be integers"):
            fwd(p, wrap(x), t, y.astype(np.float32), cfg)
    with pytest.raises(ValueError, match="token ids y must be integers"):
        check_inputs(cfg, Tensor(x), t, Tensor(y.astype(np.float32)))
    check_inputs(cfg, Tensor(x), t, Tensor(y.astype(np.int32)))          # a device tensor: shape and dtype only
