"""Sample a checkpoint with NumPy alone, and write image grids (shared with tinygrad_impl).

    python -m numpy_ref.sample --ckpt runs/shapes-tokenfree-xs/ckpt.safetensors --sampler ddim --steps 50 \
        --n 64 --seed 0 --guidance 2.0 --out grid.png

`python -m tinygrad_impl.sample` takes the same flags and draws the same images for the same seed.
Grid layout for a class-conditional model: row r shows class r % num_classes (unless --label fixes one); for a
text-conditioned one (trained with --cond text) row r shows prompt r % P of the P --prompt given, e.g.
--prompt "a small red triangle at the top left" "a big blue circle at the center" (default: a few test captions).
Images are drawn --batch at a time (memory grows with --batch, not with --n) and pasted into the grid (and appended
to --npy) as each batch finishes. Image i's noise comes from np.random.default_rng([seed, i]) alone, so --batch
does not change the images. Every flag, the output paths and the weights (finite) are checked before sampling.
"""
import argparse
import math
import os
import tempfile

import numpy as np

from . import cli, weights
from .cli import CLIError
from .samplers import SAMPLERS, RowNoise, check_sampler, default_sampler, sampling_plan
from .samplers import sample as run_sampler
from .schedule import SPACINGS, make_schedule

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


def grid_canvas(n, image_shape, cols=None, pad=1):
    """An empty grey grid for n images of image_shape (C, H, W): (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8."""
    c, h, w = image_shape
    cols = cols or grid_cols(n)
    rows = math.ceil(n / cols)
    return np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)


