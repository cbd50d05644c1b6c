"""The token-free diffusion transformer (arXiv 2411.06119), as read in DESIGN.md 3.1.

An initial convolution turns the image into a feature map; N blocks of one
fixed size work on that map as a sequence of positions; a linear head and a
depth-to-space turn it back into an image. No tokenizer, no positional
embedding: the stem's zero padding (and pos_conv inside each block) tell a
position where it is.

The paper's design choices are ModelConfig fields for ablations (the defaults
give the model above): pos_embed, stem_kernel (S: a non-overlapping stem),
stem_padding ("circular": no border cue), share_blocks (one block's weights
reused N times), next to pos_conv and skips.

Text conditioning (cfg.text_vocab > 0; y = token ids (B, L)): the prompt's encoder states (text_cond.py) are read by
a cross-attention sub-layer in every block, after self-attention, with its own adaLN shift/scale/gate from c (the
gate starts at zero: a fresh model ignores the prompt there); the pooled text is added to c in place of the class
embedding. With share_blocks the cross-attention is part of the one shared block.
"""
import numpy as np

from ..configs import DEFAULT_T, check_inputs
from ..layers import (concat, conv2d, depth_to_space, embedding, gelu, layer_norm, linear, modulate, split,
                      multi_head_attention, silu, timestep_embedding, token_depthwise_conv)
from .text_cond import cross_attention, cross_attention_shapes, encode, init_text, pooled_embedding, text_shapes

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def stem_kernel(cfg):
    """The stem's kernel size k (stem_kernel=0: S + 2, overlapping); its padding is (k - S) // 2, so H/S x W/S out."""
    return cfg.stem_kernel or cfg.stride + 2


def block_prefix(i, cfg):
    """Where block i's weights live: its own "blocks.i", or with share_blocks the one shared "blocks.0"."""
    return "blocks.0" if cfg.share_blocks else f"blocks.{i}"


