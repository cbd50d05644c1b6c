"""U-ViT: NumPy vs tinygrad on random configurations, the official parameter names and state dicts, and the
properties that define it: token order, long skips popped LIFO, the official unpatchify order, a learned
positional embedding that fixes the image size."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor

from numpy_ref.configs import ModelConfig, PRESETS, get_config
from numpy_ref.models import uvit
from tinygrad_impl.models import uvit as tg_uvit
from tinygrad_impl.weights import to_tensors
from util import assert_close, both_forwards, random_inputs, random_params

TINY = PRESETS["uvit-tiny"]


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2]))
    stride = draw(st.sampled_from([1, 2, 4]))
    return ModelConfig(
        "uvit", width=heads * draw(st.sampled_from([4, 8])), heads=heads, depth=draw(st.integers(1, 4)),
        stride=stride, img_size=stride * draw(st.integers(1, 3)), in_channels=draw(st.sampled_from([1, 3])),
        num_classes=draw(st.sampled_from([0, 3])), skips=draw(st.booleans()),
        mlp_time_embed=draw(st.booleans()), final_conv=draw(st.booleans()), mlp_ratio=draw(st.sampled_from([2.0, 4.0])))


@settings(max_examples=4)
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 2))
def test_forward_agreement_random_configs(cfg, seed, batch):
    params = random_params(cfg, seed)
    x, t, y = random_inputs(cfg, batch, seed + 1)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert_close(ref, out, what=str(cfg))


def test_preset_xs_runs_in_both_backends_and_has_about_two_million_parameters():
    cfg = get_config("uvit-xs", num_classes=10)
    n = sum(int(np.prod(s)) for s in uvit.param_shapes(cfg).values())
    assert 1_000_000 <= n <= 3_000_000, n
    params = random_params(cfg, 11)
    x, t, y = random_inputs(cfg, 1, 12)
    ref, out = both_forwards(cfg, params, x, t, y)
    assert ref.shape == (1, 3, 32, 32)
    assert_close(ref, out, what="uvit-xs")


# ----------------------------------------------------------------------------
# Official names, shapes and state dicts
# ----------------------------------------------------------------------------

SMALL = ModelConfig("uvit", width=8, depth=3, heads=2, stride=2, img_size=4, in_channels=1, num_classes=2,
                    mlp_time_embed=True, final_conv=True)


def _block(prefix, D=8, hid=32, skip=False):
    names = {f"{prefix}.norm1.weight": (D,), f"{prefix}.norm1.bias": (D,), f"{prefix}.attn.qkv.weight": (3 * D, D),
             f"{prefix}.attn.proj.weight": (D, D), f"{prefix}.attn.proj.bias": (D,),
             f"{prefix}.norm2.weight": (D,), f"{prefix}.norm2.bias": (D,),
             f"{prefix}.mlp.fc1.weight": (hid, D), f"{prefix}.mlp.fc1.bias": (hid,),
             f"{prefix}.mlp.fc2.weight": (D, hid), f"{prefix}.mlp.fc2.bias": (D,)}
    if skip:
        names.update({f"{prefix}.skip_linear.weight": (D, 2 * D), f"{prefix}.skip_linear.bias": (D,)})
    return names


# the state dict of the official UViT(img_size=4, patch_size=2, in_chans=1, embed_dim=8, depth=3, num_heads=2,
# mlp_time_embed=True, num_classes=3, conv=True), as read from libs/uvit.py
OFFICIAL_SMALL = {
    "pos_embed": (1, 2 + 4, 8),
    "patch_embed.proj.weight": (8, 1, 2, 2), "patch_embed.proj.bias": (8,),
    "time_embed.0.weight": (32, 8), "time_embed.0.bias": (32,),
    "time_embed.2.weight": (8, 32), "time_embed.2.bias": (8,),
    "label_emb.weight": (3, 8),
    **_block("in_blocks.0"), **_block("mid_block"), **_block("out_blocks.0", skip=True),
    "norm.weight": (8,), "norm.bias": (8,),
    "decoder_pred.weight": (2 * 2 * 1, 8), "decoder_pred.bias": (4,),
    "final_layer.weight": (1, 1, 3, 3), "final_layer.bias": (1,),
}


def test_parameter_names_and_shapes_are_the_official_ones():
    assert uvit.param_shapes(SMALL) == OFFICIAL_SMALL
    # options off: no time MLP, no label table, one extra token, no final conv, no skip_linear
    plain = uvit.param_shapes(replace(SMALL, mlp_time_embed=False, num_classes=0, final_conv=False, skips=False))
    dropped = ("time_embed", "label_emb", "final_layer", "skip_linear")
    assert plain == {k: v for k, v in OFFICIAL_SMALL.items() if not any(d in k for d in dropped)} | {"pos_embed": (1, 5, 8)}


@pytest.mark.parametrize("depth, blocks", [(1, ([], 0)), (2, ([0], 1)), (3, ([0], 1)), (12, (list(range(6)), 6))])
def test_depth_is_the_official_depth(depth, blocks):
    """depth//2 in_blocks, one mid_block, depth//2 out_blocks: an even depth 12 gives 13 blocks, as in U-ViT-S."""
    names = uvit.param_shapes(replace(SMALL, depth=depth))
    ins, n_out = blocks
    assert sorted({int(k.split(".")[1]) for k in names if k.startswith("in_blocks.")}) == ins
    assert len({k.split(".")[1] for k in names if k.startswith("out_blocks.")}) == n_out
    assert "mid_block.attn.qkv.weight" in names


