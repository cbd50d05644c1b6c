"""Sample a checkpoint with tinygrad: the twin of numpy_ref/sample.py (same flags, same images for a seed).

    python -m tinygrad_impl.sample --ckpt runs/shapes-tokenfree-xs/ckpt.safetensors --sampler ddim --steps 50 \
        --n 64 --seed 0 --guidance 2.0 --out grid.png [--device CL]
"""
import sys

import numpy as np
from tinygrad import Device

from numpy_ref.sample import (build_parser, check_args, describe, grid_cols, grid_labels, resolve_label, save_grid,
                              schedule_of)
from .beam import use_beam
from .models import get_model
from .samplers import sample as run_sampler
from .weights import load_for_sampling


def sample_images(params, cfg, sched, n, sampler="ddim", steps=50, eta=0.0, seed=0, guidance=1.0, label=None,
                  progress=None, device=None):
    """n images (n, C, H, W) in [-1, 1] (a NumPy array) from the tinygrad model; params are Tensors."""
    model = get_model(cfg.arch)
    y = grid_labels(n, cfg.num_classes, label=label)
    eps_fn = lambda x, t, yy: model.forward(params, x, t, yy, cfg)
    shape = (n, cfg.in_channels, cfg.img_size, cfg.img_size)
    return run_sampler(eps_fn, shape, sched, sampler, steps, eta, seed, y, guidance, cfg.null_class,
                       progress=progress, device=device, prediction=cfg.prediction)


def main(argv=None):
    from tqdm import tqdm
    parser = build_parser("python -m tinygrad_impl.sample", "Sample a checkpoint with tinygrad.")
    parser.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL")
    parser.add_argument("--beam", type=int, default=None, help="BEAM-search the kernels with this width (cached on disk)")
    args = parser.parse_args(argv)
    try:
        check_args(args)
        if args.beam is not None:
            use_beam(args.beam, args.device)
        params, cfg, meta, which = load_for_sampling(args.ckpt, args.raw, args.device)
        label = resolve_label(args.label, meta)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(describe(args, cfg, meta, which) + f"; device {args.device or Device.DEFAULT}")
    images = sample_images(params, cfg, schedule_of(meta), args.n, args.sampler, args.steps,
                           args.eta, args.seed, args.guidance, label,
                           progress=lambda plan: tqdm(plan, desc="sampling (tinygrad)"), device=args.device)
    save_grid(images, args.out, upscale=args.upscale)
    if args.npy:
        np.save(args.npy, images)
    print(f"wrote {args.out} ({args.n} images, {grid_cols(args.n)} per row)")
    return images


if __name__ == "__main__":
    main()