def paste(canvas, images, first, cols, pad=1):
    """Draw images (B, C, H, W) in [-1, 1] into their cells of a grid_canvas with `cols` columns: image i of the
    batch goes to cell first + i, so a run can fill its grid batch by batch."""
    x = to_uint8(images)
    _, h, w, _ = x.shape
    for i in range(len(x)):
        r, k = divmod(first + i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    return canvas


def make_grid(images, cols=None, pad=1):
    """(N, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 picture, gaps in grey."""
    cols = cols or grid_cols(len(images))
    return paste(grid_canvas(len(images), images.shape[1:], cols, pad), images, 0, cols, pad)


def save_picture(g, path, upscale=1):
    """Write a uint8 (H, W, C) picture as a PNG, each pixel drawn upscale x upscale. Returns path."""
    from PIL import Image
    im = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    if upscale > 1:   # nearest neighbour by an integer factor: every pixel becomes an upscale x upscale block
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    im.save(path)
    return path


def save_grid(images, path, cols=None, upscale=1):
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid, each pixel drawn upscale x upscale. Returns path."""
    return save_picture(make_grid(images, cols), path, upscale)


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


DEFAULT_PROMPTS = 16   # default_prompts draws this many and cycles through them


def default_prompts(k):
    """k fixed prompts for the grids of a text model (row r: prompt r): captions drawn like the test split's (the
    colour-shape pairs training sees; numpy_ref/captions.py), the same every time and for every k (the first of
    DEFAULT_PROMPTS captions, repeated past them)."""
    from .captions import make_captioned
    captions = make_captioned(DEFAULT_PROMPTS, size=8, split="test")[1]
    return [captions[i % DEFAULT_PROMPTS] for i in range(k)]


def grid_conditions(n, cfg, cols=None, label=None, prompt_ids=None):
    """y of a grid of n images: for a text model token ids (n, L), row r showing prompt r % P of prompt_ids (P, L);
    else grid_labels (class ids (n,), or None for an unconditional model)."""
    if cfg.text_vocab:
        if prompt_ids is None or not len(prompt_ids):
            raise ValueError("a text-conditioned model needs prompt ids (P, text_len) for its grid")
        cols = cols or grid_cols(n)
        return np.asarray(prompt_ids, np.int64)[np.arange(n) // cols % len(prompt_ids)]
    return grid_labels(n, cfg.num_classes, cols, label)




# ----------------------------------------------------------------------------
# Checkpoints (numpy_ref.weights.load_for_sampling reads them)
# ----------------------------------------------------------------------------

def schedule_of(meta, spacing=None):
    """The noise schedule a checkpoint was trained with (linear, T=1000 when the file does not say), with the timestep
    spacing its sampler needs (a step-distilled student's "trailing" grid: numpy_ref/distill.py); spacing (--spacing)
    overrides the file's."""
    return make_schedule(meta.get("schedule", "linear"), int(meta.get("T", 1000)),
                         spacing=spacing or meta.get("spacing", "even"))


def classes_text(num_classes, meta):
    """The classes a --label can name: "0 circle, 1 square, .." or "0..K-1" when the file names none."""
    names = meta.get("class_names") or []
    if len(names) == num_classes and names:
        return ", ".join(f"{i} {name}" for i, name in enumerate(names))
    return f"0..{num_classes - 1}" if num_classes else "none"


def resolve_label(label, meta, num_classes=None):
    """--label as a class id or a class name (from the checkpoint's class_names); None stays None. With num_classes
    (the model's) an id is checked too, and a label for an unconditional model (num_classes 0) refused."""
    if label is None:
        return None
    names = meta.get("class_names") or []
    k = len(names) if num_classes is None else num_classes
    if num_classes == 0:
        raise CLIError(f"--label {label}: this checkpoint's model is unconditional (no classes); drop --label")
    text = str(label)
    if text.lstrip("-").isdigit():
        if num_classes is not None and not 0 <= int(text) < num_classes:
            raise CLIError(f"--label {label} is not a class of this checkpoint; classes: {classes_text(k, meta)}")
        return int(text)
    if text not in names:
        raise CLIError(f"--label {label!r} is not a class of this checkpoint; classes: "
                       f"{classes_text(k, meta) if names else 'ids only, ' + classes_text(k, meta)}")
    return names.index(text)


def checkpoint_vocab(cfg, meta):
    """The vocabulary (list of str) of a text model's checkpoint: its meta "vocab" (text.vocab_to_json), or for a
    file without one the captions vocabulary when its size fits. CLIError when none fits cfg.text_vocab."""
    from .text import check_vocab, vocab_from_json
    if "vocab" in meta:
        vocab = vocab_from_json(meta["vocab"]) if isinstance(meta["vocab"], str) else check_vocab(meta["vocab"])
    else:
        from .captions import VOCAB
        vocab = list(VOCAB)
    if len(vocab) != cfg.text_vocab:
        raise CLIError(f"the checkpoint's model has a vocabulary of {cfg.text_vocab} tokens but "
                       f"{'its metadata lists' if 'vocab' in meta else 'it names no vocabulary, and the captions one has'}"
                       f" {len(vocab)}: the prompts cannot be encoded")
    return vocab


def encode_prompts(prompts, cfg, meta):
    """--prompt texts -> token ids (P, cfg.text_len) with the checkpoint's vocabulary; CLIError (one line, listing
    the vocabulary) for an unknown word or a prompt too long."""
    from .text import encode_batch
    try:
        return encode_batch(list(prompts), checkpoint_vocab(cfg, meta), cfg.text_len)
    except ValueError as e:
        raise CLIError(f"--prompt: {e}") from None


def check_condition_flags(args, cfg):
    """--label only for a class-conditional model, --prompt only for a text-conditioned one: CLIError otherwise."""
    label, prompts = getattr(args, "label", None), getattr(args, "prompt", None)
    if cfg.text_vocab and label is not None:
        raise CLIError(f"--label {label}: this checkpoint's model is conditioned on text prompts, not classes; "
                       f"give --prompt \"a small red triangle at the top left\" instead")
    if prompts and not cfg.text_vocab:
        kind = f"class-conditional ({cfg.num_classes} classes)" if cfg.num_classes else "unconditional"
        raise CLIError(f"--prompt: this checkpoint's model is {kind}, not conditioned on text; drop --prompt"
                       + (" (--label picks a class)" if cfg.num_classes else ""))


def load_checked(path, raw=False):
    """weights.load_for_sampling, then every tensor checked finite: (params, cfg, meta, which). A NaN or inf weight
    (a diverged run) would draw a black grid of NaNs; CLIError names the tensors instead."""
    params, cfg, meta, which = weights.load_for_sampling(path, raw)
    bad = [k for k, v in params.items() if not np.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CLIError(f"{path}: the {which} weights hold NaN or inf in {len(bad)} tensor{'s' * (len(bad) > 1)} "
                       f"({', '.join(bad[:3])}{more}): the run diverged; sample an earlier checkpoint"
                       + (" or try --raw" if which == "EMA" else ""))
    return params, cfg, meta, which


# ----------------------------------------------------------------------------
# Sampling in batches (both backends)
# ----------------------------------------------------------------------------

def sample_batches(sample_batch, n, batch, seed, labels=None, pad=False):
    """n images drawn `batch` at a time, so memory holds one batch whatever n is: yields (first, images (rows, C, H,
    W)) in order. sample_batch(rows, noise, y) draws one batch; noise is a RowNoise (image i's noise from
    default_rng([seed, i])), so the images do not depend on `batch`; y: the class ids of those images (labels
    (n,) sliced), their token ids ((n, L) sliced) or None. pad fills the last batch up to `batch` rows and cuts it
    (one shape for a jitted sampler)."""
    for first in range(0, n, batch):
        rows = min(batch, n - first)
        size = batch if pad else rows
        y = None if labels is None else np.resize(labels[first:first + rows], (size, *np.shape(labels)[1:]))
        images = sample_batch(size, RowNoise(seed, first, size), y)[:rows]
        if not np.isfinite(images).all():
            raise CLIError(f"images {first}..{first + rows - 1} came out NaN or inf although the weights are finite: "
                           "the model overflowed; try a smaller --guidance")
        yield first, images


def image_batches(params, cfg, sched, n, labels=None, sampler=None, steps=50, eta=0.0, seed=0, guidance=1.0,
                  batch=64, progress=None):
    """sample_batches with the NumPy model: (first, images) for images first.. of n; labels (n,) class ids, (n, L)
    token ids of a text model (grid_conditions), or None.
    sampler None: the default of cfg.prediction (ddim, or euler for a flow model)."""
    from .models import get_model
    sampler = sampler or default_sampler(cfg.prediction)
    model = get_model(cfg.arch)
    eps_fn = lambda x, t, yy: model.forward(params, x, t, yy, cfg, T=sched.T)  # noqa: E731
    shape = (cfg.in_channels, cfg.img_size, cfg.img_size)
    return sample_batches(lambda rows, noise, y: run_sampler(
        eps_fn, (rows, *shape), sched, sampler, steps, eta, noise, y, guidance, cfg.null_class, progress=progress,
        prediction=cfg.prediction), n, batch, seed, labels)


def sample_images(params, cfg, sched, n, sampler=None, steps=50, eta=0.0, seed=0, guidance=1.0, label=None,
                  progress=None, batch=64, prompt_ids=None):
    """n images (n, C, H, W) in [-1, 1] from the NumPy model, `batch` at a time; classes (or the prompts
    prompt_ids (P, L) of a text model) laid out by grid_conditions."""
    labels = grid_conditions(n, cfg, label=label, prompt_ids=prompt_ids)
    return np.concatenate([images for _, images in image_batches(params, cfg, sched, n, labels, sampler, steps, eta,
                                                                 seed, guidance, batch, progress)])


# ----------------------------------------------------------------------------
# Outputs, written batch by batch
# ----------------------------------------------------------------------------

class NpyWriter:
    """An (n, C, H, W) float32 .npy written batch by batch: the header first, then each batch's rows as they come,
    to a temporary name that becomes `path` once all n rows are in (a failed run leaves no half file)."""

    def __init__(self, path, n, image_shape):
        self.path, self.n, self.count = path, n, 0
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
        self.file = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (n, *image_shape)}
        np.lib.format.write_array_header_2_0(self.file, header)

    def write(self, images):
        self.file.write(np.ascontiguousarray(images, np.float32).tobytes())
        self.count += len(images)

    def close(self):
        self.file.close()
        if self.count == self.n:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


MAX_GRID_BYTES = 2 ** 31   # a PNG grid larger than this (after --upscale) is refused before sampling


def check_grid_size(n, image_shape, upscale):
    """CLIError when the grid of n images at --upscale would not fit MAX_GRID_BYTES."""
    c, h, w = image_shape
    cols = grid_cols(n)
    height, width = (math.ceil(n / cols) * (h + 1) + 1) * upscale, (cols * (w + 1) + 1) * upscale
    if height * width * c > MAX_GRID_BYTES:
        raise CLIError(f"--n {n} with --upscale {upscale} makes a {width}x{height} grid ({height * width * c / 2**30:.1f} "
                       f"GiB), over the {MAX_GRID_BYTES / 2**30:.0f} GiB allowed; use --upscale 1 or fewer images")


def write_samples(batches, n, image_shape, out, npy=None, upscale=1, bar=None):
    """Take (first, images) batches of a run of n images: paste each into the grid and append it to the --npy file
    as it comes, then write the grid PNG to out. Only the grid (uint8) and one batch are held."""
    cols = grid_cols(n)
    canvas = grid_canvas(n, image_shape, cols)
    writer = NpyWriter(npy, n, image_shape) if npy else None
    try:
        for first, images in batches:
            paste(canvas, images, first, cols)
            if writer:
                writer.write(images)
            if bar is not None:
                bar.set_postfix_str(f"{first + len(images)}/{n} images")
    finally:
        if writer:
            writer.close()
        if bar is not None:
            bar.close()
    save_picture(canvas, out, upscale)


def step_progress(total, desc):
    """(tqdm bar, wrapper over a sampling plan): one bar for the steps of every batch of a run"""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="step")

    def wrap(plan):
        for item in plan:
            yield item
            bar.update(1)
    return bar, wrap


