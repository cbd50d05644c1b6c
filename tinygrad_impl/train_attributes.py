"""Train the attribute classifier (numpy_ref/attributes.py) on the captioned shapes, for tinygrad_impl.evaluate_text.

    python -m tinygrad_impl.train_attributes                  # -> data/attributes-captions.safetensors
    python -m tinygrad_impl.train_attributes --size 16 --steps 300

The "train" split of --data captions (numpy_ref/captions.py) plus --held-out-images images of the held-out
colour-shape pairs (captions.HELD_OUT) drawn from a seed of their own, so none is an image of the "heldout" split:
trained on the "train" split alone, the classifier ties shape to colour and misreads the held-out pairs (measured:
shape 0.31, colour 0.78 on the "heldout" split's one-object images, 0.99 and 1.00 on "test"), and it has to judge
samples of those pairs. AdamW (tinygrad_impl.adamw, without clipping or EMA)
with linear warm-up and cosine decay (train.lr_at), random shifts of up to 1/16 of the side (they never move an
object out of its grid cell), one TinyJit step. Then every attribute's accuracy on the real images of the "test" and
"heldout" splits is printed (judged by the NumPy forward, as evaluate_text judges samples), and the test split's is
stored in the file. Every batch of step k comes from np.random.default_rng([seed, k]).
"""
import argparse
import math
import time

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit

from numpy_ref import attributes as NA
from numpy_ref import cli
from numpy_ref.cli import CLIError
from numpy_ref.captions import CAPTIONS_SEED, load_captioned, make_captioned
from . import attributes as A
from .adamw import BETAS, adamw_update, new_state
from .train import lr_at
from .train_features import random_shift

DEFAULTS = dict(steps=1000, batch=64, lr=1e-2, warmup=100, weight_decay=5e-4, width=8, hidden=64, seed=0,
                held_out_images=1000)
EXTRA_SEED = CAPTIONS_SEED + 100   # the seed of the held-out pairs' training images (the splits use + 0, 1, 2)
SPLITS = ("test", "heldout")   # the real images every run is scored on

# ----------------------------------------------------------------------------
# Batches and the optimiser
# ----------------------------------------------------------------------------

