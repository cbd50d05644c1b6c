"""PyTorch mirrors of numpy_ref's U-Nets (unet, mobile_unet, snapgen_unet), in torch.nn.functional over numpy_ref's
parameter dict: one U-Net walking numpy_ref.models.unet.layout, with each architecture's ResBlock conv and attention
block. torch is imported inside the functions, so this module imports without it."""
from functools import partial

from numpy_ref.models.mobile_unet import is_separable
from numpy_ref.models.unet import layout
from .torch_mirror import torch_attention, torch_conditioning

# ----------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------

def norm(p, prefix, x, cfg):
    """GroupNorm with cfg.groups groups: x (B, C, H, W) -> (B, C, H, W)"""
    import torch.nn.functional as F
    return F.group_norm(x, cfg.groups, p[f"{prefix}.weight"], p[f"{prefix}.bias"], 1e-5)


def conv(p, prefix, x, stride=1, padding=0, groups=1):
    """F.conv2d with the weight and bias under prefix: x (B, Cin, H, W) -> (B, Cout, H', W')"""
    import torch.nn.functional as F
    return F.conv2d(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], stride=stride, padding=padding, groups=groups)


def to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)"""
    return x.flatten(2).transpose(1, 2)


def to_map(h, hw):
    """(B, H*W, C) -> (B, C, H, W)"""
    return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], *hw)


def layer_norm(p, prefix, h):
    """LayerNorm (eps 1e-6, numpy_ref's default) over the last axis: h (B, L, D) -> (B, L, D)"""
    import torch.nn.functional as F
    return F.layer_norm(h, h.shape[-1:], p[f"{prefix}.weight"], p[f"{prefix}.bias"], 1e-6)


# ----------------------------------------------------------------------------
# ResBlock convs: full 3x3 (unet), separable (mobile_unet), expanded separable (snapgen_unet)
# ----------------------------------------------------------------------------

def conv3x3(p, prefix, x):
    """x (B, Cin, H, W) -> (B, Cout, H, W)"""
    return conv(p, prefix, x, padding=1)


def separable_conv(p, prefix, x):
    """depthwise 3x3, then pointwise 1x1: x (B, Cin, H, W) -> (B, Cout, H, W)"""
    return conv(p, f"{prefix}.pw", conv(p, f"{prefix}.dw", x, padding=1, groups=x.shape[1]))


def expanded_separable_conv(p, prefix, x):
    """1x1 expand, depthwise 3x3, SiLU, 1x1 project: x (B, Cin, H, W) -> (B, Cout, H, W)"""
    import torch.nn.functional as F
    h = conv(p, f"{prefix}.expand", x)                                                     # (B, hid, H, W)
    h = F.silu(conv(p, f"{prefix}.dw", h, padding=1, groups=h.shape[1]))
    return conv(p, f"{prefix}.project", h)


def res_block(p, prefix, x, temb, cfg, conv_fn):
    """GN, SiLU, conv, + Linear(SiLU(temb)), GN, SiLU, conv; 1x1 skip conv when channels change.
    x (B, Cin, H, W), temb (B, E) -> (B, Cout, H, W)"""
    import torch.nn.functional as F
    h = conv_fn(p, f"{prefix}.conv1", F.silu(norm(p, f"{prefix}.norm1", x, cfg)))
    h = h + F.linear(F.silu(temb), p[f"{prefix}.temb.weight"], p[f"{prefix}.temb.bias"])[:, :, None, None]
    h = conv_fn(p, f"{prefix}.conv2", F.silu(norm(p, f"{prefix}.norm2", h, cfg)))
    return (conv(p, f"{prefix}.skip", x) if f"{prefix}.skip.weight" in p else x) + h


# ----------------------------------------------------------------------------
# Attention blocks: ADM's (unet) and the transformer block (mobile_unet, snapgen_unet)
# ----------------------------------------------------------------------------

def attn_block(p, prefix, x, temb, cfg):
    """x + proj(MHSA(GN(x))) over all H*W positions: x (B, C, H, W) -> (B, C, H, W); temb unused (ADM)."""
    h = to_tokens(norm(p, f"{prefix}.norm", x, cfg))                                       # (B, L, C)
    return x + to_map(torch_attention(h, p, prefix, cfg.heads), x.shape[2:])


def split_heads(x, heads):
    """(B, L, h*d) -> (B, h, L, d)"""
    B, L, D = x.shape
    return x.reshape(B, L, heads, D // heads).transpose(1, 2)


def merge_heads(o):
    """(B, h, L, d) -> (B, L, h*d)"""
    B, h, L, d = o.shape
    return o.transpose(1, 2).reshape(B, L, h * d)


def shared_kv_attention(h, p, prefix, heads):
    """Self-attention with k = v = h Wkv: h (B, L, D) -> (B, L, D)"""
    import torch.nn.functional as F
    kv = split_heads(F.linear(h, p[f"{prefix}.kv.weight"]), heads)                         # (B, h, L, d)
    o = F.scaled_dot_product_attention(split_heads(F.linear(h, p[f"{prefix}.q.weight"]), heads), kv, kv)
    return F.linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def multi_query_attention(h, p, prefix, heads):
    """`heads` query heads over one shared K/V head: h (B, L, D) -> (B, L, D)"""
    import torch.nn.functional as F
    q = split_heads(F.linear(h, p[f"{prefix}.q.weight"]), heads)                           # (B, h, L, d)
    k = F.linear(h, p[f"{prefix}.k.weight"])[:, None]                                      # (B, 1, L, d)
    v = F.linear(h, p[f"{prefix}.v.weight"])[:, None]                                      # (B, 1, L, d)
    o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)                           # (B, h, L, d)
    return F.linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def transformer_block(p, prefix, x, temb, cfg, attn):
    """h = x + Linear(SiLU(temb)); h += Attn(LN(h)); h += MLP(LN(h)): x (B, D, H, W), temb (B, E) -> (B, D, H, W)"""
    import torch.nn.functional as F
    h = to_tokens(x) + F.linear(F.silu(temb), p[f"{prefix}.temb.weight"], p[f"{prefix}.temb.bias"])[:, None]
    h = h + attn(layer_norm(p, f"{prefix}.norm1", h), p, prefix, cfg.heads)               # (B, L, D)
    z = F.linear(layer_norm(p, f"{prefix}.norm2", h), p[f"{prefix}.fc1.weight"], p[f"{prefix}.fc1.bias"])
    h = h + F.linear(F.gelu(z), p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])
    return to_map(h, x.shape[2:])


