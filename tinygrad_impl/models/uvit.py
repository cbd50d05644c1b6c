"""U-ViT in tinygrad: a line-by-line port of numpy_ref/models/uvit.py (official parameter names)."""
import numpy as np

from numpy_ref.configs import DEFAULT_T, check_inputs
from numpy_ref.models.uvit import (LN_EPS, check_image_size, load_official_state_dict,  # noqa: F401
                                   num_extras, param_shapes)  # (the shared parameter contract)
from numpy_ref.models import uvit as _ref
from ..layers import concat, conv2d, embedding, gelu, layer_norm, linear, multi_head_attention, silu, timestep_embedding
from ..weights import to_tensors
from ..taps import tap
from .text_cond import encode

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def unpatchify(x, channels, patch, hw):
    """Official einops order 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)' (channel fastest, unlike pixel shuffle):
    x (B, h*w, p*p*C) -> (B, C, h*p, w*p)"""
    B = x.shape[0]
    h, w = hw
    x = x.reshape(B, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)   # (B, C, h, p1, w, p2)
    return x.reshape(B, channels, h * patch, w * patch)


def extra_tokens(p, t, y, cfg, txt=None):
    """The tokens in front of the patches: [label, time], [time, text] (txt: text_cond.Text) or [time]
    -> (B, extras, D)"""
    time_token = timestep_embedding(t, cfg.width).to(p["pos_embed"].device)         # (B, D)
    if cfg.mlp_time_embed:
        time_token = linear(silu(linear(time_token, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                            p["time_embed.2.weight"], p["time_embed.2.bias"])       # (B, D)
    tokens = [time_token[:, None]]
    if cfg.num_classes:
        ids = np.full(time_token.shape[0], cfg.null_class) if y is None else y
        # the official code prepends time, then prepends the label: the order is [label, time, patches]
        tokens.insert(0, embedding(ids, p["label_emb.weight"])[:, None])
    if txt is not None:
        tokens.append(linear(txt.h, p["context_embed.weight"], p["context_embed.bias"]))   # (B, Lt, D)
    return concat(tokens, 1)


def block(p, prefix, h, cfg, skip=None):
    """Pre-LN transformer block; an out block first mixes in its skip: h (B, N, D) [, skip (B, N, D)] -> (B, N, D)"""
    if skip is not None:
        h = linear(concat([h, skip], -1), p[f"{prefix}.skip_linear.weight"], p[f"{prefix}.skip_linear.bias"])
    a = layer_norm(h, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"], LN_EPS)
    h = h + multi_head_attention(a, p, f"{prefix}.attn", cfg.heads)
    m = layer_norm(h, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"], LN_EPS)
    m = linear(gelu(linear(m, p[f"{prefix}.mlp.fc1.weight"], p[f"{prefix}.mlp.fc1.bias"]), "erf"),
               p[f"{prefix}.mlp.fc2.weight"], p[f"{prefix}.mlp.fc2.bias"])
    return h + m


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1] with H = W = cfg.img_size, t (B,) timesteps in [0, T), y (B,) class ids,
    (B, L) token ids (text_vocab > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W)."""
    check_inputs(cfg, x, t, y, T=T)
    check_image_size(cfg, x.shape)
    p, P = params, cfg.stride
    B, C, H, W = x.shape
    h = conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=P)   # (B, D, H/p, W/p)
    hw = h.shape[2:]
    h = h.reshape(B, cfg.width, -1).permute(0, 2, 1)                                  # (B, L, D)
    txt = encode(p, y, cfg, B) if cfg.text_vocab else None                             # Text: (B, Lt, Dt), ...
    h = concat([extra_tokens(p, t, y, cfg, txt), h], 1)                                # (B, extras + L, D)
    h = h + p["pos_embed"]
    half = cfg.depth // 2
    skips = []
    for i in range(half):
        h = block(p, f"in_blocks.{i}", h, cfg)
        skips.append(h)
    h = block(p, "mid_block", h, cfg)
    tap("mid", lambda: h[:, num_extras(cfg):].permute(0, 2, 1).reshape(B, cfg.width, *hw))   # (B, D, H/p, W/p)
    for i in range(half):
        skip = skips.pop()                                                             # LIFO: the last in_block first
        h = block(p, f"out_blocks.{i}", h, cfg, skip if cfg.skips else None)
    tap("out", lambda: h[:, num_extras(cfg):].permute(0, 2, 1).reshape(B, cfg.width, *hw))
    h = layer_norm(h, p["norm.weight"], p["norm.bias"], LN_EPS)
    h = linear(h, p["decoder_pred.weight"], p["decoder_pred.bias"])                    # (B, extras + L, p*p*C)
    h = unpatchify(h[:, num_extras(cfg):], C, P, hw)                                   # (B, C, H, W)
    if cfg.final_conv:
        h = conv2d(h, p["final_layer.weight"], p["final_layer.bias"], padding=1)
    return h