# ----------------------------------------------------------------------------
# CLI (the tinygrad twin adds --device and --beam)
# ----------------------------------------------------------------------------

SAMPLER_HELP = ("ddim, ddpm or dpmpp2m for an eps or v checkpoint (default ddim); euler or heun (ODE steps) for a "
                "rectified-flow one (default euler)")
SPACING_HELP = ("where the steps sit: even (0..T-1 evenly, so 1 step samples at t = 0) or trailing (T-1 down to T/steps - 1, "
                "what a step-distilled student needs and what few-step sampling of any model wants); default: the "
                "checkpoint's own (trailing for a distilled student, else even)")


def resolve_sampler(sampler, cfg):
    """--sampler, or the default of the checkpoint's prediction when not given; CLIError when it cannot read it."""
    sampler = sampler or default_sampler(cfg.prediction)
    try:
        check_sampler(sampler, cfg.prediction, "--sampler")
    except ValueError as e:
        raise CLIError(str(e)) from None
    return sampler


def build_parser(prog, description):
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--ckpt", required=True, help="checkpoint written by tinygrad_impl.train (or weights.save_weights)")
    p.add_argument("--sampler", default=None, choices=SAMPLERS, help=SAMPLER_HELP)
    p.add_argument("--steps", type=cli.positive(int), default=None,
                   help="sampling steps, 1..T of the checkpoint (ddpm: any count, the chain is respaced; heun calls "
                   "the model 2 steps - 1 times, the others once a step); default: a step-distilled checkpoint's own "
                   "count (its sample_steps), else 50")
    p.add_argument("--spacing", default=None, choices=SPACINGS, help=SPACING_HELP)
    p.add_argument("--eta", type=cli.in_range(float, 0, 1), default=0.0,
                   help="DDIM noise in 0..1: 0 deterministic, 1 DDPM-like (dpmpp2m, euler, heun: 0 only)")
    p.add_argument("--n", type=cli.positive(int), default=64, help="number of images")
    p.add_argument("--batch", type=cli.positive(int), default=64,
                   help="images drawn at once (memory grows with it, not with --n; the images do not depend on it)")
    p.add_argument("--seed", type=cli.non_negative(int), default=0)
    p.add_argument("--guidance", type=cli.non_negative(float), default=3.0,
                   help="classifier-free guidance weight >= 0: 1 = the conditional model alone (no guidance), "
                   "0 = the unconditional one, > 1 pushes toward the class; 3 draws the main job's classes best, "
                   "see docs/experiments.md")
    p.add_argument("--label", default=None, help="draw only this class (id or name); default: row r shows class r")
    p.add_argument("--prompt", action="extend", nargs="+", default=None, metavar="TEXT",
                   help="text-conditioned checkpoints: draw these prompts (quoted; several, or --prompt again: row r "
                   "shows prompt r %% P), words of the checkpoint's vocabulary; default: a few test captions")
    p.add_argument("--raw", action="store_true", help="use the raw weights even when the file has an EMA copy")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--upscale", type=cli.positive(int), default=2, help="draw each pixel as upscale x upscale in the PNG")
    p.add_argument("--npy", default=None, help="also save the images (N, C, H, W) float32 in [-1, 1] to this .npy "
                   "(written batch by batch)")
    return p


