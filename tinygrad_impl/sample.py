"""Sample a checkpoint with tinygrad: the twin of numpy_ref/sample.py (same flags, same images for a seed).

    python -m tinygrad_impl.sample --ckpt runs/shapes-tokenfree-xs/ckpt.safetensors --sampler ddim --steps 50 \
        --n 64 --seed 0 --guidance 2.0 --out grid.png [--device CL]
    python -m tinygrad_impl.sample --ckpt runs/captions-tokenfree-xs/ckpt.safetensors --n 16 \
        --prompt "a small red triangle at the top left" "a big blue circle at the center"
"""
import math
import os

import numpy as np

from numpy_ref import cli
from numpy_ref.cli import CLIError
from numpy_ref.sample import (build_parser, check_paths, check_run, describe, grid_cols, grid_conditions, load_checked,
                              prompts_text, sample_batches, schedule_of, step_progress, write_samples)
from numpy_ref.samplers import default_sampler, sampling_plan
from .beam import use_beam
from .models import get_model
from .samplers import make_step
from .samplers import sample as run_sampler
from .weights import to_tensors

STORAGE = ("DISK", "NPY", "TINYFS")   # tinygrad backends that hold files, not compute


def check_device(device, flag="--device "):
    """A --device tinygrad can open, canonical ("cuda" -> "CUDA"); None stays None (tinygrad's pick). CLIError
    naming the devices tinygrad finds here otherwise (it opens each one it knows; only on this error path).
    With no --device, a DEV in the environment is checked the same way (tinygrad would fail at the first kernel)."""
    if device is None:
        if os.environ.get("DEV"):
            check_device(os.environ["DEV"], flag="DEV=")
        return None
    from tinygrad import Device
    name = device.split(":")[0].upper()
    reason = "tinygrad has no such backend"
    if name in Device._devices and name not in STORAGE:
        try:
            Device[device]   # opens it: fails when the driver, library or hardware of the backend is missing
            return Device.canonicalize(device)
        except Exception as e:   # noqa: BLE001  (each backend fails its own way)
            reason = f"it does not open here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    found = ", ".join(Device.get_available_devices()) or "none"
    raise CLIError(f"{flag}{device}: {reason}; devices tinygrad finds here: {found}")


def image_batches(params, cfg, sched, n, labels=None, sampler=None, steps=50, eta=0.0, seed=0, guidance=1.0,
                  batch=64, progress=None, device=None):
    """numpy_ref.sample.image_batches with the tinygrad model (params: Tensors): every batch has `batch` rows (the
    last one filled up and cut), so one jitted step serves them all, and image i gets the noise it gets in NumPy.
    sampler None: the default of cfg.prediction (ddim, or euler for a flow model)."""
    model = get_model(cfg.arch)
    sampler = sampler or default_sampler(cfg.prediction)
    eps_fn = lambda x, t, yy: model.forward(params, x, t, yy, cfg)  # noqa: E731
    shape = (cfg.in_channels, cfg.img_size, cfg.img_size)
    batch = min(batch, n)
    step_fn = make_step(eps_fn, labels is not None and guidance != 1.0, cfg.null_class, prediction=cfg.prediction)
    return sample_batches(lambda rows, noise, y: run_sampler(
        eps_fn, (rows, *shape), sched, sampler, steps, eta, noise, y, guidance, cfg.null_class, progress=progress,
        device=device, prediction=cfg.prediction, step_fn=step_fn), n, batch, seed, labels, pad=True)


def sample_images(params, cfg, sched, n, sampler=None, steps=50, eta=0.0, seed=0, guidance=1.0, label=None,
                  progress=None, device=None, batch=64, prompt_ids=None):
    """n images (n, C, H, W) in [-1, 1] (a NumPy array) from the tinygrad model, `batch` at a time; params are
    Tensors. A text model draws the prompts prompt_ids (P, L), row r prompt r % P (grid_conditions)."""
    labels = grid_conditions(n, cfg, label=label, prompt_ids=prompt_ids)
    return np.concatenate([images for _, images in image_batches(params, cfg, sched, n, labels, sampler, steps, eta,
                                                                 seed, guidance, batch, progress, device)])


def main(argv=None):
    parser = build_parser("python -m tinygrad_impl.sample", "Sample a checkpoint with tinygrad.")
    parser.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL")
    parser.add_argument("--beam", type=cli.non_negative(int), default=None,
                        help="BEAM-search the kernels with this width (cached on disk; 0: no search)")
    args = parser.parse_args(argv)
    check_paths(args)
    device = check_device(args.device)
    params, cfg, meta, which = load_checked(args.ckpt, args.raw)
    sched = schedule_of(meta, args.spacing)
    label = check_run(args, cfg, meta, sched)
    if args.beam is not None:
        use_beam(args.beam, device)
    from tinygrad import Device
    print(describe(args, cfg, meta, which) + f"; device {device or Device.DEFAULT}")
    if args.prompts:
        print(prompts_text(args.prompts))
    batch = min(args.batch, args.n)
    bar, progress = step_progress(math.ceil(args.n / batch) * len(sampling_plan(sched, args.sampler, args.steps,
                                                                                 args.eta)), "sampling (tinygrad)")
    labels = grid_conditions(args.n, cfg, label=label, prompt_ids=args.prompt_ids)
    batches = image_batches(to_tensors(params, device), cfg, sched, args.n, labels, args.sampler, args.steps, args.eta,
                            args.seed, args.guidance, batch, progress, device)
    write_samples(batches, args.n, (cfg.in_channels, cfg.img_size, cfg.img_size), args.out, args.npy, args.upscale, bar)
    print(f"wrote {args.out} ({args.n} images, {grid_cols(args.n)} per row)" + (f" and {args.npy}" if args.npy else ""))
    return args.out


if __name__ == "__main__":
    cli.run(main)