def batch_at(step, seed, images, targets, batch, shift):
    """(x (B, C, H, W), per-cell targets {name: (B, 9)}) of training step `step`, from default_rng([seed, step]);
    targets: cell_targets of all the images."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(images), batch)
    return random_shift(images[idx], rng, shift), {k: v[idx] for k, v in targets.items()}


def training_set(size, held_out_images=0):
    """(images (N, 3, size, size), attributes {name: (N,) or (N, 2)}) to train on: the "train" split, then
    held_out_images images of the HELD_OUT pairs from EXTRA_SEED."""
    ds = load_captioned("train", size)
    if not held_out_images:
        return ds.images, ds.attributes
    images, _, attrs = make_captioned(held_out_images, size, seed=EXTRA_SEED, split="heldout")
    return (np.concatenate([ds.images, images]),
            {k: np.concatenate([ds.attributes[k], attrs[k]]) for k in ds.attributes})


def make_train_step(params, shapes, weight_decay=0.0, device=None):
    """(state, step): the training state of adamw.py (state["params"] the network's weights) and step(x, object,
    shape, colour, size, lr, decay, bc1, bc2) -> (loss, accuracy), one AdamW update in place (a TinyJit); the
    targets are cell_targets' (B, 9) arrays as Tensors (object float, the others int32, -1 at empty cells); lr, decay
    and the bias corrections (1,) Tensors (decay 1: no EMA). No gradient clipping (clip = inf)."""
    state = new_state(params, shapes, device)
    ps = [state["params"][k] for k in shapes]

    @TinyJit
    def step(x, obj, shape, colour, size, lr, decay, bc1, bc2):
        logits = A.forward(state["params"], x)
        loss, acc = A.loss_and_accuracy(logits, dict(object=obj, shape=shape, colour=colour, size=size))
        adamw_update(state, loss.gradient(*ps), lr, decay, bc1, bc2, weight_decay, clip=math.inf)
        Tensor.realize(loss, acc, *state["flat"].values())
        return loss, acc

    return state, step


def score(params, ds, batch=256):
    """judge() of the classifier (NumPy forward, as evaluate_text runs it) on the real images of ds -> dict of bool
    arrays (N,) per attribute."""
    return NA.judge(NA.compute_logits({k: v.numpy() for k, v in params.items()}, ds.images, batch), ds.attributes)


def accuracy_table(rows):
    """rows [(split, objects, n, accuracies)] -> a Markdown table of the attributes (ATTRIBUTES + all)."""
    lines = ["| split | objects | n | " + " | ".join(NA.ATTRIBUTES) + " | all |",
             "| --- | --- | ---: |" + " ---: |" * (len(NA.ATTRIBUTES) + 1)]
    for split, objects, n, acc in rows:
        lines.append(f"| {split} | {objects} | {n} | " + " | ".join(f"{acc[a]:.3f}" for a in (*NA.ATTRIBUTES, "all"))
                     + " |")
    return "\n".join(lines)


def split_rows(split, ok, count):
    """The table rows of one split: one object, two objects, every image."""
    return [(split, label, int(mask.sum()), NA.accuracies(ok, mask))
            for label, mask in (("1", count == 1), ("2", count == 2), ("all", np.ones_like(count, bool)))]


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def train(args):
    """Train and save an attribute classifier as set by the parsed CLI args. Returns a summary dict."""
    from tqdm import tqdm
    from .sample import check_device
    device = args.device = check_device(args.device)
    size = args.size or 32
    cfg = NA.AttributeConfig(img_size=size, width=args.width, hidden=args.hidden)   # checks the size first
    out = args.out or NA.attributes_path(size)
    cli.writable_file(out)
    images, attributes = training_set(size, args.held_out_images)
    real = {split: load_captioned(split, size) for split in SPLITS}
    if args.shift is None:
        args.shift = round(size / 16)
    targets = {k: v.astype(np.float32 if k == "object" else np.int32) for k, v in NA.cell_targets(attributes).items()}
    state, step_fn = make_train_step(A.init_params(cfg, args.seed, device), A.param_shapes(cfg), args.weight_decay,
                                     device)
    params = state["params"]
    n_params = sum(int(np.prod(p.shape)) for p in params.values())
    print(f"attribute classifier ({n_params / 1e3:.0f}k params) on captions ({len(images)} train images 3x{size}x{size}, "
          f"{args.held_out_images} of them of the held-out pairs; "
          f"{', '.join(f'{len(d)} {s}' for s, d in real.items())}), batch {args.batch}, {args.steps} steps, "
          f"device {device or Device.DEFAULT}", flush=True)
    losses, accs, t0 = [], [], time.perf_counter()
    bar = tqdm(range(args.steps), unit="step", dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        x, y = batch_at(step, args.seed, images, targets, args.batch, args.shift)
        with Context(TRAINING=1):
            loss, acc = step_fn(Tensor(x, device=device), *(Tensor(y[k], device=device)
                                                            for k in ("object", "shape", "colour", "size")),
                                Tensor([lr_at(step, args.lr, args.warmup, cosine_steps=args.steps)], device=device),
                                Tensor([1.0], device=device), Tensor([1 - BETAS[0] ** (step + 1)], device=device),
                                Tensor([1 - BETAS[1] ** (step + 1)], device=device))
        losses.append(float(loss.item()))
        accs.append(float(acc.item()))
        if not math.isfinite(losses[-1]):   # nothing is written: the file would hold NaN weights
            raise CLIError(f"step {step + 1}: the loss is {losses[-1]}: the training diverged, most likely the "
                           f"learning rate {args.lr:g} is too high; nothing was written. Lower --lr")
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", acc=f"{np.mean(accs[-50:]):.3f}")
    bar.close()
    train_time = time.perf_counter() - t0
    rows, by_split = [], {}
    for split, d in real.items():
        ok = score(params, d)
        by_split[split] = NA.accuracies(ok)
        rows += split_rows(split, ok, d.attributes["count"])
    meta = dict(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, shift=args.shift,
                held_out_images=args.held_out_images,
                train_loss=float(np.mean(losses[-50:])), train_accuracy=float(np.mean(accs[-50:])),
                heldout_accuracy=by_split["heldout"], train_time=round(train_time, 1))
    A.save_attributes(out, params, cfg, by_split["test"], meta)
    print(f"accuracy on real images (an image is right when every object has the attribute; count and position "
          f"over the image):\n{accuracy_table(rows)}\ntrain loss {meta['train_loss']:.4f}, "
          f"{args.steps / max(train_time, 1e-9):.1f} steps/s ({train_time:.0f} s)\nwrote {out}")
    return dict(meta, test_accuracy=by_split["test"], out=out, rows=rows)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.train_attributes", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    count = cli.positive(int)
    p.add_argument("--size", type=cli.in_range(int, NA.MIN_SIZE), default=None,
                   help=f"image size of the captions, >= {NA.MIN_SIZE} (default 32; the text model's --size)")
    p.add_argument("--steps", type=count, default=d["steps"], help="training steps")
    p.add_argument("--batch", type=count, default=d["batch"], help="batch size")
    p.add_argument("--lr", type=cli.positive(float), default=d["lr"], help="peak AdamW learning rate, > 0")
    p.add_argument("--warmup", type=cli.non_negative(int), default=d["warmup"], help="linear warm-up steps")
    p.add_argument("--weight-decay", type=cli.non_negative(float), default=d["weight_decay"],
                   help="AdamW decoupled weight decay, >= 0")
    p.add_argument("--width", type=count, default=d["width"], help="channels of the first conv (a multiple of 8)")
    p.add_argument("--hidden", type=count, default=d["hidden"], help="width of the per-cell hidden layer")
    p.add_argument("--held-out-images", type=cli.non_negative(int), default=d["held_out_images"],
                   help="images of the held-out colour-shape pairs added to the train split (their own seed: none is "
                   "in the heldout split), so the classifier knows every pair; 0: the train split alone")
    p.add_argument("--shift", type=cli.non_negative(int), default=None, help="random translation of up to this many "
                   "pixels (default: 1/16 of the image side, 2 at 32x32)")
    p.add_argument("--seed", type=cli.non_negative(int), default=d["seed"], help="seed of the init and of every batch")
    p.add_argument("--out", default=None, help="file to write (default data/attributes-captions.safetensors, "
                                               "-<size> before the suffix for sizes other than 32)")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL (default: DEV or tinygrad's pick)")
    return p


def main(argv=None):
    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
