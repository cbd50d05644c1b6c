"""DiffiT image space in tinygrad: a line-by-line port of numpy_ref/models/diffit.py."""
import numpy as np

from numpy_ref.configs import DEFAULT_T, check_inputs
from numpy_ref.models.diffit import (level_channels, param_shapes, relative_position_index, table_window,  # noqa: F401
                                     time_dim, window_size)   # the shared parameter contract and static index math
from numpy_ref.models import diffit as _ref
from ..layers import (attention, concat, conv2d, embedding, gelu, group_norm, layer_norm, linear, merge_heads, silu,
                      split, split_heads, timestep_embedding)
from ..weights import to_tensors
from ..taps import tap
from .text_cond import cross_attention, encode, pooled_embedding

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Windows and relative positions
# ----------------------------------------------------------------------------

def window_partition(x, wh, ww):
    """(B, H, W, C) -> (B*nW, wh*ww, C): non-overlapping windows, row-major, each flattened row-major."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)     # (B, H/wh, W/ww, wh, ww, C)
    return x.reshape(-1, wh * ww, C)


def window_reverse(xw, wh, ww, H, W):
    """(B*nW, wh*ww, C) -> (B, H, W, C): the inverse of window_partition."""
    C = xw.shape[-1]
    x = xw.reshape(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)    # (B, H/wh, wh, W/ww, ww, C)
    return x.reshape(-1, H, W, C)


def relative_bias(table, wh, ww, w_table):
    """Gather the learned table ((2w-1)^2, heads) into the bias B of one window: (heads, N, N)."""
    N = wh * ww
    idx = relative_position_index(wh, ww, w_table).reshape(-1)                   # (N*N,)
    return embedding(idx, table).reshape(N, N, -1).permute(2, 0, 1)               # (heads, N, N)


# ----------------------------------------------------------------------------
# DiffiT block
# ----------------------------------------------------------------------------

def time_token(c):
    """The time token x_t that TMSA projects with Wqt, Wkt, Wvt: c (B, T) -> (B, T)"""
    return silu(c)


def tmsa(p, prefix, x, xt, window, w_table, heads, level=0):
    """Time-dependent multi-head self-attention in windows: x (B, H, W, C) (normalised), xt (B, T) -> (B, H, W, C).
    q = x Wqs + x_t Wqt, k = x Wks + x_t Wkt, v = x Wvs + x_t Wvt; Softmax(q k^T / sqrt(d) + B) v."""
    B, H, W, C = x.shape
    wh, ww = window_size(H, window, level), window_size(W, window, level)
    qkv = linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])             # (B, H, W, 3C)
    qkv = qkv + linear(xt, p[f"{prefix}.qkv_t.weight"]).reshape(B, 1, 1, 3 * C)     # + the time token's share
    q, k, v = (split_heads(window_partition(z, wh, ww), heads) for z in split(qkv, 3))  # (B*nW, h, N, d)
    bias = relative_bias(p[f"{prefix}.rel_bias"], wh, ww, w_table)                 # (h, N, N)
    o = merge_heads(attention(q, k, v, bias[None]))                                # (B*nW, N, C)
    return linear(window_reverse(o, wh, ww, H, W), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def mlp(p, prefix, x):
    """fc1 -> GELU -> fc2: (..., C) -> (..., C)"""
    return linear(gelu(linear(x, p[f"{prefix}.fc1.weight"], p[f"{prefix}.fc1.bias"])),
                  p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])


def diffit_block(p, prefix, h, xt, level, cfg, txt=None):
    """x = x + TMSA(LN(x), x_t); [x = x + CrossAttn(LN(x), text)]; x = x + MLP(LN(x)):
    h (B, H, W, C), xt (B, T), txt text_cond.Text or None -> (B, H, W, C)"""
    h = h + tmsa(p, f"{prefix}.attn", layer_norm(h, p[f"{prefix}.ln1.weight"], p[f"{prefix}.ln1.bias"]), xt,
                 cfg.window, table_window(cfg, level), cfg.heads, level)
    if txt is not None:
        B, H, W, C = h.shape
        a = layer_norm(h, p[f"{prefix}.cross.norm.weight"], p[f"{prefix}.cross.norm.bias"]).reshape(B, H * W, C)
        h = h + cross_attention(p, f"{prefix}.cross", a, txt, cfg.heads).reshape(B, H, W, C)
    return h + mlp(p, f"{prefix}.mlp", layer_norm(h, p[f"{prefix}.ln2.weight"], p[f"{prefix}.ln2.bias"]))


def res_block(p, prefix, x, xt, level, cfg, txt=None):
    """DiffiT ResBlock: h = Conv3x3(SiLU(GN(x))); x + DiffiTBlock(h, x_t[, text]): x (B, C, H, W) -> (B, C, H, W)"""
    h = conv2d(silu(group_norm(x, cfg.groups, p[f"{prefix}.norm.weight"], p[f"{prefix}.norm.bias"])),
               p[f"{prefix}.conv.weight"], p[f"{prefix}.conv.bias"], padding=1)    # (B, C, H, W)
    h = diffit_block(p, prefix, h.permute(0, 2, 3, 1), xt, level, cfg, txt)       # (B, H, W, C)
    # the paper's equation as written: the outer residual adds x to the block's output, which already holds h
    return x + h.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def upsample_nearest(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2x2."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H, 1, W, 1).expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)


def conditioning(p, t, y, cfg, txt=None):
    """c = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, T)"""
    temb = timestep_embedding(t, cfg.channels).to(p["time_embed.0.weight"].device)  # (B, channels)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                    # (B, T)
    if cfg.num_classes:
        # class conditioning: the label embedding is added to the time embedding, so x_t carries both
        ids = np.full(c.shape[0], cfg.null_class) if y is None else y
        c = c + embedding(ids, p["label_embed.weight"])
    if txt is not None:
        c = c + pooled_embedding(p, txt)                                            # (B, T)
    return c


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). H and W must be divisible by
    2**(levels-1), and each level's map by the window where it is windowed."""
    levels = len(cfg.channel_mult)
    check_inputs(cfg, x, t, y, multiple=2 ** (levels - 1), T=T)
    p = params
    txt = encode(p, y, cfg, x.shape[0]) if cfg.text_vocab else None              # Text: (B, Lt, Dt), ...
    xt = time_token(conditioning(p, t, y, cfg, txt))                               # (B, T)
    h = conv2d(x, p["stem.weight"], p["stem.bias"], padding=1)                     # (B, C0, H, W)
    skips = []
    for level in range(levels):                                                    # encoder
        for j in range(cfg.num_res_blocks):
            h = res_block(p, f"enc.{level}.{j}", h, xt, level, cfg, txt)
        if level < levels - 1:
            skips.append(h)                                                        # (B, C_l, H/2^l, W/2^l)
            h = conv2d(h, p[f"down.{level}.weight"], p[f"down.{level}.bias"], stride=2, padding=1)
    for level in reversed(range(levels)):                                          # decoder
        if level < levels - 1:   # the deepest level has no skip: its enc and dec blocks run back to back
            h = conv2d(upsample_nearest(h), p[f"up.{level}.weight"], p[f"up.{level}.bias"], padding=1)
            # concat with the encoder map of the same resolution, then a 1x1 conv back to C_l channels
            h = conv2d(concat([h, skips.pop()], 1), p[f"skip.{level}.weight"], p[f"skip.{level}.bias"])
        for j in range(cfg.num_res_blocks):
            h = res_block(p, f"dec.{level}.{j}", h, xt, level, cfg, txt)
        if level == levels - 1:
            tap("mid", lambda: h)                                                  # (B, C_L, H/2^L, W/2^L)
    tap("out", lambda: h)                                                          # (B, C0, H, W)
    h = silu(group_norm(h, cfg.groups, p["out.norm.weight"], p["out.norm.bias"]))  # (B, C0, H, W)
    return conv2d(h, p["out.conv.weight"], p["out.conv.bias"], padding=1)
