"""MobileDiffusion's UNet in tinygrad: a line-by-line port of numpy_ref/models/mobile_unet.py."""
# the shared contract: the parameter shapes and where the convs are separable
from numpy_ref.configs import DEFAULT_T
from numpy_ref.models.mobile_unet import (is_separable, param_shapes, separable_conv_shapes,  # noqa: F401
                                          shared_kv_attention_shapes, transformer_shapes)
from numpy_ref.models import mobile_unet as _ref
from ..layers import attention, conv2d, gelu, layer_norm, linear, merge_heads, silu, split_heads
from ..weights import to_tensors
from .text_cond import cross_attention
from .unet import conv3x3, to_map, to_tokens, unet_forward

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def separable_conv(p, prefix, x, cfg):
    """depthwise 3x3 (groups = Cin), then pointwise 1x1: x (B, Cin, H, W) -> (B, Cout, H, W)"""
    h = conv2d(x, p[f"{prefix}.dw.weight"], p[f"{prefix}.dw.bias"], padding=1, groups=x.shape[1])   # (B, Cin, H, W)
    return conv2d(h, p[f"{prefix}.pw.weight"], p[f"{prefix}.pw.bias"])                           # (B, Cout, H, W)


def shared_kv_attention(h, p, prefix, heads):
    """Self-attention with k = v = h Wkv (one projection for both): h (B, L, D) -> (B, L, D)"""
    q = linear(h, p[f"{prefix}.q.weight"])                                                 # (B, L, D)
    kv = split_heads(linear(h, p[f"{prefix}.kv.weight"]), heads)                           # (B, h, L, d)
    o = attention(split_heads(q, heads), kv, kv)                                           # (B, h, L, d)
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def transformer_block(p, prefix, x, temb, cfg, attn=shared_kv_attention, txt=None):
    """h = x + Linear(SiLU(temb)); h += Attn(LN(h)); [h += CrossAttn(LN(h), text)]; h += MLP(LN(h)):
    x (B, D, H, W), temb (B, E), txt text_cond.Text or None -> (B, D, H, W)"""
    h = to_tokens(x) + linear(silu(temb), p[f"{prefix}.temb.weight"], p[f"{prefix}.temb.bias"])[:, None]   # (B, L, D)
    h = h + attn(layer_norm(h, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"]), p, prefix, cfg.heads)
    if txt is not None:
        h = h + cross_attention(p, f"{prefix}.cross", layer_norm(h, p[f"{prefix}.cross.norm.weight"],
                                                                 p[f"{prefix}.cross.norm.bias"]), txt, cfg.heads)
    z = linear(layer_norm(h, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"]), p[f"{prefix}.fc1.weight"],
               p[f"{prefix}.fc1.bias"])                                                    # (B, L, hid)
    h = h + linear(gelu(z), p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])
    return to_map(h, x.shape[2:])


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). H and W must be divisible by
    2**(len(channel_mult) - 1)."""
    return unet_forward(params, x, t, y, cfg, lambda level: separable_conv if is_separable(cfg, level) else conv3x3,
                        transformer_block, T)
