"""The U-Net baseline in tinygrad: a line-by-line port of numpy_ref/models/unet.py (and the pieces
mobile_unet and snapgen_unet reuse). The plan of blocks (`layout`) and the shapes come from numpy_ref."""
import numpy as np

from numpy_ref.configs import DEFAULT_T, check_inputs
# the shared contract: the plan of blocks and the parameter shapes
from numpy_ref.models.unet import (attn_block_shapes, conv3x3_shapes, layout, param_shapes,  # noqa: F401
                                   res_block_shapes, unet_shapes)
from numpy_ref.models import unet as _ref
from ..layers import concat, conv2d, embedding, group_norm, linear, multi_head_attention, silu, timestep_embedding
from ..weights import to_tensors
from ..taps import tap
from .text_cond import cross_attention, encode, pooled_embedding

# ----------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Building blocks: forward
# ----------------------------------------------------------------------------

def norm(p, prefix, x, cfg):
    """GroupNorm with cfg.groups groups: x (B, C, H, W) -> (B, C, H, W)"""
    return group_norm(x, cfg.groups, p[f"{prefix}.weight"], p[f"{prefix}.bias"])


def conv3x3(p, prefix, x, cfg):
    """x (B, Cin, H, W) -> (B, Cout, H, W)"""
    return conv2d(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], padding=1)


def res_block(p, prefix, x, temb, cfg, conv=conv3x3):
    """GN, SiLU, conv, + Linear(SiLU(temb)), GN, SiLU, conv; 1x1 skip conv when channels change.
    x (B, Cin, H, W), temb (B, E) -> (B, Cout, H, W)"""
    h = conv(p, f"{prefix}.conv1", silu(norm(p, f"{prefix}.norm1", x, cfg)), cfg)          # (B, Cout, H, W)
    h = h + linear(silu(temb), p[f"{prefix}.temb.weight"], p[f"{prefix}.temb.bias"]).reshape(x.shape[0], -1, 1, 1)
    h = conv(p, f"{prefix}.conv2", silu(norm(p, f"{prefix}.norm2", h, cfg)), cfg)          # (B, Cout, H, W)
    skip = conv2d(x, p[f"{prefix}.skip.weight"], p[f"{prefix}.skip.bias"]) if f"{prefix}.skip.weight" in p else x
    return skip + h


def to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)"""
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W).permute(0, 2, 1)


def to_map(h, hw):
    """(B, H*W, C) -> (B, C, H, W)"""
    B, L, C = h.shape
    return h.permute(0, 2, 1).reshape(B, C, *hw)


def attn_block(p, prefix, x, temb, cfg, txt=None):
    """x + proj(MHSA(GN(x))) over all H*W positions, then with txt (text_cond.Text) x + CrossAttn(GN(x), text):
    x (B, C, H, W) -> (B, C, H, W); temb unused (ADM)."""
    h = to_tokens(norm(p, f"{prefix}.norm", x, cfg))                                       # (B, L, C)
    x = x + to_map(multi_head_attention(h, p, prefix, cfg.heads), x.shape[2:])
    if txt is not None:
        h = to_tokens(norm(p, f"{prefix}.cross.norm", x, cfg))                             # (B, L, C)
        x = x + to_map(cross_attention(p, f"{prefix}.cross", h, txt, cfg.heads), x.shape[2:])
    return x


def downsample(p, prefix, x):
    """conv 3x3 stride 2: (B, C, H, W) -> (B, C, H/2, W/2)"""
    return conv2d(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], stride=2, padding=1)


def upsample(p, prefix, x):
    """nearest x2, then conv 3x3: (B, C, H, W) -> (B, C, 2H, 2W)"""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1).expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)
    return conv2d(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], padding=1)


def conditioning(p, t, y, cfg, txt=None):
    """temb = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, 4*channels)"""
    temb = timestep_embedding(t, cfg.channels).to(p["time_embed.0.weight"].device)        # (B, ch)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                           # (B, E)
    if cfg.num_classes:
        ids = np.full(c.shape[0], cfg.null_class) if y is None else y
        c = c + embedding(ids, p["label_embed.weight"])
    if txt is not None:
        c = c + pooled_embedding(p, txt)                                                   # (B, E)
    return c


def unet_forward(params, x, t, y, cfg, conv_at, attn, T=DEFAULT_T):
    """The U-Net of `layout(cfg)` with the architecture's ResBlock conv at a level, conv_at(level), and attention
    block attn(p, prefix, x, temb, cfg, txt=None): x (B, C, H, W), t (B,), y (B,) class ids, (B, L) token ids or None
    -> eps (B, C, H, W)"""
    check_inputs(cfg, x, t, y, multiple=2 ** (len(cfg.channel_mult) - 1), T=T)
    p = params
    txt = encode(p, y, cfg, x.shape[0]) if cfg.text_vocab else None                      # Text: (B, Lt, Dt), ...
    temb = conditioning(p, t, y, cfg, txt)                                                 # (B, E)
    h = conv3x3(p, "input_conv", x, cfg)                                                   # (B, ch0, H, W)
    skips = [h]
    for op in layout(cfg):
        if op.pop:
            h = concat([h, skips.pop()], 1)                                                # (B, cin, h, w)
        if op.kind == "res":
            h = res_block(p, op.prefix, h, temb, cfg, conv_at(op.level))
        elif op.kind == "attn":
            h = attn(p, op.prefix, h, temb, cfg, txt=txt)
        elif op.kind == "down":
            h = downsample(p, op.prefix, h)
        else:
            h = upsample(p, op.prefix, h)
        if op.push:
            skips.append(h)
        if op.prefix == "mid.res.1":
            tap("mid", lambda: h)                                                          # (B, C, H/2^L, W/2^L)
    tap("out", lambda: h)                                                                  # (B, ch0, H, W)
    return conv3x3(p, "out_conv", silu(norm(p, "out_norm", h, cfg)), cfg)                  # (B, C, H, W)


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). H and W must be divisible by
    2**(len(channel_mult) - 1)."""
    return unet_forward(params, x, t, y, cfg, lambda level: conv3x3, attn_block, T)