def check_paths(args):
    """--out and --npy writable, tried before anything is loaded or sampled."""
    cli.writable_file(args.out)
    if args.npy:
        writable_file_for("--npy", args.npy)


def writable_file_for(flag, path):
    """cli.writable_file for a flag other than --out: the same checks, the message naming `flag`."""
    try:
        cli.writable_file(path)
    except CLIError as e:
        raise CLIError(str(e).replace("--out", flag).replace("grid.png", "samples.npy")) from None


def check_run(args, cfg, meta, sched):
    """The flags that depend on the checkpoint, checked before sampling: --sampler one that reads the model's
    prediction (args.sampler set to its default when not given), --steps within T, --eta for the ODE solvers,
    --label a class of the model (--prompt, encoded into args.prompt_ids, a text model's), the grid's size.
    Returns the class id of --label (or None)."""
    args.sampler = resolve_sampler(args.sampler, cfg)
    if args.steps is None:   # a step-distilled student samples at the count it was distilled for
        args.steps = int(meta.get("sample_steps", 50))
    if args.steps > sched.T:
        raise CLIError(f"--steps must be in 1..{sched.T} (the checkpoint's schedule has T = {sched.T}), got {args.steps}")
    if args.sampler in ("dpmpp2m", "euler", "heun") and args.eta != 0:
        raise CLIError(f"--eta must be 0 for --sampler {args.sampler} (a deterministic ODE solver), got {args.eta}"
                       + ("; use ddim or ddpm for noise" if args.sampler == "dpmpp2m" else ""))
    if getattr(args, "upscale", None):
        check_grid_size(args.n, (cfg.in_channels, cfg.img_size, cfg.img_size), args.upscale)
    check_condition_flags(args, cfg)
    args.prompt_ids, args.prompts = None, None
    if cfg.text_vocab:
        args.prompts = list(getattr(args, "prompt", None) or default_prompts(min(8, math.ceil(args.n / grid_cols(args.n)))))
        args.prompt_ids = encode_prompts(args.prompts, cfg, meta)
    return resolve_label(getattr(args, "label", None), meta, cfg.num_classes)


