"""The U-Net baseline (DDPM / ADM style), DESIGN.md 3.4, and the pieces mobile_unet and snapgen_unet reuse.

Levels l = 0..n-1 (n = len(channel_mult)) work at img_size / 2**l with channels * channel_mult[l]
channels. The encoder runs num_res_blocks ResBlocks per level (each followed by self-attention at
the levels in attn_levels) and a stride-2 conv between levels; a middle ResBlock-attention-ResBlock;
the decoder runs num_res_blocks + 1 ResBlocks per level, each first concatenating the newest
encoder activation (skips are popped LIFO), and a nearest x2 + conv between levels.

The U-Net is written once (`layout`, `unet_shapes`, `unet_forward`); an architecture supplies the
convolution of its ResBlocks at each level and its attention block.

Text conditioning (cfg.text_vocab > 0; y = token ids (B, L)), the same in the whole family: every attention block
also cross-attends to the prompt's encoder states (text_cond.py) after its self-attention (a norm, cross-attention,
a zero-initialised output projection `cross.proj`, a residual: a fresh model ignores the prompt there), and the
pooled text is added to the time embedding in place of the class embedding. Where the cross-attention sits is the
attention block's choice: here (ADM) GroupNorm + cross-attention after the self-attention block.
"""
from collections import namedtuple

import numpy as np

from ..configs import DEFAULT_T, check_inputs
from ..layers import concat, conv2d, embedding, group_norm, linear, multi_head_attention, silu, timestep_embedding
from .text_cond import cross_attention, cross_attention_shapes, encode, init_text, pooled_embedding, text_shapes

# ----------------------------------------------------------------------------
# The plan: every block in forward order, shared by param_shapes and forward
# ----------------------------------------------------------------------------

# kind: "res" | "attn" | "down" | "up"; pop: concatenate the newest skip first; push: save the output as a skip
Op = namedtuple("Op", "kind prefix cin cout level pop push")


def channels_at(cfg, level):
    return cfg.channels * cfg.channel_mult[level]


def layout(cfg):
    """The U-Net as a list of Ops in forward order (input conv and output head excluded)."""
    n, ops = len(cfg.channel_mult), []
    ch = channels_at(cfg, 0)
    skip_ch = [ch]                                      # the input conv's output is the first skip
    for l in range(n):
        for i in range(cfg.num_res_blocks):
            has_attn = l in cfg.attn_levels
            ops.append(Op("res", f"down.{l}.res.{i}", ch, channels_at(cfg, l), l, False, not has_attn))
            ch = channels_at(cfg, l)
            if has_attn:
                ops.append(Op("attn", f"down.{l}.attn.{i}", ch, ch, l, False, True))
            skip_ch.append(ch)
        if l < n - 1:
            ops.append(Op("down", f"down.{l}.downsample", ch, ch, l, False, True))
            skip_ch.append(ch)
    # the middle has attention only where the lowest level has it, so attn_levels says exactly where attention is
    ops.append(Op("res", "mid.res.0", ch, ch, n - 1, False, False))
    if n - 1 in cfg.attn_levels:
        ops.append(Op("attn", "mid.attn", ch, ch, n - 1, False, False))
    ops.append(Op("res", "mid.res.1", ch, ch, n - 1, False, False))
    for l in reversed(range(n)):
        for i in range(cfg.num_res_blocks + 1):
            ops.append(Op("res", f"up.{l}.res.{i}", ch + skip_ch.pop(), channels_at(cfg, l), l, True, False))
            ch = channels_at(cfg, l)
            if l in cfg.attn_levels:
                ops.append(Op("attn", f"up.{l}.attn.{i}", ch, ch, l, False, False))
        if l > 0:
            ops.append(Op("up", f"up.{l}.upsample", ch, ch, l, False, False))
    return ops


# ----------------------------------------------------------------------------
# Building blocks: parameter shapes
# ----------------------------------------------------------------------------

def norm_shapes(prefix, ch):
    return {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)}


def conv3x3_shapes(prefix, cin, cout, cfg):
    return {f"{prefix}.weight": (cout, cin, 3, 3), f"{prefix}.bias": (cout,)}


def res_block_shapes(prefix, cin, cout, cfg, conv_shapes=conv3x3_shapes):
    E = 4 * cfg.channels
    shapes = {**norm_shapes(f"{prefix}.norm1", cin), **conv_shapes(f"{prefix}.conv1", cin, cout, cfg),
              f"{prefix}.temb.weight": (cout, E), f"{prefix}.temb.bias": (cout,),
              **norm_shapes(f"{prefix}.norm2", cout), **conv_shapes(f"{prefix}.conv2", cout, cout, cfg)}
    if cin != cout:
        shapes.update({f"{prefix}.skip.weight": (cout, cin, 1, 1), f"{prefix}.skip.bias": (cout,)})
    return shapes


def attn_block_shapes(prefix, ch, cfg):
    """GN + self-attention (and with text the cross-attention, `{prefix}.cross`, that unet_shapes adds)"""
    return {**norm_shapes(f"{prefix}.norm", ch),
            f"{prefix}.qkv.weight": (3 * ch, ch), f"{prefix}.qkv.bias": (3 * ch,),
            f"{prefix}.proj.weight": (ch, ch), f"{prefix}.proj.bias": (ch,)}