def param_shapes(cfg):
    """name -> shape of every parameter; the contract both backends and the weight files follow."""
    D, S, C, hid = cfg.width, cfg.stride, cfg.in_channels, int(cfg.width * cfg.mlp_ratio)
    k = stem_kernel(cfg)
    shapes = {"stem.weight": (D, C, k, k), "stem.bias": (D,)}
    if cfg.pos_embed:
        shapes["pos_embed"] = (1, (cfg.img_size // S) ** 2, D)     # one row per stem position of an img_size image
    shapes.update({
        "time_embed.0.weight": (D, D), "time_embed.0.bias": (D,),
        "time_embed.2.weight": (D, D), "time_embed.2.bias": (D,),
    })
    if cfg.num_classes:
        shapes["label_embed.weight"] = (cfg.num_classes + 1, D)   # last row: the null class
    if cfg.text_vocab:
        shapes.update(text_shapes(cfg, D))                         # text.* encoder, text_pool (D, Dt)
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        if block_kind(i, cfg) == "out":
            # skip_linear stays per block even with share_blocks: it joins two streams before the block, not part of it
            shapes.update({f"{b}.skip_linear.weight": (D, 2 * D), f"{b}.skip_linear.bias": (D,)})
        if b != block_prefix(i, cfg):
            continue                                   # share_blocks: blocks 1..N-1 reuse blocks.0's weights
        shapes.update({
            f"{b}.ada.weight": (6 * D, D), f"{b}.ada.bias": (6 * D,),
            f"{b}.attn.qkv.weight": (3 * D, D), f"{b}.attn.qkv.bias": (3 * D,),
            f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
            f"{b}.mlp.fc1.weight": (hid, D), f"{b}.mlp.fc1.bias": (hid,),
            f"{b}.mlp.fc2.weight": (D, hid), f"{b}.mlp.fc2.bias": (D,),
        })
        if cfg.pos_conv:
            shapes.update({f"{b}.mlp.pos_conv.weight": (hid, 1, 3, 3), f"{b}.mlp.pos_conv.bias": (hid,)})
        if cfg.text_vocab:
            # a separate adaLN projection (shift, scale, gate) for the cross-attention: the 6-way ada stays as it is
            shapes.update({f"{b}.cross.ada.weight": (3 * D, D), f"{b}.cross.ada.bias": (3 * D,),
                           **cross_attention_shapes(f"{b}.cross", D, cfg, norm=False)})
    shapes.update({
        "final.ada.weight": (2 * D, D), "final.ada.bias": (2 * D,),
        "final.linear.weight": (S * S * C, D), "final.linear.bias": (S * S * C,),
        "final_conv.weight": (C, C, 3, 3), "final_conv.bias": (C,),
    })
    return shapes


def block_kind(i, cfg):
    """'in' blocks push a skip, 'out' blocks pop one (LIFO), the middle block (odd depth) does neither."""
    if not cfg.skips:
        return "mid"
    half = cfg.depth // 2
    return "in" if i < half else ("out" if i >= cfg.depth - half else "mid")


def init_params(cfg, seed=0):
    """Fresh parameters (float32): Xavier-uniform weights (the time MLP too), zero biases, adaLN-Zero (modulation
    and the final linear start at zero, as in DiT; the cross-attention's ada too), a N(0, 1) class embedding, a
    N(0, 0.02) pos_embed (ViT/DiT's scale: small next to the O(1) stem output, so the ablation starts close to the
    model without it), the text encoder's own initialisation for text.*."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(".bias"):
            w = np.zeros(shape)
        elif ".ada." in name or name.startswith("final.linear"):
            w = np.zeros(shape)
        elif name.startswith("label_embed"):
            # N(0, 1) (PyTorch's nn.Embedding default; DiT uses 0.02): the class must reach the adaLN modulation in a short run
            w = rng.standard_normal(shape)
        elif name == "pos_embed":
            w = rng.normal(0.0, 0.02, shape)
        else:
            fan_out, fan_in = shape[0] * int(np.prod(shape[2:])), int(np.prod(shape[1:]))
            if name.endswith("pos_conv.weight"):
                fan_out = fan_in   # depthwise: one input channel per output
            a = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-a, a, shape)
        params[name] = w.astype(np.float32)
    return init_text(params, cfg, seed)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def conditioning(p, t, y, cfg, dtype, txt=None):
    """c = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, D)"""
    temb = timestep_embedding(t, cfg.width).astype(dtype)                          # (B, D)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                    # (B, D)
    if cfg.num_classes:
        ids = np.full(len(c), cfg.null_class) if y is None else np.asarray(y).reshape(-1)
        c = c + embedding(ids, p["label_embed.weight"])
    if txt is not None:
        # the pooled prompt reaches every adaLN modulation (as a class embedding does), not only the cross-attention
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


def check_image_size(cfg, x_shape):
    """pos_embed fixes the token count: only img_size x img_size images; circular padding wraps at most once."""
    H, W = x_shape[2:]
    if cfg.pos_embed and (H != cfg.img_size or W != cfg.img_size):
        raise ValueError(f"image size {H}x{W} does not match img_size={cfg.img_size}: pos_embed=True fixes the token "
                         f"count; resize to {cfg.img_size}x{cfg.img_size} or use pos_embed=False (any size)")
    pad = (stem_kernel(cfg) - cfg.stride) // 2
    if cfg.stem_padding == "circular" and pad > min(H, W):
        raise ValueError(f"image size {H}x{W} is smaller than the stem's circular padding {pad}: it would wrap more "
                         f"than once; use larger images or a smaller stem_kernel")


def stem(p, x, cfg):
    """The initial convolution: x (B, C, H, W) -> (B, D, H/S, W/S); kernel k, stride S, padding (k - S) // 2 of zeros
    or wrapped around. pos_conv and final_conv keep their zero padding: the stem_padding ablation is about the stem."""
    pad = (stem_kernel(cfg) - cfg.stride) // 2
    if cfg.stem_padding == "circular":
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="wrap")      # (B, C, H+2pad, W+2pad)
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
    h = h.reshape(B, cfg.width, -1).transpose(0, 2, 1)                             # (B, L, D)
    if cfg.pos_embed:
        h = h + p["pos_embed"]                                                     # (B, L, D)
    txt = encode(p, y, cfg, B) if cfg.text_vocab else None                         # Text: (B, Lt, Dt), ...
    c = conditioning(p, t, y, cfg, x.dtype, txt)                                   # (B, D)
    skips = []
    for i in range(cfg.depth):
        kind = block_kind(i, cfg)
        if kind == "out":
            h = linear(concat([h, skips.pop()], -1),
                       p[f"blocks.{i}.skip_linear.weight"], p[f"blocks.{i}.skip_linear.bias"])   # (B, L, D)
        h = block(p, block_prefix(i, cfg), h, c, hw, cfg, txt)
        if kind == "in":
            skips.append(h)
    shift, scale = split(linear(silu(c), p["final.ada.weight"], p["final.ada.bias"]), 2)          # 2 x (B, D)
    h = linear(modulate(layer_norm(h), shift, scale), p["final.linear.weight"], p["final.linear.bias"])  # (B, L, S*S*C)
    h = h.transpose(0, 2, 1).reshape(B, S * S * C, *hw)                            # (B, S*S*C, H/S, W/S)
    h = depth_to_space(h, S)                                                       # (B, C, H, W)
    return conv2d(h, p["final_conv.weight"], p["final_conv.bias"], padding=1)
