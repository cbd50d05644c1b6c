"""MobileDiffusion's UNet (arXiv 2311.16567), as read in DESIGN.md 3.5: the U-Net of unet.py with

- transformer blocks only at the lowest resolution (the encoder's and decoder's lowest level and the
  middle), none at the higher ones (the config requires attn_levels == (levels - 1,));
- a shared key/value projection in attention: one matrix `kv.weight` is both Wk and Wv;
- depthwise-separable convs (depthwise 3x3 + pointwise 1x1) in the ResBlocks at levels >= separable_from
  and in the middle; full 3x3 convs above;
- Swish (SiLU) activations throughout (unet.py's ResBlocks already use them).

Text conditioning (cfg.text_vocab > 0): a cross-attention sub-layer in each transformer block between the
self-attention and the MLP (LayerNorm, cross-attention, zero-initialised `cross.proj`, residual), as in the
transformer blocks of MobileDiffusion and Stable Diffusion; plain multi-head K/V there (the K/V sharing targets
self-attention over the map, the prompt has only text_len tokens). The rest as in unet.py.
"""
from ..configs import DEFAULT_T
from ..layers import attention, conv2d, gelu, layer_norm, linear, merge_heads, silu, split_heads
from .text_cond import cross_attention, init_text
from .unet import conv3x3, conv3x3_shapes, init_from_shapes, to_map, to_tokens, unet_forward, unet_shapes

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def separable_conv_shapes(prefix, cin, cout, cfg):
    return {f"{prefix}.dw.weight": (cin, 1, 3, 3), f"{prefix}.dw.bias": (cin,),
            f"{prefix}.pw.weight": (cout, cin, 1, 1), f"{prefix}.pw.bias": (cout,)}


def shared_kv_attention_shapes(prefix, D, cfg):
    # no q/kv bias: a bias on the shared projection would tie the biases of k and v as well
    return {f"{prefix}.q.weight": (D, D), f"{prefix}.kv.weight": (D, D),
            f"{prefix}.proj.weight": (D, D), f"{prefix}.proj.bias": (D,)}


def transformer_shapes(prefix, D, cfg, attn_shapes=shared_kv_attention_shapes):
    """LN + attention + LN + GELU MLP, with the time embedding added to the input through `temb` (with text
    unet_shapes adds the cross-attention `{prefix}.cross`)."""
    hid, E = int(D * cfg.mlp_ratio), 4 * cfg.channels
    return {f"{prefix}.temb.weight": (D, E), f"{prefix}.temb.bias": (D,),
            f"{prefix}.norm1.weight": (D,), f"{prefix}.norm1.bias": (D,), **attn_shapes(prefix, D, cfg),
            f"{prefix}.norm2.weight": (D,), f"{prefix}.norm2.bias": (D,),
            f"{prefix}.fc1.weight": (hid, D), f"{prefix}.fc1.bias": (hid,),
            f"{prefix}.fc2.weight": (D, hid), f"{prefix}.fc2.bias": (D,)}


def is_separable(cfg, level):
    return level >= cfg.separable_from


def param_shapes(cfg):
    """name -> shape of every parameter; the contract both backends and the weight files follow."""
    return unet_shapes(cfg, lambda level: separable_conv_shapes if is_separable(cfg, level) else conv3x3_shapes,
                       transformer_shapes)


def init_params(cfg, seed=0):
    """Fresh parameters (float32), see unet.init_from_shapes; text.* from the text encoder's own initialisation."""
    return init_text(init_from_shapes(param_shapes(cfg), seed), cfg, seed)


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
    # time is added to the input, not through adaLN: one (D, E) linear instead of (6D, E); the ResBlocks condition on t too
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
