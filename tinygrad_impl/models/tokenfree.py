"""The token-free diffusion transformer in tinygrad: a line-by-line port of numpy_ref/models/tokenfree.py."""
import numpy as np

from numpy_ref.configs import DEFAULT_T, check_inputs
# the shared parameter contract and input checks
from numpy_ref.models.tokenfree import block_kind, block_prefix, check_image_size, param_shapes, stem_kernel  # noqa: F401
from numpy_ref.models import tokenfree as _ref
from ..layers import (concat, conv2d, depth_to_space, embedding, gelu, layer_norm, linear, modulate, split,
                      multi_head_attention, silu, timestep_embedding, token_depthwise_conv)
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
# Forward
# ----------------------------------------------------------------------------

def conditioning(p, t, y, cfg, txt=None):
    """c = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, D)"""
    temb = timestep_embedding(t, cfg.width).to(p["time_embed.0.weight"].device)     # (B, D)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                    # (B, D)
    if cfg.num_classes:
        ids = np.full(c.shape[0], cfg.null_class) if y is None else y
        c = c + embedding(ids, p["label_embed.weight"])
    if txt is not None:
        c = c + pooled_embedding(p, txt)                                            # (B, D)
    return c


def mlp(p, prefix, h, hw, cfg):
    """fc1 -> [depthwise 3x3 on the (H/S, W/S) map] -> GELU -> fc2: h (B, L, D) -> (B, L, D)"""
    z = linear(h, p[f"{prefix}.fc1.weight"], p[f"{prefix}.fc1.bias"])              # (B, L, hid)
    if cfg.pos_conv:
        # the depthwise 3x3 conv of the (H/S, W/S) map, in token layout
        z = token_depthwise_conv(z, p[f"{prefix}.pos_conv.weight"], p[f"{prefix}.pos_conv.bias"], hw)   # (B, L, hid)
    return linear(gelu(z), p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])


def block(p, prefix, h, c, hw, cfg, txt=None):
    """One fixed-size block with adaLN-Zero: h (B, L, D), c (B, D), txt text_cond.Text or None -> (B, L, D)"""
    mod = linear(silu(c), p[f"{prefix}.ada.weight"], p[f"{prefix}.ada.bias"])      # (B, 6D)
    shift1, scale1, gate1, shift2, scale2, gate2 = split(mod, 6)                  # 6 x (B, D)
    h = h + gate1[:, None] * multi_head_attention(modulate(layer_norm(h), shift1, scale1), p, f"{prefix}.attn", cfg.heads)
    if txt is not None:
        shift, scale, gate = split(linear(silu(c), p[f"{prefix}.cross.ada.weight"], p[f"{prefix}.cross.ada.bias"]), 3)
        h = h + gate[:, None] * cross_attention(p, f"{prefix}.cross", modulate(layer_norm(h), shift, scale), txt,
                                                cfg.heads)                          # (B, L, D)
    h = h + gate2[:, None] * mlp(p, f"{prefix}.mlp", modulate(layer_norm(h), shift2, scale2), hw, cfg)
    return h


def stem(p, x, cfg):
    """The initial convolution: x (B, C, H, W) -> (B, D, H/S, W/S); kernel k, stride S, padding (k - S) // 2 of zeros
    or wrapped around. pos_conv and final_conv keep their zero padding: the stem_padding ablation is about the stem."""
    pad = (stem_kernel(cfg) - cfg.stride) // 2
    if cfg.stem_padding == "circular":
        x = x.pad(((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="circular")      # (B, C, H+2pad, W+2pad)
        pad = 0
    return conv2d(x, p["stem.weight"], p["stem.bias"], stride=cfg.stride, padding=pad)


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). Any H, W divisible by the stem stride work:
    nothing in the model depends on the image size (with pos_embed: H = W = img_size only)."""
    check_inputs(cfg, x, t, y, T=T)
    check_image_size(cfg, x.shape)
    p, S = params, cfg.stride
    B, C, H, W = x.shape
    h = stem(p, x, cfg)                                                            # (B, D, H/S, W/S)
    hw = h.shape[2:]
    h = h.reshape(B, cfg.width, -1).permute(0, 2, 1)                              # (B, L, D)
    if cfg.pos_embed:
        h = h + p["pos_embed"]                                                     # (B, L, D)
    txt = encode(p, y, cfg, B) if cfg.text_vocab else None                         # Text: (B, Lt, Dt), ...
    c = conditioning(p, t, y, cfg, txt)                                            # (B, D)
    skips = []
    for i in range(cfg.depth):
        kind = block_kind(i, cfg)
        if kind == "out":
            h = linear(concat([h, skips.pop()], -1),
                       p[f"blocks.{i}.skip_linear.weight"], p[f"blocks.{i}.skip_linear.bias"])   # (B, L, D)
        h = block(p, block_prefix(i, cfg), h, c, hw, cfg, txt)
        if kind == "in":
            skips.append(h)
        if i == cfg.depth // 2:
            tap("mid", lambda: h.permute(0, 2, 1).reshape(B, cfg.width, *hw))      # (B, D, H/S, W/S)
    tap("out", lambda: h.permute(0, 2, 1).reshape(B, cfg.width, *hw))
    shift, scale = split(linear(silu(c), p["final.ada.weight"], p["final.ada.bias"]), 2)          # 2 x (B, D)
    h = linear(modulate(layer_norm(h), shift, scale), p["final.linear.weight"], p["final.linear.bias"])  # (B, L, S*S*C)
    h = h.permute(0, 2, 1).reshape(B, S * S * C, *hw)                             # (B, S*S*C, H/S, W/S)
    h = depth_to_space(h, S)                                                       # (B, C, H, W)
    return conv2d(h, p["final_conv.weight"], p["final_conv.bias"], padding=1)
