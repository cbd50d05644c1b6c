# %% [markdown]
# # 02 The token-free block: shapes, attention, and where position comes from
#
# The token-free diffusion transformer (arXiv 2411.06119, `numpy_ref/models/tokenfree.py`) has no
# tokenizer and no positional embedding. An initial convolution (the *stem*) turns the image into a
# feature map; N blocks of one fixed size work on that map; a linear head turns it back into an
# image. This tutorial steps through one forward pass with the model's own functions, printing the
# shape after every step, then asks: attention does not know where anything is, so how does the
# model know where a pixel is?
#
# Writes `02_stem.png` (what the stem sees) and `02_position.png` (where position information lives).

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from dataclasses import replace

import numpy as np

from numpy_ref.configs import get_config
from numpy_ref.data import load_dataset
from numpy_ref.layers import conv2d, depth_to_space, layer_norm, linear, modulate, multi_head_attention, silu
from numpy_ref.models import tokenfree
from tutorial_utils import FAST, heat, image_table

# tokenfree-xs: width D=128, 7 blocks, 4 heads, stem stride S=4 -> an 8x8 map from a 32x32 image
PRESET, SIZE = ("tokenfree-tiny", 16) if FAST else ("tokenfree-xs", 32)
cfg = get_config(PRESET, img_size=SIZE, in_channels=3, num_classes=6)
print(cfg)

# %% [markdown]
# ## Parameters, and waking up the blocks
#
# `init_params` follows DiT's adaLN-Zero: the gates that scale each block's attention and MLP start
# at zero, so a fresh model's blocks are the identity. Training moves them away from zero; here we
# give the modulation biases random values instead, so the blocks act on the features the way they
# would in a trained model (the mechanisms below do not depend on the exact values).

# %%
params = tokenfree.init_params(cfg, seed=0)
rng = np.random.default_rng(0)
for name in params:
    if ".ada.bias" in name:
        params[name] = rng.normal(0.0, 0.5, params[name].shape).astype(np.float32)
print(f"{len(params)} tensors, {sum(v.size for v in params.values()):,} parameters")
for name in ("stem.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.pos_conv.weight",
             f"blocks.{cfg.depth - 1}.skip_linear.weight", "final.linear.weight", "final_conv.weight"):
    print(f"  {name:32s} {params[name].shape}")

# %% [markdown]
# ## One forward pass, step by step
#
# The same steps as `tokenfree.forward`, one line each, with the shape after every step.
# B = batch, D = width, L = (H/S)(W/S) positions of the feature map.

# %%
ds = load_dataset("shapes", "test", size=SIZE)
x = ds.images[:2]                                                    # (B, C, H, W) = (2, 3, SIZE, SIZE)
t = np.array([10, 500])
y = ds.labels[:2]
S, D, B = cfg.stride, cfg.width, len(x)

def show(what, a):
    print(f"{what:58s} {tuple(a.shape)}")

show("x: images in [-1, 1]", x)
h = conv2d(x, params["stem.weight"], params["stem.bias"], stride=S, padding=1)
show(f"stem: Conv2d(3 -> {D}, kernel {S + 2}, stride {S}, padding 1)", h)
hw = h.shape[2:]
h = h.reshape(B, D, -1).transpose(0, 2, 1)
show("flatten the map into a sequence of positions (B, L, D)", h)
c = tokenfree.conditioning(params, t, y, cfg, x.dtype)
show("c = MLP(sinusoid(t)) + label_embed(y)", c)
skips = []
for i in range(cfg.depth):
    kind = tokenfree.block_kind(i, cfg)
    if kind == "out":
        h = linear(np.concatenate([h, skips.pop()], -1), params[f"blocks.{i}.skip_linear.weight"],
                   params[f"blocks.{i}.skip_linear.bias"])
        show(f"  block {i} ({kind}): skip_linear(concat(h, skip)) 2D -> D", h)
    h = tokenfree.block(params, f"blocks.{i}", h, c, hw, cfg)
    show(f"  block {i} ({kind}): attention + MLP, same shape in and out", h)
    if kind == "in":
        skips.append(h)
