"""SnapGen's efficient UNet in tinygrad: a line-by-line port of numpy_ref/models/snapgen_unet.py."""
from functools import partial

from numpy_ref.configs import DEFAULT_T
# the shared contract: the parameter shapes
from numpy_ref.models.snapgen_unet import (expanded_separable_conv_shapes, multi_query_attention_shapes,  # noqa: F401
                                           param_shapes)
from numpy_ref.models import snapgen_unet as _ref
from ..layers import attention, conv2d, linear, merge_heads, silu, split_heads
from ..weights import to_tensors
from .mobile_unet import transformer_block
from .unet import unet_forward

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def expanded_separable_conv(p, prefix, x, cfg):
    """1x1 expand, depthwise 3x3, SiLU, 1x1 project: x (B, Cin, H, W) -> (B, Cout, H, W)"""
    h = conv2d(x, p[f"{prefix}.expand.weight"], p[f"{prefix}.expand.bias"])               # (B, hid, H, W)
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
