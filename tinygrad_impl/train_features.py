"""Train the feature network (numpy_ref/features.py) on the real training set of a dataset, for evaluation.

    python -m tinygrad_impl.train_features --data fashion-mnist          # -> data/features/fashion-mnist.safetensors
    python -m tinygrad_impl.train_features --data shapes --size 16 --steps 500

AdamW (tinygrad_impl.adamw, without clipping or EMA) with linear warm-up and cosine decay (train.lr_at), random
shifts (2 pixels at 32x32), one TinyJit step. The test
accuracy (on the test split) is printed and stored in the file's metadata; tinygrad_impl.evaluate reads
the file with NumPy. Every batch of step k comes from np.random.default_rng([seed, k]).
"""
import argparse
import math
import time

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit

from numpy_ref import cli
from numpy_ref.cli import CLIError
from numpy_ref.data import DATASETS, load_dataset
from . import features as F
from .adamw import BETAS, adamw_update, new_state
from .train import lr_at

DEFAULTS = dict(steps=2000, batch=128, lr=5e-3, warmup=100, weight_decay=5e-4, width=16, seed=0)

# ----------------------------------------------------------------------------
# Batches and the optimiser
# ----------------------------------------------------------------------------

def random_shift(x, rng, shift=2):
    """Translate each image (B, C, H, W) by up to `shift` pixels in x and y, repeating the edge pixels."""
    if shift <= 0:
        return x
    B, C, H, W = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")
    dy, dx = rng.integers(0, 2 * shift + 1, (2, B))
    return np.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


def batch_at(step, seed, ds, batch, shift):
    """(x (B, C, H, W), y (B,)) of training step `step`, from default_rng([seed, step])."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(ds), batch)
    return random_shift(ds.images[idx], rng, shift), ds.labels[idx]


def make_train_step(params, shapes, weight_decay=0.0, device=None):
    """(state, step): the training state of adamw.py (params, m, v in flat buffers; state["params"] the network's
    weights) and step(x, y, lr, decay, bc1, bc2) -> (loss, accuracy), one AdamW update of it in place (a TinyJit).
    lr, the EMA decay and the Adam bias corrections come in as (1,) Tensors so one JIT serves every step; pass decay
    1 (the classifier keeps no EMA). No gradient clipping (clip = inf)."""
    state = new_state(params, shapes, device)
    ps = [state["params"][k] for k in shapes]

    @TinyJit
    def step(x, y, lr, decay, bc1, bc2):
        _, logits = F.forward(state["params"], x)                                # (B, K)
        loss = logits.sparse_categorical_crossentropy(y)
        acc = (logits.argmax(-1) == y).float().mean()
        adamw_update(state, loss.gradient(*ps), lr, decay, bc1, bc2, weight_decay, clip=math.inf)
        Tensor.realize(loss, acc, *state["flat"].values())
        return loss, acc

    return state, step


def accuracy(params, images, labels, batch=256):
    """Fraction of images (N, C, H, W) the network labels correctly, measured by the NumPy forward: the code
    that evaluation runs (and faster here than an unjitted tinygrad graph per batch)."""
    from numpy_ref.features import compute_features
    _, logits = compute_features({k: v.numpy() for k, v in params.items()}, images, batch)
    return float((logits.argmax(1) == labels).mean())


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def train(args):
    """Train and save a feature network as set by the parsed CLI args. Returns a summary dict."""
    from tqdm import tqdm
    from .sample import check_device
    device = args.device = check_device(args.device)
    out = args.out or F.features_path(args.data, args.size or 32)
    cli.writable_file(out)
    ds = load_dataset(args.data, "train", root=args.data_root, download=args.download, size=args.size)
    test = load_dataset(args.data, "test", root=args.data_root, download=args.download, size=args.size)
    if ds.num_classes < 2:
        raise ValueError(f"{args.data} has no class labels: the feature network is a classifier and needs a "
                         "labelled training set (a folder with one sub-folder per class)")
    C, H, W = ds.shape
    if args.shift is None:
        args.shift = round(H / 16)   # a shift of 2 px at 8x8 moves a quarter of the image: too much to learn from
    cfg = F.FeatureConfig(img_size=H, in_channels=C, num_classes=ds.num_classes, width=args.width)
    out = args.out or F.features_path(args.data, H)
    state, step_fn = make_train_step(F.init_params(cfg, args.seed, device), F.param_shapes(cfg), args.weight_decay,
                                     device)
    params = state["params"]
    n_params = sum(int(np.prod(p.shape)) for p in params.values())
    print(f"feature network ({n_params / 1e3:.0f}k params, {cfg.feature_dim} features) on {ds.name} "
          f"({len(ds)} train / {len(test)} test images {C}x{H}x{W}, {ds.num_classes} classes), batch {args.batch}, "
          f"{args.steps} steps, device {device or Device.DEFAULT}", flush=True)
    losses, accs, t0 = [], [], time.perf_counter()
    bar = tqdm(range(args.steps), unit="step", dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        x, y = batch_at(step, args.seed, ds, args.batch, args.shift)
        with Context(TRAINING=1):
            loss, acc = step_fn(Tensor(x, device=device), Tensor(y.astype(np.int32), device=device),
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
    test_acc = accuracy(params, test.images, test.labels)
    meta = dict(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, shift=args.shift,
                train_loss=float(np.mean(losses[-50:])), train_accuracy=float(np.mean(accs[-50:])),
                class_names=list(ds.class_names), train_time=round(train_time, 1))
    F.save_features(out, params, cfg, args.data, test_acc, meta)
    print(f"test accuracy {test_acc:.4f} ({len(test)} {args.data} test images), train loss {meta['train_loss']:.4f}, "
          f"{args.steps / max(train_time, 1e-9):.1f} steps/s\nwrote {out}")
    return dict(meta, test_accuracy=test_acc, out=out)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.train_features", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    p.add_argument("--data", default="shapes", help=f"dataset: {', '.join(DATASETS)}")
    p.add_argument("--size", type=cli.positive(int), default=None, help="image size of shapes / folder: data (default 32)")
    p.add_argument("--data-root", default="data", help="where real datasets are looked for and downloaded")
    p.add_argument("--download", action="store_true", help="download a missing dataset (checks its MD5)")
    count = cli.positive(int)
    p.add_argument("--steps", type=count, default=d["steps"], help="training steps")
    p.add_argument("--batch", type=count, default=d["batch"], help="batch size")
    p.add_argument("--lr", type=cli.positive(float), default=d["lr"], help="peak AdamW learning rate, > 0")
    p.add_argument("--warmup", type=cli.non_negative(int), default=d["warmup"], help="linear warm-up steps")
    p.add_argument("--weight-decay", type=cli.non_negative(float), default=d["weight_decay"],
                   help="AdamW decoupled weight decay, >= 0")
    p.add_argument("--width", type=count, default=d["width"], help="channels of the first conv (features: 8x this)")
    p.add_argument("--shift", type=cli.non_negative(int), default=None, help="random translation of up to this many "
                   "pixels (default: 1/16 of the image side, 2 at 32x32, 0 at 8x8)")
    p.add_argument("--seed", type=cli.non_negative(int), default=d["seed"], help="seed of the init and of every batch")
    p.add_argument("--out", default=None, help="file to write (default data/features/<data>.safetensors, "
                                               "<data>-<size> for sizes other than 32)")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL (default: DEV or tinygrad's pick)")
    return p


def main(argv=None):
    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