def unet_shapes(cfg, conv_shapes_at, attn_shapes):
    """name -> shape for the U-Net of `layout(cfg)`; the architecture gives conv_shapes_at(level), the shapes
    function of its ResBlock convs at a level, and attn_shapes(prefix, ch, cfg) of its attention block. With text:
    the text encoder (text.*), text_pool (E, Dt), and a cross-attention `{attn prefix}.cross` per attention block."""
    ch0, E, C = channels_at(cfg, 0), 4 * cfg.channels, cfg.in_channels
    shapes = {"time_embed.0.weight": (E, cfg.channels), "time_embed.0.bias": (E,),
              "time_embed.2.weight": (E, E), "time_embed.2.bias": (E,)}
    if cfg.num_classes:
        shapes["label_embed.weight"] = (cfg.num_classes + 1, E)    # last row: the null class
    if cfg.text_vocab:
        shapes.update(text_shapes(cfg, E))                          # text.* encoder, text_pool (E, Dt)
    shapes.update(conv3x3_shapes("input_conv", C, ch0, cfg))
    for op in layout(cfg):
        if op.kind == "res":
            shapes.update(res_block_shapes(op.prefix, op.cin, op.cout, cfg, conv_shapes_at(op.level)))
        elif op.kind == "attn":
            shapes.update(attn_shapes(op.prefix, op.cout, cfg))
            if cfg.text_vocab:
                shapes.update(cross_attention_shapes(f"{op.prefix}.cross", op.cout, cfg))
        else:
            shapes.update(conv3x3_shapes(op.prefix, op.cin, op.cout, cfg))
    shapes.update({**norm_shapes("out_norm", ch0), **conv3x3_shapes("out_conv", ch0, C, cfg)})
    return shapes


def param_shapes(cfg):
    """name -> shape of every parameter; the contract both backends and the weight files follow."""
    return unet_shapes(cfg, lambda level: conv3x3_shapes, attn_block_shapes)


# ----------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------

# the last layer of every residual branch starts at zero (ADM), so a fresh network is close to the identity (this
# includes the cross-attention's cross.proj: a fresh text model's output does not depend on the prompt through it)
ZERO_INIT = ("out_conv.weight", "conv2.weight", "conv2.pw.weight", "conv2.project.weight", "proj.weight", "fc2.weight")


def init_from_shapes(shapes, seed):
    """Xavier-uniform weights, zero biases, unit norm scales, zero last layers (ZERO_INIT), N(0, 0.02) embeddings."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in shapes.items():
        if name.endswith(".bias") or name.endswith(ZERO_INIT):
            w = np.zeros(shape)
        elif len(shape) == 1:
            w = np.ones(shape)                                     # GroupNorm / LayerNorm scale
        elif name.startswith("label_embed"):
            w = rng.normal(0.0, 0.02, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            fan_out = shape[0] * int(np.prod(shape[2:])) if shape[1] > 1 else fan_in   # depthwise: one input each
            a = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-a, a, shape)
        params[name] = w.astype(np.float32)
    return params


def init_params(cfg, seed=0):
    """Fresh parameters (float32), see init_from_shapes; text.* from the text encoder's own initialisation."""
    return init_text(init_from_shapes(param_shapes(cfg), seed), cfg, seed)


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
    h = h + linear(silu(temb), p[f"{prefix}.temb.weight"], p[f"{prefix}.temb.bias"])[:, :, None, None]
    h = conv(p, f"{prefix}.conv2", silu(norm(p, f"{prefix}.norm2", h, cfg)), cfg)          # (B, Cout, H, W)
    skip = conv2d(x, p[f"{prefix}.skip.weight"], p[f"{prefix}.skip.bias"]) if f"{prefix}.skip.weight" in p else x
    return skip + h


def to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)"""
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W).transpose(0, 2, 1)


def to_map(h, hw):
    """(B, H*W, C) -> (B, C, H, W)"""
    B, L, C = h.shape
    return h.transpose(0, 2, 1).reshape(B, C, *hw)


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
    x = x.repeat(2, axis=2).repeat(2, axis=3)
    return conv2d(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], padding=1)


def conditioning(p, t, y, cfg, dtype, txt=None):
    """temb = MLP(sinusoid(t)) + label_embed(y) (class ids) or + text_pool(pooled text) (txt: text_cond.Text):
    t (B,), y (B,) or None -> (B, 4*channels)"""
    temb = timestep_embedding(t, cfg.channels).astype(dtype)                               # (B, ch)
    c = linear(silu(linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
               p["time_embed.2.weight"], p["time_embed.2.bias"])                           # (B, E)
    if cfg.num_classes:
        ids = np.full(len(c), cfg.null_class) if y is None else np.asarray(y).reshape(-1)
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
    txt = encode(p, y, cfg, len(x)) if cfg.text_vocab else None                          # Text: (B, Lt, Dt), ...
    temb = conditioning(p, t, y, cfg, x.dtype, txt)                                        # (B, E)
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
    return conv3x3(p, "out_conv", silu(norm(p, "out_norm", h, cfg)), cfg)                  # (B, C, H, W)


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1], t (B,) in [0, T), y (B,) class ids, (B, L) token ids (text_vocab
    > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W). H and W must be divisible by
    2**(len(channel_mult) - 1)."""
    return unet_forward(params, x, t, y, cfg, lambda level: conv3x3, attn_block, T)
