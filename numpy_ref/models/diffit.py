"""DiffiT in image space (arXiv 2312.02139), as read in DESIGN.md 3.3.

A U-shaped encoder/decoder of DiffiT ResBlocks. A ResBlock is a 3x3 conv
followed by a DiffiT transformer block whose self-attention is time-dependent
(TMSA): queries, keys and values each get a projection of the time token added,
so the attention pattern itself changes with t. Attention runs in w x w windows
with a learned relative position bias, or over the whole map at low resolution.

Text conditioning (cfg.text_vocab > 0; y = token ids (B, L)): attention is at every level here, so every DiffiT
block gets a cross-attention sub-layer to the prompt's encoder states (text_cond.py) between TMSA and the MLP
(LayerNorm, cross-attention over the whole map, zero-initialised `cross.proj`, residual: a fresh model ignores the
prompt there), and the pooled text is added to the time embedding c in place of the class embedding.
"""
import numpy as np

from ..configs import DEFAULT_T, check_inputs
from ..layers import (attention, concat, conv2d, embedding, gelu, group_norm, layer_norm, linear, merge_heads, silu,
                      split, split_heads, timestep_embedding)
from .text_cond import cross_attention, cross_attention_shapes, encode, init_text, pooled_embedding, text_shapes

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def level_channels(cfg):
    """Channels at each resolution level (0 = full size)."""
    return [cfg.channels * m for m in cfg.channel_mult]


def time_dim(cfg):
    """Size of the shared time embedding c (and of the time token)."""
    return 4 * cfg.channels   # the DDPM/ADM convention: 4x the base channels


def table_window(cfg, level):
    """Side w of the relative position bias table ((2w-1)^2 rows) at a level, fixed by cfg.img_size:
    cfg.window, or the whole map where the map at that level is not larger than the window (or window=0)."""
    side = cfg.img_size >> level
    return cfg.window if 0 < cfg.window < side else side


def param_shapes(cfg):
    """name -> shape of every parameter; the contract both backends and the weight files follow."""
    chans, T, C_in, L = level_channels(cfg), time_dim(cfg), cfg.in_channels, cfg.num_res_blocks
    shapes = {
        "stem.weight": (chans[0], C_in, 3, 3), "stem.bias": (chans[0],),
        "time_embed.0.weight": (T, cfg.channels), "time_embed.0.bias": (T,),
        "time_embed.2.weight": (T, T), "time_embed.2.bias": (T,),
    }
    if cfg.num_classes:
        shapes["label_embed.weight"] = (cfg.num_classes + 1, T)   # last row: the null class
    if cfg.text_vocab:
        shapes.update(text_shapes(cfg, T))                         # text.* encoder, text_pool (T, Dt)
    for level, C in enumerate(chans):
        hid, w = int(C * cfg.mlp_ratio), table_window(cfg, level)
        for side in ("enc", "dec"):
            for j in range(L):
                b = f"{side}.{level}.{j}"
                shapes.update({
                    f"{b}.norm.weight": (C,), f"{b}.norm.bias": (C,),
                    f"{b}.conv.weight": (C, C, 3, 3), f"{b}.conv.bias": (C,),
                    f"{b}.ln1.weight": (C,), f"{b}.ln1.bias": (C,),
                    f"{b}.attn.qkv.weight": (3 * C, C), f"{b}.attn.qkv.bias": (3 * C,),   # Wqs, Wks, Wvs
                    f"{b}.attn.qkv_t.weight": (3 * C, T),                                 # Wqt, Wkt, Wvt
                    f"{b}.attn.rel_bias": ((2 * w - 1) ** 2, cfg.heads),
                    f"{b}.attn.proj.weight": (C, C), f"{b}.attn.proj.bias": (C,),
                    f"{b}.ln2.weight": (C,), f"{b}.ln2.bias": (C,),
                    f"{b}.mlp.fc1.weight": (hid, C), f"{b}.mlp.fc1.bias": (hid,),
                    f"{b}.mlp.fc2.weight": (C, hid), f"{b}.mlp.fc2.bias": (C,),
                })
                if cfg.text_vocab:
                    shapes.update(cross_attention_shapes(f"{b}.cross", C, cfg))
        if level < len(chans) - 1:
            C_next = chans[level + 1]
            shapes.update({
                f"down.{level}.weight": (C_next, C, 3, 3), f"down.{level}.bias": (C_next,),
                f"up.{level}.weight": (C, C_next, 3, 3), f"up.{level}.bias": (C,),
                f"skip.{level}.weight": (C, 2 * C, 1, 1), f"skip.{level}.bias": (C,),
            })
    shapes.update({
        "out.norm.weight": (chans[0],), "out.norm.bias": (chans[0],),
        "out.conv.weight": (C_in, chans[0], 3, 3), "out.conv.bias": (C_in,),
    })
    return shapes