def test_load_official_state_dict_round_trips_and_names_bad_keys():
    params = uvit.init_params(SMALL, seed=0)
    loaded = uvit.load_official_state_dict({k: v.astype(np.float64) for k, v in params.items()}, SMALL)
    assert sorted(loaded) == sorted(params)
    for k in params:
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], params[k], err_msg=k)
    # nn.DataParallel's "module." prefix is accepted
    assert sorted(uvit.load_official_state_dict({f"module.{k}": v for k, v in params.items()}, SMALL)) == sorted(params)
    with pytest.raises(ValueError, match=r"missing keys \['mid_block.attn.qkv.weight'\]"):
        uvit.load_official_state_dict({k: v for k, v in params.items() if k != "mid_block.attn.qkv.weight"}, SMALL)
    with pytest.raises(ValueError, match=r"key 'label_emb.weight' has shape \(2, 8\), expected \(3, 8\)"):
        uvit.load_official_state_dict(dict(params, **{"label_emb.weight": np.zeros((2, 8))}), SMALL)
    with pytest.raises(ValueError, match=r"unexpected keys \['time_embed.0.weight'"):
        uvit.load_official_state_dict(params, replace(SMALL, mlp_time_embed=False))


def test_init_follows_the_official_code():
    cfg = get_config("uvit-xs", num_classes=10)
    p = uvit.init_params(cfg, seed=0)
    assert abs(p["in_blocks.0.attn.qkv.weight"].std() - 0.02) < 1e-3
    assert abs(p["pos_embed"].std() - 0.02) < 1e-3
    assert abs(p["label_emb.weight"].std() - 1.0) < 0.05          # nn.Embedding's default N(0, 1)
    assert (p["mid_block.norm1.weight"] == 1).all() and (p["mid_block.norm1.bias"] == 0).all()
    assert (p["out_blocks.0.skip_linear.bias"] == 0).all()
    bound = 1 / np.sqrt(3 * 4 * 4)                                  # PyTorch's conv default U(+-1/sqrt(fan_in))
    assert np.abs(p["patch_embed.proj.weight"]).max() <= bound and np.abs(p["patch_embed.proj.weight"]).max() > 0.9 * bound


# ----------------------------------------------------------------------------
# Against a transcription of the official PyTorch model
# ----------------------------------------------------------------------------