def describe(args, cfg, meta, which):
    cond = (f"text prompts ({cfg.text_vocab} tokens)" if cfg.text_vocab else f"{cfg.num_classes or 'no'} classes")
    return (f"{args.ckpt}: {cfg.arch} {cfg.img_size}x{cfg.img_size}x{cfg.in_channels}, "
            f"{cond}, step {meta.get('step', '?')}, data {meta.get('data', '?')}; "
            f"using the {which} weights; {args.sampler} {args.steps} steps"
            f"{f' ({args.spacing} spacing)' if getattr(args, 'spacing', None) else ''}, seed {args.seed}, guidance {args.guidance}, "
            f"batches of {min(args.batch, args.n)}")


def prompts_text(prompts):
    """One line naming the grid's rows of a text model: row r shows prompt r % P."""
    return "rows: " + "; ".join(f"{r} {p!r}" for r, p in enumerate(prompts)) + \
        (f" (row r: prompt r % {len(prompts)})" if len(prompts) > 1 else "")


def main(argv=None):
    args = build_parser("python -m numpy_ref.sample", "Sample a checkpoint with NumPy.").parse_args(argv)
    check_paths(args)
    params, cfg, meta, which = load_checked(args.ckpt, args.raw)
    sched = schedule_of(meta, args.spacing)
    label = check_run(args, cfg, meta, sched)
    print(describe(args, cfg, meta, which))
    if args.prompts:
        print(prompts_text(args.prompts))
    batch = min(args.batch, args.n)
    bar, progress = step_progress(math.ceil(args.n / batch) * len(sampling_plan(sched, args.sampler, args.steps,
                                                                                 args.eta)), "sampling (numpy)")
    labels = grid_conditions(args.n, cfg, label=label, prompt_ids=args.prompt_ids)
    batches = image_batches(params, cfg, sched, args.n, labels, args.sampler, args.steps, args.eta, args.seed,
                            args.guidance, batch, progress)
    write_samples(batches, args.n, (cfg.in_channels, cfg.img_size, cfg.img_size), args.out, args.npy, args.upscale, bar)
    print(f"wrote {args.out} ({args.n} images, {grid_cols(args.n)} per row)" + (f" and {args.npy}" if args.npy else ""))
    return args.out


if __name__ == "__main__":
    cli.run(main)