def init_params(cfg, seed=0):
    """Fresh parameters (float32): Xavier-uniform weights, zero biases, unit norm scales, N(0, 0.02) embeddings
    and relative position biases, and a zero output conv (the model starts by predicting eps = 0); with text a zero
    cross-attention output projection (cross.proj) and the text encoder's own initialisation for text.*."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(("norm.weight", "ln1.weight", "ln2.weight")):
            w = np.ones(shape)
        elif name.endswith((".bias", "cross.proj.weight")) or name.startswith("out.conv"):
            w = np.zeros(shape)
        elif name.startswith(("time_embed", "label_embed")) or name.endswith("rel_bias"):
            w = rng.normal(0.0, 0.02, shape)
        else:
            fan_out, fan_in = shape[0] * int(np.prod(shape[2:])), int(np.prod(shape[1:]))
            a = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-a, a, shape)
        params[name] = w.astype(np.float32)
    return init_text(params, cfg, seed)


# ----------------------------------------------------------------------------
# Windows and relative positions
# ----------------------------------------------------------------------------

def window_size(n, window, level=0):
    """Window side along an axis of n positions: cfg.window, or n (whole axis) when window is 0 or >= n."""
    w = window if 0 < window < n else n
    if n % w:
        raise ValueError(f"the feature map at level {level} has a side of {n}, not divisible by window={window}; "
                         f"use an image size whose maps at every level are multiples of {window}, or window=0")
    return w


def window_partition(x, wh, ww):
    """(B, H, W, C) -> (B*nW, wh*ww, C): non-overlapping windows, row-major, each flattened row-major."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).transpose(0, 1, 3, 2, 4, 5)   # (B, H/wh, W/ww, wh, ww, C)
    return x.reshape(-1, wh * ww, C)


def window_reverse(xw, wh, ww, H, W):
    """(B*nW, wh*ww, C) -> (B, H, W, C): the inverse of window_partition."""
    C = xw.shape[-1]
    x = xw.reshape(-1, H // wh, W // ww, wh, ww, C).transpose(0, 1, 3, 2, 4, 5)  # (B, H/wh, wh, W/ww, ww, C)
    return x.reshape(-1, H, W, C)


def relative_position_index(wh, ww, w_table):
    """(wh*ww, wh*ww) int: the row of the (2w-1)^2 bias table for every (query, key) pair of a window,
    a function of their offset (dy, dx) only. Offsets beyond the table (a whole-map window larger than the
    map the table was sized for, e.g. a larger image with window=0) are clipped to its border rows."""
    ys, xs = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)])                          # (2, N)
    offset = coords[:, :, None] - coords[:, None, :]                             # (2, N, N): query - key
    offset = np.clip(offset, -(w_table - 1), w_table - 1) + (w_table - 1)        # in 0..2w-2
    return offset[0] * (2 * w_table - 1) + offset[1]                             # (N, N)


def relative_bias(table, wh, ww, w_table):
    """Gather the learned table ((2w-1)^2, heads) into the bias B of one window: (heads, N, N)."""
    N = wh * ww
    idx = relative_position_index(wh, ww, w_table).reshape(-1)                   # (N*N,)
    return embedding(idx, table).reshape(N, N, -1).transpose(2, 0, 1)             # (heads, N, N)


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
    qkv = qkv + linear(xt, p[f"{prefix}.qkv_t.weight"])[:, None, None, :]           # + the time token's share
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
    h = diffit_block(p, prefix, h.transpose(0, 2, 3, 1), xt, level, cfg, txt)     # (B, H, W, C)
    # the paper's equation as written: the outer residual adds x to the block's output, which already holds h
    return x + h.transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def upsample_nearest(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2x2."""
    B, C, H, W = x.shape
    return np.broadcast_to(x[:, :, :, None, :, None], (B, C, H, 2, W, 2)).reshape(B, C, 2 * H, 2 * W)


def conditioning(p, t, y, cfg, dtype, txt=None):
    """c = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, T)"""
    temb = timestep_embedding(t, cfg.channels).astype(dtype)                       # (B, channels)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                    # (B, T)
    if cfg.num_classes:
        # class conditioning: the label embedding is added to the time embedding, so x_t carries both
        ids = np.full(len(c), cfg.null_class) if y is None else np.asarray(y).reshape(-1)
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
    txt = encode(p, y, cfg, len(x)) if cfg.text_vocab else None                  # Text: (B, Lt, Dt), ...
    xt = time_token(conditioning(p, t, y, cfg, x.dtype, txt))                      # (B, T)
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
    h = silu(group_norm(h, cfg.groups, p["out.norm.weight"], p["out.norm.bias"]))  # (B, C0, H, W)
    return conv2d(h, p["out.conv.weight"], p["out.conv.bias"], padding=1)