shift, scale = np.split(linear(silu(c), params["final.ada.weight"], params["final.ada.bias"]), 2, axis=-1)
h = linear(modulate(layer_norm(h), shift, scale), params["final.linear.weight"], params["final.linear.bias"])
show(f"head: LN + adaLN + Linear(D -> S*S*C = {S * S * 3})", h)
h = h.transpose(0, 2, 1).reshape(B, S * S * 3, *hw)
show("back to a map", h)
h = depth_to_space(h, S)
show(f"depth_to_space(S={S}): every position becomes an SxS pixel patch", h)
eps = conv2d(h, params["final_conv.weight"], params["final_conv.bias"], padding=1)
show("final_conv 3x3: eps, the predicted noise", eps)
diff = np.abs(eps - tokenfree.forward(params, x, t, y, cfg)).max()
print(f"max |step-by-step - tokenfree.forward| = {diff:.1e}")
assert diff < 1e-5

# %% [markdown]
# Every block takes and returns (B, L, D): that is the "fixed-size reusable block". Hardware that
# runs one block can run all of them; `06_architectures.py` counts what this saves in kernels.
#
# ## What the stem sees
#
# The stem is a strided convolution whose kernel (S+2) is wider than its stride S: neighbouring
# positions overlap by one pixel on each side. Below: two images, then 8 of the D stem channels.

# %%
stem = conv2d(x, params["stem.weight"], params["stem.bias"], stride=S, padding=1)       # (B, D, H/S, W/S)
up = lambda m: np.repeat(np.repeat(m, S, -1), S, -2)                 # draw each position as SxS pixels
rows = [(ds.class_names[y[b]], np.concatenate([x[b:b + 1], heat(up(stem[b, :8]))])) for b in range(B)]
path = image_table("02_stem.png", rows, col_titles=["image"] + [f"ch {k}" for k in range(8)], upscale=96 // SIZE,
                   title=f"stem output: {stem.shape[2]}x{stem.shape[3]} positions, {D} channels (8 shown)")
print("wrote", path)

# %% [markdown]
# ## Attention does not know where things are
#
# Self-attention without positional embeddings is *permutation-equivariant*: shuffle the positions
# going in and the output is shuffled the same way, nothing else changes. Check it on the stem
# features: attention alone, then a whole block without and with `pos_conv` (the depthwise 3x3
# convolution on the MLP's hidden map, DESIGN.md 3.1).

# %%
tokens = stem.reshape(B, D, -1).transpose(0, 2, 1)                   # (B, L, D)
perm = np.random.default_rng(1).permutation(tokens.shape[1])
att = lambda h: multi_head_attention(layer_norm(h), params, "blocks.0.attn", cfg.heads)
print(f"attention:                 max |f(shuffled) - shuffled f| = {np.abs(att(tokens[:, perm]) - att(tokens)[:, perm]).max():.1e}")
results = {}
for pos_conv in (False, True):
    cfg_b = replace(cfg, pos_conv=pos_conv)
    p_b = params if pos_conv else {k: v for k, v in params.items() if "pos_conv" not in k}
    blk = lambda h: tokenfree.block(p_b, "blocks.0", h, c, hw, cfg_b)
    results[pos_conv] = np.abs(blk(tokens[:, perm]) - blk(tokens)[:, perm]).max()
    print(f"block with pos_conv={str(pos_conv):5s}: max |f(shuffled) - shuffled f| = {results[pos_conv]:.1e}")

# %% [markdown]
# Without `pos_conv` the block cannot tell a shuffled map from the real one (the difference is
# float32 rounding). With it, the 3x3 convolution mixes each position with its neighbours on the
# map, so the block now depends on the layout.
#
# ## Where position information comes from: the zero padding of the stem
#
# Feed a *constant* image (every pixel the same grey). Nothing in the content says where anything
# is, so any difference between positions must come from the network itself. The maps show, for
# every position, the distance of its feature vector from the centre position's vector
# (dark blue = identical to the centre, yellow = most different); each panel has its own colour scale.
#
# - Row 1, the real model: the stem's zero padding makes the outer ring of positions different
#   (its kernels overlap the zeros); each block's `pos_conv` carries that difference one ring
#   further in.
# - Row 2, `pos_conv=False`: attention and the MLP treat equal vectors equally, so the interior
#   stays one uniform block however deep the network is.
# - Row 3, the stem with edge padding (the border pixel repeated) instead of zeros, and no
#   `pos_conv`: no position differs from any other, at any depth.
# - Row 4, edge padding at the stem but with `pos_conv`: the 3x3 convolution pads with zeros too,
#   so it is a second source of position, ring by ring from the border.
#
# The grey is 0.5, not 0: a zero image would look exactly like its zero padding.