def _official_uvit(cfg):
    """A TRANSCRIPTION of the official U-ViT (baofff/U-ViT libs/uvit.py, the 'math' attention path), written for
    this test only, to check that an official state dict gives our output. Not used by the project."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Attention(nn.Module):
        def __init__(self, dim, num_heads):
            super().__init__()
            self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
            self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=False), nn.Linear(dim, dim)

        def forward(self, x):
            B, L, C = x.shape
            qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]                           # 'B L (K H D) -> K B H L D'
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(B, L, C))

    class Block(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio, skip=False):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
            self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))
            self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

        def forward(self, x, skip=None):
            if self.skip_linear is not None:
                x = self.skip_linear(torch.cat([x, skip], dim=-1))
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, patch_size, in_chans, embed_dim):
            super().__init__()
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class UViT(nn.Module):
        def __init__(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, mlp_time_embed,
                     num_classes, conv, skip):
            super().__init__()
            self.embed_dim, self.num_classes, self.in_chans, self.patch_size = embed_dim, num_classes, in_chans, patch_size
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
            self.time_embed = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(),
                                            nn.Linear(4 * embed_dim, embed_dim)) if mlp_time_embed else nn.Identity()
            if num_classes > 0:
                self.label_emb = nn.Embedding(num_classes, embed_dim)
            self.extras = 2 if num_classes > 0 else 1
            self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + (img_size // patch_size) ** 2, embed_dim))
            self.in_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth // 2)])
            self.mid_block = Block(embed_dim, num_heads, mlp_ratio)
            self.out_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, skip) for _ in range(depth // 2)])
            self.norm = nn.LayerNorm(embed_dim)
            self.decoder_pred = nn.Linear(embed_dim, patch_size ** 2 * in_chans)
            self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()

        def timestep_embedding(self, t):
            half = self.embed_dim // 2   # [cos, sin]; in float64 here as numpy_ref (the official: float32)
            freqs = torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float64) / half)
            args = t[:, None].double() * freqs[None]
            emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
            if self.embed_dim % 2:
                emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
            return emb.to(self.pos_embed.dtype)

        def forward(self, x, timesteps, y=None):
            x = self.patch_embed(x)
            B, L, D = x.shape
            x = torch.cat((self.time_embed(self.timestep_embedding(timesteps)).unsqueeze(1), x), dim=1)
            if y is not None:
                x = torch.cat((self.label_emb(y).unsqueeze(1), x), dim=1)
            x = x + self.pos_embed
            skips = []
            for blk in self.in_blocks:
                x = blk(x)
                skips.append(x)
            x = self.mid_block(x)
            for blk in self.out_blocks:
                x = blk(x, skips.pop())
            x = self.decoder_pred(self.norm(x))[:, self.extras:, :]
            p, C, h = self.patch_size, self.in_chans, int(L ** 0.5)   # 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'
            x = x.reshape(B, h, h, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, h * p, h * p)
            return self.final_layer(x)

    return torch, UViT(cfg.img_size, cfg.stride, cfg.in_channels, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio,
                       cfg.mlp_time_embed, cfg.num_classes + 1 if cfg.num_classes else -1, cfg.final_conv, cfg.skips)


@pytest.mark.parametrize("variant", ["conditional", "unconditional", "options_off", "even_depth", "small_tokens"])
def test_official_state_dict_gives_the_official_output(variant):
    cfg = {"conditional": replace(TINY, mlp_time_embed=True),
           "unconditional": replace(TINY, num_classes=0),
           "options_off": replace(TINY, final_conv=False, skips=False, depth=5),
           "even_depth": replace(TINY, depth=4, mlp_time_embed=True),
           "small_tokens": TINY}[variant]
    torch, model = _official_uvit(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, v in model.named_parameters():   # every tensor random (LayerNorms included), not the init
            v.copy_(torch.randn(v.shape) / max(1, v[0].numel()) ** 0.5)
        if variant == "small_tokens":              # patch tokens with variance ~1e-6: the LayerNorm eps matters
            for name in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"):
                dict(model.named_parameters())[name].mul_(1e-3)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in sd.items()} == uvit.param_shapes(cfg), "two readings of the official code differ"
    params = uvit.load_official_state_dict(sd, cfg)
    x, t, y = random_inputs(cfg, batch=2, seed=3)
    y_official = None if y is None else torch.tensor(y)
    # float64 on both sides: a tight bound that tanh-GELU, LayerNorm eps 1e-6 or another token order would break
    want = model.double()(torch.tensor(x, dtype=torch.float64), torch.tensor(t), y_official).detach().numpy()
    got = uvit.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), t, y, cfg)
    assert np.abs(want).max() > 1e-2
    assert_close(want, got, atol=1e-6, rtol=1e-5, what=f"numpy_ref vs official, {variant}")
    # tinygrad, float32, from the same state dict
    out = tg_uvit.forward(to_tensors(params), Tensor(x), Tensor(t.astype(np.float32)),
                          None if y is None else Tensor(y.astype(np.int32)), cfg).numpy()
    assert_close(want, out, what=f"tinygrad vs official, {variant}")
    if cfg.num_classes:   # y=None on a conditional model is the null class, the official table's last row
        null = np.full(2, cfg.null_class)
        want_null = model(torch.tensor(x, dtype=torch.float64), torch.tensor(t), torch.tensor(null)).detach().numpy()
        got_null = uvit.forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), t, None, cfg)
        assert_close(want_null, got_null, atol=1e-6, rtol=1e-5, what="null class")


# ----------------------------------------------------------------------------
# Defining properties
# ----------------------------------------------------------------------------

def _f64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def _forward_with(params, cfg, x, t, y, **deltas):
    """forward after adding `delta` to params[name][index] for name=(index, delta) in deltas"""
    p = dict(params)
    for name, (index, delta) in deltas.items():
        p[name] = p[name].copy()
        p[name][index] += delta
    return uvit.forward(p, x, t, y, cfg)


def test_token_order_is_label_time_patches():
    """Adding d to a label_emb row is the same as adding d to pos_embed row 0; adding d to the time MLP's output bias
    is the same as adding it to pos_embed row 1 (and not row 0)."""
    cfg = replace(TINY, mlp_time_embed=True)
    params = _f64(random_params(cfg, seed=1))
    x, t, _ = random_inputs(cfg, batch=2, seed=2, dtype=np.float64)
    y = np.array([1, 1])
    d = np.random.default_rng(0).standard_normal(cfg.width)
    base = uvit.forward(params, x, t, y, cfg)
    via_label = _forward_with(params, cfg, x, t, y, **{"label_emb.weight": (1, d)})
    via_time = _forward_with(params, cfg, x, t, y, **{"time_embed.2.bias": (slice(None), d)})
    pos = lambda row: _forward_with(params, cfg, x, t, y, pos_embed=((0, row), d))  # noqa: E731
    assert np.abs(via_label - base).max() > 1e-3 and np.abs(via_time - base).max() > 1e-3
    np.testing.assert_allclose(via_label, pos(0), atol=1e-10)
    np.testing.assert_allclose(via_time, pos(1), atol=1e-10)
    assert np.abs(via_time - pos(0)).max() > 1e-3
    # unconditional: the time token comes first
    cfg0 = replace(cfg, num_classes=0)
    p0 = {k: v for k, v in params.items() if k != "label_emb.weight"}
    p0["pos_embed"] = params["pos_embed"][:, 1:]
    np.testing.assert_allclose(_forward_with(p0, cfg0, x, t, None, **{"time_embed.2.bias": (slice(None), d)}),
                               _forward_with(p0, cfg0, x, t, None, pos_embed=((0, 0), d)), atol=1e-10)


def test_long_skips_are_popped_last_in_first_out():
    """depth 4: in_blocks.0, in_blocks.1, mid, out_blocks.0, out_blocks.1. Make out_blocks.0 keep only its skip and
    out_blocks.1 drop its skip (both otherwise the identity): the output then depends on in_blocks.1 only if
    out_blocks.0 got in_blocks.1's output (LIFO); FIFO would hand it in_blocks.0's."""
    cfg = replace(TINY, depth=4, num_classes=0)
    p = _f64(random_params(cfg, seed=4))
    D = cfg.width
    for i, keep in ((0, "skip"), (1, "x")):
        b = f"out_blocks.{i}"
        eye, zero = np.eye(D), np.zeros((D, D))
        p[f"{b}.skip_linear.weight"] = np.concatenate([zero, eye] if keep == "skip" else [eye, zero], axis=1)
        p[f"{b}.skip_linear.bias"] = np.zeros(D)
        for name in ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            p[f"{b}.{name}"] = np.zeros_like(p[f"{b}.{name}"])
    x, t, _ = random_inputs(cfg, batch=2, seed=5, dtype=np.float64)
    d = np.random.default_rng(6).standard_normal(D)   # not a constant: the final LayerNorm would remove that
    base = uvit.forward(p, x, t, None, cfg)
    changed_in1 = _forward_with(p, cfg, x, t, None, **{"in_blocks.1.mlp.fc2.bias": (slice(None), d)})
    changed_mid = _forward_with(p, cfg, x, t, None, **{"mid_block.mlp.fc2.bias": (slice(None), d)})
    assert np.abs(changed_in1 - base).max() > 1e-2
    np.testing.assert_allclose(changed_mid, base, atol=1e-12)   # the mid block's output was replaced by the skip


def _einops_unpatchify(x, C, p, h, w):
    """'B (h w) (p1 p2 C) -> B C (h p1) (w p2)' read literally, one element at a time."""
    out = np.zeros((x.shape[0], C, h * p, w * p), x.dtype)
    for b in range(x.shape[0]):
        for hi in range(h):
            for wi in range(w):
                for p1 in range(p):
                    for p2 in range(p):
                        for c in range(C):
                            out[b, c, hi * p + p1, wi * p + p2] = x[b, hi * w + wi, (p1 * p + p2) * C + c]
    return out


def test_unpatchify_is_the_official_einops_order_not_pixel_shuffle():
    C, p, h, w = 3, 2, 2, 3
    x = np.random.default_rng(0).standard_normal((2, h * w, p * p * C))
    want = _einops_unpatchify(x, C, p, h, w)
    np.testing.assert_array_equal(uvit.unpatchify(x, C, p, (h, w)), want)
    np.testing.assert_allclose(tg_uvit.unpatchify(Tensor(x.astype(np.float32)), C, p, (h, w)).numpy(), want, rtol=1e-6)
    from numpy_ref.layers import depth_to_space   # pixel shuffle puts the channel slowest: a different image
    shuffled = depth_to_space(x.transpose(0, 2, 1).reshape(2, p * p * C, h, w), p)
    assert np.abs(shuffled - want).max() > 0.1


@pytest.mark.parametrize("k", range(2 * 2 * 3))
def test_decoder_pred_feature_k_lands_where_einops_says(k):
    """A decoder_pred with zero weights and a one-hot bias at feature k = (p1*p + p2)*C + c paints channel c at the
    pixels (i, j) with i % p == p1 and j % p == p2, in both backends."""
    cfg = replace(TINY, final_conv=False)
    p, C = cfg.stride, cfg.in_channels
    params = random_params(cfg, seed=0)
    params["decoder_pred.weight"] = np.zeros_like(params["decoder_pred.weight"])
    params["decoder_pred.bias"] = np.eye(p * p * C, dtype=np.float32)[k]
    x, t, y = random_inputs(cfg)
    p1, p2, c = k // (p * C), (k // C) % p, k % C
    want = np.zeros_like(x)
    want[:, c, p1::p, p2::p] = 1.0
    ref, out = both_forwards(cfg, params, x, t, y)
    np.testing.assert_array_equal(ref, want)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_positional_embedding_is_used_and_breaks_translation_equivariance():
    """With the patch rows of pos_embed zero (and no final conv), shifting the image by one patch (circularly) shifts
    the output: attention cannot tell positions apart. The learned pos_embed breaks that, and each row matters."""
    cfg = replace(TINY, final_conv=False)
    params = _f64(random_params(cfg, seed=7))
    x, t, y = random_inputs(cfg, batch=2, seed=8, dtype=np.float64)
    p = cfg.stride
    shift = lambda a: np.roll(a, p, axis=-1)  # noqa: E731
    E = uvit.num_extras(cfg)
    flat = dict(params, pos_embed=params["pos_embed"].copy())
    flat["pos_embed"][:, E:] = 0.0
    np.testing.assert_allclose(uvit.forward(flat, shift(x), t, y, cfg), shift(uvit.forward(flat, x, t, y, cfg)), atol=1e-10)
    out = uvit.forward(params, x, t, y, cfg)
    assert np.abs(uvit.forward(params, shift(x), t, y, cfg) - shift(out)).max() > 1e-2
    for row in (0, E, params["pos_embed"].shape[1] - 1):
        assert np.abs(_forward_with(params, cfg, x, t, y, pos_embed=((0, row), 0.5)) - out).max() > 1e-3, row


@pytest.mark.parametrize("size", [(16, 16), (4, 4), (8, 16)])
def test_other_image_sizes_raise_naming_img_size(size):
    cfg = TINY
    params = random_params(cfg)
    x = np.zeros((2, cfg.in_channels, *size), np.float32)
    t = np.array([1, 2])
    with pytest.raises(ValueError, match="img_size=8"):
        uvit.forward(params, x, t, None, cfg)
    with pytest.raises(ValueError, match="img_size=8"):
        tg_uvit.forward(to_tensors(params), Tensor(x), Tensor(t.astype(np.float32)), None, cfg)
