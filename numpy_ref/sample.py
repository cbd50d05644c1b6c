"""Sample a checkpoint with NumPy alone, and write image grids (shared with tinygrad_impl).

    python -m numpy_ref.sample --ckpt runs/shapes-tokenfree-xs/ckpt.safetensors --sampler ddim --steps 50 \
        --n 64 --seed 0 --guidance 2.0 --out grid.png

`python -m tinygrad_impl.sample` takes the same flags and draws the same images for the same seed.
Grid layout for a class-conditional model: row r shows class r % num_classes (unless --label fixes one).
"""
import argparse
import math
import os
import sys

import numpy as np

from . import weights
from .samplers import SAMPLERS
from .samplers import sample as run_sampler
from .schedule import make_schedule

# ----------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------

def to_uint8(images):
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8"""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def grid_cols(n):
    """Columns of a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def make_grid(images, cols=None, pad=1):
    """(N, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 picture, gaps in grey."""
    x = to_uint8(images)
    n, h, w, c = x.shape
    cols = cols or grid_cols(n)
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    return out


def save_grid(images, path, cols=None, upscale=1):
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid, each pixel drawn upscale x upscale. Returns path."""
    from PIL import Image
    g = make_grid(images, cols)
    if upscale > 1:
        g = g.repeat(upscale, 0).repeat(upscale, 1)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path


def grid_labels(n, num_classes, cols=None, label=None):
    """Class ids (n,) for a grid: row r shows class r % num_classes, or every image `label`; None if unconditional."""
    if not num_classes:
        return None
    if label is not None:
        if not 0 <= label < num_classes:
            raise ValueError(f"--label {label} is out of range: the model has classes 0..{num_classes - 1}")
        return np.full(n, label, np.int64)
    cols = cols or grid_cols(n)
    return (np.arange(n) // cols % num_classes).astype(np.int64)


# ----------------------------------------------------------------------------
# Checkpoints (numpy_ref.weights.load_for_sampling reads them)
# ----------------------------------------------------------------------------

def schedule_of(meta):
    """The noise schedule a checkpoint was trained with (linear, T=1000 when the file does not say)."""
    return make_schedule(meta.get("schedule", "linear"), int(meta.get("T", 1000)))


def resolve_label(label, meta):
    """--label as a class id or a class name (from the checkpoint's class_names)."""
    if label is None or str(label).lstrip("-").isdigit():
        return None if label is None else int(label)
    names = meta.get("class_names") or []
    if label not in names:
        raise ValueError(f"--label {label!r} is not a class of this checkpoint; classes: {', '.join(names) or 'ids only'}")
    return names.index(label)


# ----------------------------------------------------------------------------
# CLI (the tinygrad twin adds --device)
# ----------------------------------------------------------------------------

def build_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--ckpt", required=True, help="checkpoint written by tinygrad_impl.train (or weights.save_weights)")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=50, help="sampling steps (ddpm: any count, the chain is respaced)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance weight (1 = none; "
                   "3 draws the main job's classes best, see docs/experiments.md)")
    p.add_argument("--label", default=None, help="draw only this class (id or name); default: row r shows class r")
    p.add_argument("--raw", action="store_true", help="use the raw weights even when the file has an EMA copy")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--upscale", type=int, default=2, help="draw each pixel as upscale x upscale in the PNG")
    p.add_argument("--npy", default=None, help="also save the images (N, C, H, W) float32 in [-1, 1] to this .npy")
    return p


def check_args(args):
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.upscale < 1:
        raise ValueError(f"--upscale must be >= 1, got {args.upscale}")


def describe(args, cfg, meta, which):
    return (f"{args.ckpt}: {cfg.arch} {cfg.img_size}x{cfg.img_size}x{cfg.in_channels}, "
            f"{cfg.num_classes or 'no'} classes, step {meta.get('step', '?')}, data {meta.get('data', '?')}; "
            f"using the {which} weights; {args.sampler} {args.steps} steps, seed {args.seed}, guidance {args.guidance}")


def sample_images(params, cfg, sched, n, sampler="ddim", steps=50, eta=0.0, seed=0, guidance=1.0, label=None,
                  progress=None):
    """n images (n, C, H, W) in [-1, 1] from the NumPy model; classes laid out by grid_labels."""
    from .models import get_model
    model = get_model(cfg.arch)
    y = grid_labels(n, cfg.num_classes, label=label)
    eps_fn = lambda x, t, yy: model.forward(params, x, t, yy, cfg)
    shape = (n, cfg.in_channels, cfg.img_size, cfg.img_size)
    return run_sampler(eps_fn, shape, sched, sampler, steps, eta, seed, y, guidance, cfg.null_class, progress=progress,
                       prediction=cfg.prediction)


def main(argv=None):
    from tqdm import tqdm
    args = build_parser("python -m numpy_ref.sample", "Sample a checkpoint with NumPy.").parse_args(argv)
    try:
        check_args(args)
        params, cfg, meta, which = weights.load_for_sampling(args.ckpt, args.raw)
        label = resolve_label(args.label, meta)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(describe(args, cfg, meta, which))
    images = sample_images(params, cfg, schedule_of(meta), args.n, args.sampler, args.steps, args.eta, args.seed,
                           args.guidance, label, progress=lambda plan: tqdm(plan, desc="sampling (numpy)"))
    save_grid(images, args.out, upscale=args.upscale)
    if args.npy:
        np.save(args.npy, images)
    print(f"wrote {args.out} ({args.n} images, {grid_cols(args.n)} per row)")
    return images


if __name__ == "__main__":
    main()