# %%
flat = np.full((1, 3, SIZE, SIZE), 0.5, np.float32)                 # constant light grey
c1 = c[:1]

def stage_maps(h_map, pos_conv):
    """The feature map after the stem and after every block: [(H/S, W/S, D)]"""
    cfg_b = replace(cfg, pos_conv=pos_conv)
    p_b = params if pos_conv else {k: v for k, v in params.items() if "pos_conv" not in k}
    h = h_map.reshape(1, D, -1).transpose(0, 2, 1)
    out, skips = [h], []
    for i in range(cfg.depth):
        kind = tokenfree.block_kind(i, cfg)
        if kind == "out":
            h = linear(np.concatenate([h, skips.pop()], -1), p_b[f"blocks.{i}.skip_linear.weight"],
                       p_b[f"blocks.{i}.skip_linear.bias"])
        h = tokenfree.block(p_b, f"blocks.{i}", h, c1, hw, cfg_b)
        if kind == "in":
            skips.append(h)
        out.append(h)
    return [o[0].reshape(*hw, D) for o in out]

def distinct(m):
    """How many different feature vectors the map holds (positions the network can tell apart).
    Vectors closer than 1e-4 of the map's largest value count as one: float32 rounding is not a position."""
    reps = []
    for v in m.reshape(-1, D) / (np.abs(m).max() + 1e-12):
        if not any(np.abs(v - r).max() < 1e-4 for r in reps):
            reps.append(v)
    return len(reps)

def dist_from_centre(m):
    return np.linalg.norm(m - m[hw[0] // 2, hw[1] // 2], axis=-1)

zero_pad = conv2d(flat, params["stem.weight"], params["stem.bias"], stride=S, padding=1)
edge_pad = conv2d(np.pad(flat, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge"), params["stem.weight"],
                  params["stem.bias"], stride=S, padding=0)
variants = [("zero padding, pos_conv", zero_pad, True), ("zero padding, no pos_conv", zero_pad, False),
            ("edge padding, no pos_conv", edge_pad, False), ("edge padding, pos_conv", edge_pad, True)]
rows, counts = [], {}
for label, h_map, pos_conv in variants:
    maps = stage_maps(h_map, pos_conv)
    counts[label] = [distinct(m) for m in maps]
    rows.append((label, np.concatenate([heat(up(dist_from_centre(m)[None])) for m in maps])))
    print(f"{label:28s} distinct positions after the stem and each block: {counts[label]}  (of {hw[0] * hw[1]})")
path = image_table("02_position.png", rows, col_titles=["stem"] + [f"block {i}" for i in range(cfg.depth)],
                   upscale=max(1, 64 // SIZE),
                   title="constant grey input: distance of each position's features from the centre position's")
print("wrote", path)

# %% [markdown]
# ## What to look at
#
# - The shape table: every block is (B, L, D) in and out.
# - `02_stem.png`: stem channels respond to edges and colours of the shape, at 1/S resolution.
# - `02_position.png`, row 1: a bright ring at the border after the stem, growing inward block by
#   block until every position is distinct. Row 2: the interior stays dark blue (one uniform block).
#   Row 3: dark blue everywhere -- without zero padding the model has no idea where it is. Row 4: the
#   stem gives nothing, then pos_conv's own zero padding brings the border in, one block later.
#
# Next: `03_samplers.py` turns a trained eps-predictor into images.

# %%
print("\nlook at: 02_stem.png (stem channels), 02_position.png (rows: zero padding with and without pos_conv, "
      "edge padding without and with pos_conv)")
print(f"KEY perm_diff_no_pos_conv={results[False]:.2e} perm_diff_pos_conv={results[True]:.2e} "
      f"distinct_final={counts['zero padding, pos_conv'][-1]} distinct_final_no_pos_conv={counts['zero padding, no pos_conv'][-1]} "
      f"distinct_edge_pad_no_pos_conv={counts['edge padding, no pos_conv'][-1]}")
