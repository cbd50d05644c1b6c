# %% [markdown]
# # 06 The architectures side by side: token-free vs U-ViT vs U-Net
#
# Every model in `numpy_ref/models/` has the same interface (`param_shapes`, `init_params`,
# `forward(params, x, t, y, cfg) -> eps`), so they can be compared on the same input. Three
# questions:
#
# 1. How big is each (parameters) and how much work is one image (multiply-accumulates)?
# 2. What shapes flow through it? The token-free model keeps one shape from the first block to the
#    last; a U-Net shrinks and grows its feature maps.
# 3. What does that cost a compiler? tinygrad compiles one program (kernel) per distinct operation
#    and shape; a network of one reused block needs few distinct kernels for many launches.
#
# Writes `06_activations.png`. The kernel counts come from `python -m tinygrad_impl.report`; they
# compile every model (about a minute per model on a laptop CPU), so `TUTORIAL_FAST=1` skips them.

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import json
import subprocess
from contextlib import contextmanager

import numpy as np

import numpy_ref.layers as L
from numpy_ref.configs import get_config
from numpy_ref.models import count_macs, get_model
from tutorial_utils import FAST, line_plot

SIZE, CLASSES = (16, 6) if FAST else (32, 6)
MAIN = ["tokenfree", "uvit", "unet"]                                 # the three the text compares
OTHERS = ["diffit", "mobile_unet", "snapgen_unet"]                   # the rest of the zoo, in the table only
SCALE = "tiny" if FAST else "xs"
presets = {arch: f"{arch}-{SCALE}" for arch in MAIN + OTHERS}

# %% [markdown]
# ## A tracer for the weight layers
#
# To see shapes without touching the models, we wrap `linear` and `conv2d` where the model modules
# look them up, run one forward pass, and record every call: the input shape, the weight shape and
# the output shape. A (layer, input shape, weight shape) triple is what a compiler would turn into
# one kernel, so the number of distinct triples is a NumPy-side preview of the kernel count.

# %%
@contextmanager
def trace_layers(model):
    calls, saved = [], []
    modules = [L, model] + [m for m in map(sys.modules.get, ("numpy_ref.models.unet", "numpy_ref.models.mobile_unet"))
                            if m is not None]
    for fname in ("linear", "conv2d"):
        orig = getattr(L, fname)

        def wrapped(x, w, *args, _orig=orig, _name=fname, **kw):
            out = _orig(x, w, *args, **kw)
            calls.append((_name, x.shape[1:], w.shape, out.shape[1:]))   # per image: drop the batch axis
            return out
        for m in modules:
            if getattr(m, fname, None) is orig:
                saved.append((m, fname, orig))
                setattr(m, fname, wrapped)
    try:
        yield calls
    finally:
        for m, fname, orig in saved:
            setattr(m, fname, orig)


rows = {}
for arch, preset in presets.items():
    cfg = get_config(preset, img_size=SIZE, in_channels=3, num_classes=CLASSES)
    with trace_layers(get_model(arch)) as calls:
        n_params, macs = count_macs(cfg)                              # one image through the NumPy forward
    rows[arch] = dict(preset=preset, params=n_params, macs=macs, calls=calls, distinct=len({c[:3] for c in calls}))
    print(f"{preset:18s} {n_params / 1e6:6.2f}M params  {macs / 1e6:7.1f}M MACs/image  "
          f"{len(calls):4d} weight-layer calls, {rows[arch]['distinct']:3d} distinct (layer, input, weight) shapes")

# %% [markdown]
# ## The shapes that flow through each model
#
# The main-path activations in forward order (the per-image output of every linear/conv that works
# on a map or a sequence; the small conditioning MLPs are left out). The plot shows how many
# positions each layer works on: H*W of a feature map, or the number of tokens of a sequence.
# The first, middle and last lines of each trace:

# %%
for arch in MAIN:
    main = [c for c in rows[arch]["calls"] if len(c[3]) >= 2]
    print(f"\n{rows[arch]['preset']}: {len(main)} layers on the main path")
    for c in main[:4] + [None] + main[len(main) // 2: len(main) // 2 + 3] + [None] + main[-3:]:
        print("   ..." if c is None else f"   {c[0]:7s} in {str(c[1]):16s} weight {str(c[2]):18s} out {c[3]}")

series = {}
for arch in MAIN:
    # positions = H*W of a map (C, H, W) or L of a sequence (L, D): what attention and the convs run over
    sizes = [int(np.prod(c[3][1:])) if len(c[3]) == 3 else c[3][0] for c in rows[arch]["calls"] if len(c[3]) >= 2]
    series[f"{rows[arch]['preset']} ({len(sizes)} layers)"] = (np.linspace(0, 1, len(sizes)), np.log2(sizes))
path = line_plot("06_activations.png", series, title=f"Positions each layer works on ({SIZE}x{SIZE} input)",
                 xlabel="place in the forward pass (0 = first layer, 1 = last)", ylabel="log2(H*W or tokens)", legend_y=110)
print("\nwrote", path)

# %% [markdown]
# ## Kernels: what a compiler sees
#
# `tinygrad_impl.report` builds each model in tinygrad, runs one forward pass and one training step
# in a fresh process, and counts the distinct programs tinygrad compiled and the kernels launched.

# %%
kernels = {}
if FAST:
    print("TUTORIAL_FAST: kernel counts skipped (run without TUTORIAL_FAST, or python -m tinygrad_impl.report)")
else:
    env = dict(os.environ, CACHELEVEL="0", DEV=os.environ.get("DEV", "CPU"))
    root = os.path.dirname(HERE)
    for arch in MAIN:
        print(f"measuring {presets[arch]} in tinygrad ...", flush=True)
        out = subprocess.run([sys.executable, "-m", "tinygrad_impl.report", "--one", "--presets", presets[arch],
                              "--img-size", str(SIZE), "--num-classes", str(CLASSES), "--batch", "8"],
                             env=env, cwd=root, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-1500:])
            continue
        kernels[arch] = json.loads(out.stdout.strip().splitlines()[-1])

# %% [markdown]
# ## The table

# %%
head = f"{'preset':18s} {'params':>8s} {'MACs/img':>9s} {'layer calls':>11s} {'distinct':>8s} {'fwd kernels':>12s} {'train kernels':>14s}"
print(head)
print("-" * len(head))
for arch, r in rows.items():
    k = kernels.get(arch)
    fwd = f"{k['fwd_kernels']}/{k['fwd_launches']}" if k else "-"
    step = f"{k['step_kernels']}/{k['step_launches']}" if k else "-"
    print(f"{r['preset']:18s} {r['params'] / 1e6:7.2f}M {r['macs'] / 1e6:8.1f}M {len(r['calls']):11d} {r['distinct']:8d} "
          f"{fwd:>12s} {step:>14s}")
print("kernels: distinct compiled / launched per call (batch 8)")

# %% [markdown]
# ## What to look at
#
# - `06_activations.png`: the token-free line is flat between the stem and the head -- every block
#   works on the same 64 positions (tokenfree-xs: 64 x 128) -- while the U-Net's line dips to its
#   lowest resolution and climbs back (a U); U-ViT is flat too, with two extra tokens (time, class).
# - The table: the two transformer models call the same few (layer, shape) triples again and again
#   (tokenfree-xs: 51 calls, 12 distinct; U-ViT, without pos_conv and adaLN, reuses even more);
#   the U-Nets need a new triple at every resolution and channel count. In tinygrad that shows as
#   few distinct kernels for many launches.
#
# This is the seed paper's hardware argument in numbers: one fixed-size block, reused N times.

# %%
ratio = {arch: len(r["calls"]) / r["distinct"] for arch, r in rows.items()}
print("\nlook at: 06_activations.png (flat token-free/U-ViT lines, a U for the U-Net) and the table above")
print("KEY " + " ".join(f"reuse_{a}={ratio[a]:.2f}" for a in MAIN) + " "
      + " ".join(f"params_{a}={rows[a]['params']}" for a in MAIN))
