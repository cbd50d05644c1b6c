"""Measure text-to-image: draw the captions of a split with a text-conditioned checkpoint and ask the attribute
classifier (numpy_ref/attributes.py) whether each image shows what its caption says.

    python -m tinygrad_impl.train_attributes                   # once (--size N for models of other sizes)
    python -m tinygrad_impl.evaluate_text --ckpt runs/captions-tokenfree-xs/ckpt.safetensors --n 200 \
        --guidance 1 3 5 --split test heldout
    python -m tinygrad_impl.evaluate_text --real --split test heldout     # the ceiling: the real images, judged

--n captions of each split are picked with --seed (the same ones for every guidance); image i gets the noise of
default_rng([--seed, i]) whatever the guidance and --batch, so rows differ only in what they vary. Samples come
from the tinygrad sampler with the checkpoint's own defaults (its prediction's sampler: ddim, or euler for flow).

Table: one row per split, guidance and object count. One-object captions ("a small red circle at the top left"):
count = the image shows one object; position = the most object-like cell is the caption's; shape, colour, size =
read at that cell (a misplaced object is still judged on its looks); all = every one of these. Two-object captions
are rows of their own: count = exactly two objects; position = they sit at the caption's two cells (which also
makes the relation right); shape, colour, size = both objects have them, read at the caption's cells; all = all.
"heldout" captions name (colour, shape) pairs training never saw (numpy_ref/captions.py HELD_OUT).
"""
import argparse
import json
import math
import os
import time

import numpy as np

from numpy_ref import attributes as NA
from numpy_ref import cli
from numpy_ref.captions import CAPTION_SPLITS, load_captioned
from numpy_ref.cli import CLIError
from numpy_ref.sample import check_run, encode_prompts, load_checked, schedule_of, writable_file_for

# ----------------------------------------------------------------------------
# What is drawn and judged
# ----------------------------------------------------------------------------

def pick_captions(split, n, size, seed=0):
    """(images (n, 3, size, size), captions n str, attributes {name: first rows}) of n captions of `split`
    (all of it when smaller), picked by default_rng([seed, 1]) and kept in the split's order."""
    ds = load_captioned(split, size)
    idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(ds))[:n])
    return ds.images[idx], [ds.captions[i] for i in idx], {k: v[idx] for k, v in ds.attributes.items()}


def draw(params, cfg, sched, ids, sampler, steps, guidance, seed=0, batch=100, device=None, progress=None):
    """Images (n, C, H, W) in [-1, 1] of the prompts ids (n, L), `batch` at a time (image i: prompt i, the noise of
    default_rng([seed, i])), by the tinygrad sampler; params are Tensors."""
    from .sample import image_batches
    batches = image_batches(params, cfg, sched, len(ids), ids, sampler, steps, 0.0, seed, guidance,
                            min(batch, len(ids)), device=device)
    return np.concatenate([images for _, images in (progress(batches) if progress else batches)])


def rows_of(split, guidance, ok, count):
    """Table rows {split, guidance, objects, n, <attribute>: fraction} of judge's result: one-object captions, then
    two-object ones (a row only where the split has some)."""
    out = []
    for objects in (1, 2):
        mask = count == objects
        if mask.any():
            out.append(dict(split=split, guidance=guidance, objects=objects, n=int(mask.sum()),
                            **NA.accuracies(ok, mask)))
    return out


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------

def load_classifier(path, default, size):
    """(params, cfg, meta) of the attribute classifier; FileNotFoundError naming the command that makes it."""
    if not os.path.exists(path):
        size_flag = "" if size == 32 else f" --size {size}"
        raise FileNotFoundError(f"no attribute classifier at {path}: make it with python -m "
                                f"tinygrad_impl.train_attributes{size_flag}" + ("" if default else f" --out {path}"))
    return NA.load_attributes(path)


