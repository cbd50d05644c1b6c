"""SnapGen's efficient UNet (arXiv 2412.09619), as read in DESIGN.md 3.6: the U-Net of unet.py with

- transformer blocks only at the lowest-resolution stage (the config requires attn_levels == (levels - 1,));
- ResBlocks whose convs are expanded separable convs at every level: pointwise 1x1 to
  conv_expansion * Cin channels, depthwise 3x3, SiLU, pointwise 1x1 to Cout;
- FFN ratio 3 in the transformer blocks (cfg.mlp_ratio, 3.0 in the presets);
- multi-query attention: one K/V head of size head_dim shared by all query heads.
The transformer block itself is mobile_unet's; only its attention differs. Knowledge distillation
(DESIGN.md 3.6) belongs to training, not to the model.
Text conditioning (cfg.text_vocab > 0): mobile_unet's, the cross-attention in the transformer block between the
self-attention and the MLP (plain multi-head K/V: the prompt has only text_len tokens), the pooled text in temb.
"""
from functools import partial

from ..configs import DEFAULT_T
from ..layers import attention, conv2d, linear, merge_heads, silu, split_heads
from .mobile_unet import transformer_block, transformer_shapes
from .text_cond import init_text
from .unet import init_from_shapes, unet_forward, unet_shapes

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def expanded_separable_conv_shapes(prefix, cin, cout, cfg):
    hid = cfg.conv_expansion * cin
    return {f"{prefix}.expand.weight": (hid, cin, 1, 1), f"{prefix}.expand.bias": (hid,),
            f"{prefix}.dw.weight": (hid, 1, 3, 3), f"{prefix}.dw.bias": (hid,),
            f"{prefix}.project.weight": (cout, hid, 1, 1), f"{prefix}.project.bias": (cout,)}


def multi_query_attention_shapes(prefix, D, cfg):
    d = D // cfg.heads
    return {f"{prefix}.q.weight": (D, D), f"{prefix}.k.weight": (d, D), f"{prefix}.v.weight": (d, D),
            f"{prefix}.proj.weight": (D, D), f"{prefix}.proj.bias": (D,)}


def param_shapes(cfg):
    """name -> shape of every parameter; the contract both backends and the weight files follow."""
    return unet_shapes(cfg, lambda level: expanded_separable_conv_shapes,
                       partial(transformer_shapes, attn_shapes=multi_query_attention_shapes))


def init_params(cfg, seed=0):
    """Fresh parameters (float32), see unet.init_from_shapes; text.* from the text encoder's own initialisation."""
    return init_text(init_from_shapes(param_shapes(cfg), seed), cfg, seed)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def expanded_separable_conv(p, prefix, x, cfg):
    """1x1 expand, depthwise 3x3, SiLU, 1x1 project: x (B, Cin, H, W) -> (B, Cout, H, W)"""
    h = conv2d(x, p[f"{prefix}.expand.weight"], p[f"{prefix}.expand.bias"])               # (B, hid, H, W)
    # one nonlinearity in the wide space (as in an inverted bottleneck); the ResBlock's GN + SiLU wrap the rest
    h = silu(conv2d(h, p[f"{prefix}.dw.weight"], p[f"{prefix}.dw.bias"], padding=1, groups=h.shape[1]))
    return conv2d(h, p[f"{prefix}.project.weight"], p[f"{prefix}.project.bias"])          # (B, Cout, H, W)


def multi_query_attention(h, p, prefix, heads):
    """`heads` query heads over one shared K/V head: h (B, L, D) -> (B, L, D)"""
    q = split_heads(linear(h, p[f"{prefix}.q.weight"]), heads)                            # (B, h, L, d)
    k = linear(h, p[f"{prefix}.k.weight"])[:, None]                                        # (B, 1, L, d)
    v = linear(h, p[f"{prefix}.v.weight"])[:, None]                                        # (B, 1, L, d)
    o = attention(q, k, v)                                                                 # (B, h, L, d)
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). H and W must be divisible by
    2**(len(channel_mult) - 1)."""
    return unet_forward(params, x, t, y, cfg, lambda level: expanded_separable_conv,
                        partial(transformer_block, attn=multi_query_attention), T)
