"""The text encoder in tinygrad: a line-by-line port of numpy_ref/text.py (the tokenizer, vocabulary and
configuration are shared from there)."""
import numpy as np
from tinygrad import Tensor, dtypes

from numpy_ref.text import (MASK_BIAS, PAD_ID, TextConfig, check_ids, check_vocab, decode, encode,  # noqa: F401
                            encode_batch, param_shapes, tokenize, vocab_from_json, vocab_to_json)
from numpy_ref import text as _ref
from .layers import attention, embedding, gelu, layer_norm, linear, merge_heads, split, split_heads
from .weights import to_tensors

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def key_mask(ids):
    """ids (B, L) int Tensor -> (B, L) bool Tensor: the positions attention may read. The real (non-PAD) tokens; in a
    row of PAD only (the empty prompt) every position, so its output is a fixed, well-defined null embedding."""
    real = ids != PAD_ID
    return real | real.any(-1, keepdim=True).logical_not()


def self_attention(p, prefix, x, bias, heads):
    """Multi-head self-attention whose logits get `bias` (B, 1, 1, L) (0 or MASK_BIAS per key): x (B, L, D) ->
    (B, L, D). The parameters of layers.multi_head_attention: {prefix}.qkv.weight (3D, D) + .bias,
    {prefix}.proj.weight (D, D) + .bias."""
    qkv = linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])          # (B, L, 3D)
    q, k, v = split(qkv, 3)                                                        # 3 x (B, L, D)
    o = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), bias)   # (B, h, L, d)
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def mlp(p, prefix, x):
    """fc1 -> GELU -> fc2: x (B, L, D) -> (B, L, D)"""
    return linear(gelu(linear(x, p[f"{prefix}.fc1.weight"], p[f"{prefix}.fc1.bias"])),
                  p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])


def layer(p, prefix, h, bias, cfg):
    """One pre-LN transformer layer: h (B, L, D), bias (B, 1, 1, L) -> (B, L, D)"""
    h = h + self_attention(p, f"{prefix}.attn", layer_norm(h, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"]),
                           bias, cfg.heads)
    return h + mlp(p, f"{prefix}.mlp", layer_norm(h, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"]))


def text_encoder(p, ids, cfg):
    """ids (B, L) int (NumPy or Tensor), L <= cfg.max_len, PAD_ID-padded -> (h (B, L, width) float32 Tensor,
    mask (B, L) bool Tensor = key_mask(ids): the positions a consumer should attend to). h at a real position does
    not depend on the PAD tokens; h at a PAD position is defined but carries nothing."""
    check_ids(ids, cfg)
    tok = p["text.tok_embed.weight"]
    ids = ids if isinstance(ids, Tensor) else Tensor(np.asarray(ids, np.int32), device=tok.device)
    B, L = ids.shape
    mask = key_mask(ids)                                                            # (B, L)
    bias = mask.where(0.0, MASK_BIAS).cast(dtypes.float32).reshape(B, 1, 1, L)     # (B, 1, 1, L)
    h = embedding(ids, tok) + p["text.pos_embed.weight"][:L]                        # (B, L, D)
    for i in range(cfg.depth):
        h = layer(p, f"text.layers.{i}", h, bias, cfg)
    return layer_norm(h, p["text.final_norm.weight"], p["text.final_norm.bias"]), mask