def evaluate(args):
    """Sample (or take the real images of) each --split and judge them, as set by the parsed CLI args. Returns a
    JSON-able dict (info, rows)."""
    from tqdm import tqdm
    if args.json:
        writable_file_for("--json", args.json)
    if not args.real and not args.ckpt:
        raise CLIError("--ckpt is required (the text-conditioned checkpoint to measure), unless --real scores the "
                       "real images")
    cfg = meta = which = params = None
    if args.ckpt:
        params, cfg, meta, which = load_checked(args.ckpt, args.raw)
        if not cfg.text_vocab:
            kind = f"class-conditional ({cfg.num_classes} classes)" if cfg.num_classes else "unconditional"
            raise CLIError(f"{args.ckpt} is a {kind} model, not text-conditioned: evaluate_text measures models "
                           "trained with --data captions (--cond text); measure this one with python -m "
                           "tinygrad_impl.evaluate")
        if meta.get("data", "captions") != "captions":
            raise CLIError(f"{args.ckpt} was trained on {meta['data']}, not captions: its prompts cannot be judged "
                           "by the captions' attribute classifier")
    size = cfg.img_size if cfg else args.size
    if size < NA.MIN_SIZE:
        raise CLIError(f"{args.ckpt} makes {size}x{size} images: too small to judge, the attribute classifier needs "
                       f"{NA.MIN_SIZE}x{NA.MIN_SIZE} or more (it tells a 3x3 grid of places apart); train the text model "
                       f"with --size {NA.MIN_SIZE} or more")
    path = args.attributes or NA.attributes_path(size)
    aparams, acfg, ameta = load_classifier(path, args.attributes is None, size)
    NA.check_images(acfg, (1, cfg.in_channels if cfg else 3, size, size), "the model's images" if cfg else "the images")
    sched = None
    if not args.real:
        args.eta = 0.0
        sched = schedule_of(meta)
        check_run(args, cfg, meta, sched)            # --sampler (default: the checkpoint's), --steps within T
        from tinygrad import Device
        from .sample import check_device
        from .weights import to_tensors
        args.device = check_device(args.device)
        tparams = to_tensors(params, args.device)
        backend = f"tinygrad {args.device or Device.DEFAULT}"
    rows, t0 = [], time.perf_counter()
    for split in args.split:
        real, captions, attrs = pick_captions(split, args.n, size, args.seed)
        if args.real:
            ok = NA.judge(NA.compute_logits(aparams, real), attrs)
            rows += rows_of(split, "real", ok, attrs["count"])
            continue
        ids = encode_prompts(captions, cfg, meta)                                   # (n, text_len)
        for g in args.guidance:
            bar = lambda it: tqdm(it, desc=f"{split}, guidance {g:g}", unit="batch",  # noqa: E731
                                  total=math.ceil(len(ids) / min(args.batch, len(ids))))
            images = draw(tparams, cfg, sched, ids, args.sampler, args.steps, g, args.seed, args.batch, args.device,
                          bar)
            rows += rows_of(split, g, NA.judge(NA.compute_logits(aparams, images), attrs), attrs["count"])
    info = dict(ckpt=None if args.real else str(args.ckpt), image=size, seed=args.seed, n=args.n,
                attributes=str(path), classifier_accuracy=ameta["test_accuracy"], time=round(time.perf_counter() - t0, 1))
    if not args.real:
        info.update(arch=cfg.arch, preset=meta.get("preset"), step=meta.get("step"), weights=which,
                    sampler=args.sampler, steps=args.steps, backend=backend)
    result = dict(info=info, rows=rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_table(result):
    """The result as a header and a Markdown table of per-attribute accuracies."""
    i = result["info"]
    acc = i["classifier_accuracy"]
    head = ([f"real images of the captions, {i['image']}x{i['image']}: the ceiling of the samples' rows"] if i["ckpt"]
            is None else
            [f"{i['ckpt']}: {i['arch']}{' (' + i['preset'] + ')' if i['preset'] else ''} step {i['step']}, "
             f"{i['image']}x{i['image']}, {i['weights']} weights",
             f"up to {i['n']} captions per split: {i['sampler']} {i['steps']} steps, seed {i['seed']} "
             f"({i['backend']}, {i['time']:.0f} s)"])
    head.append(f"judged by {i['attributes']} (real test images: all attributes right {acc.get('all', float('nan')):.3f})")
    lines = head + ["", "| split | guidance | objects | n | " + " | ".join(NA.ATTRIBUTES) + " | all |",
                    "| --- | ---: | ---: | ---: |" + " ---: |" * (len(NA.ATTRIBUTES) + 1)]
    for r in result["rows"]:
        g = r["guidance"] if isinstance(r["guidance"], str) else f"{r['guidance']:g}"
        lines.append(f"| {r['split']} | {g} | {r['objects']} | {r['n']} | "
                     + " | ".join(f"{r[a]:.3f}" for a in (*NA.ATTRIBUTES, "all")) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    from numpy_ref.samplers import SAMPLERS
    from numpy_ref.sample import SAMPLER_HELP
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.evaluate_text", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=None, help="text-conditioned checkpoint (tinygrad_impl.train --data captions)")
    p.add_argument("--n", type=cli.positive(int), default=200, help="captions drawn per split (at most the split's)")
    p.add_argument("--guidance", type=cli.non_negative(float), nargs="+", default=[3.0],
                   help="classifier-free guidance weights, one set of rows each (1: the conditional model alone)")
    p.add_argument("--split", nargs="+", choices=CAPTION_SPLITS, default=["test", "heldout"],
                   help="caption splits whose captions are drawn (heldout: colour-shape pairs training never saw)")
    p.add_argument("--sampler", default=None, choices=SAMPLERS, help=SAMPLER_HELP)
    p.add_argument("--steps", type=cli.positive(int), default=50, help="sampling steps, 1..T of the checkpoint")
    p.add_argument("--seed", type=cli.non_negative(int), default=0, help="seed of the captions picked and the noise")
    p.add_argument("--batch", type=cli.positive(int), default=100,
                   help="images drawn at once (memory grows with it; the images do not depend on it)")
    p.add_argument("--raw", action="store_true", help="use the raw weights even when the file has an EMA copy")
    p.add_argument("--real", action="store_true", help="score the real images of the captions instead of samples "
                   "(the ceiling; no --ckpt needed)")
    p.add_argument("--size", type=cli.in_range(int, NA.MIN_SIZE), default=32,
                   help="image size of --real without --ckpt (with --ckpt: the checkpoint's)")
    p.add_argument("--attributes", default=None, help="attribute classifier file (default data/attributes-captions"
                   ".safetensors, -<size> for sizes other than 32; made by python -m tinygrad_impl.train_attributes)")
    p.add_argument("--json", default=None, help="also write the results (info and rows) to this JSON file")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL (default: DEV or tinygrad's pick)")
    return p


def main(argv=None):
    result = evaluate(build_parser().parse_args(argv))
    print(format_table(result))
    return result


if __name__ == "__main__":
    cli.run(main)