# ----------------------------------------------------------------------------
# The U-Net and the three architectures
# ----------------------------------------------------------------------------

def unet_forward(p, x, t, y, cfg, conv_at, attn):
    """numpy_ref.models.unet.unet_forward in PyTorch, with the architecture's ResBlock conv at a level, conv_at(level),
    and attention block attn(p, prefix, x, temb, cfg): x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    import torch
    import torch.nn.functional as F
    temb = torch_conditioning(p, t, y, cfg.channels, cfg)                                  # (B, E)
    h = conv3x3(p, "input_conv", x)                                                        # (B, ch0, H, W)
    skips = [h]
    for op in layout(cfg):
        if op.pop:
            h = torch.cat([h, skips.pop()], 1)                                             # (B, cin, h, w)
        if op.kind == "res":
            h = res_block(p, op.prefix, h, temb, cfg, conv_at(op.level))
        elif op.kind == "attn":
            h = attn(p, op.prefix, h, temb, cfg)
        elif op.kind == "down":
            h = conv(p, op.prefix, h, stride=2, padding=1)                                 # (B, C, h/2, w/2)
        else:
            h = conv3x3(p, op.prefix, F.interpolate(h, scale_factor=2, mode="nearest"))   # (B, C, 2h, 2w)
        if op.push:
            skips.append(h)
    return conv3x3(p, "out_conv", F.silu(norm(p, "out_norm", h, cfg)))                     # (B, C, H, W)


def torch_unet(p, x, t, y, cfg):
    """numpy_ref.models.unet.forward in PyTorch: x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    return unet_forward(p, x, t, y, cfg, lambda level: conv3x3, attn_block)


def torch_mobile_unet(p, x, t, y, cfg):
    """numpy_ref.models.mobile_unet.forward in PyTorch: x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    return unet_forward(p, x, t, y, cfg, lambda level: separable_conv if is_separable(cfg, level) else conv3x3,
                        partial(transformer_block, attn=shared_kv_attention))


def torch_snapgen_unet(p, x, t, y, cfg):
    """numpy_ref.models.snapgen_unet.forward in PyTorch: x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    return unet_forward(p, x, t, y, cfg, lambda level: expanded_separable_conv,
                        partial(transformer_block, attn=multi_query_attention))
