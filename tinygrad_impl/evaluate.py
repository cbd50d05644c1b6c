"""Measure the sample quality of a checkpoint: FD, KID, precision/recall and class accuracy on the features of
the project's own classifier (numpy_ref/features.py), with the calibration rows printed beside.

    python -m tinygrad_impl.train_features --data shapes                      # once per dataset
    python -m tinygrad_impl.evaluate --ckpt runs/shapes-tokenfree-xs/ckpt.safetensors --n 10000 --sampler ddim --steps 50

Rows: the samples; real test images (the floor: what a perfect model would score with this many images);
Gaussian noise clipped to [-1, 1] (the ceiling). Every row is compared with the same reference, --ref-n real
training images. Samples are drawn with tinygrad (--numpy: with numpy_ref, then no tinygrad is imported);
features and metrics are NumPy. Sample i has class i % K and its own noise, from default_rng([--seed, i]), in
both backends and for every --batch, so a seed gives the same images and the same numbers.
"""
import argparse
import json
import os
import time

import numpy as np

from numpy_ref import cli
from numpy_ref import features as F
from numpy_ref import metrics
from numpy_ref.cli import CLIError
from numpy_ref.samplers import SAMPLERS
from numpy_ref.sample import SAMPLER_HELP, SPACING_HELP, check_run, load_checked, schedule_of, writable_file_for
from numpy_ref.schedule import SPACINGS

# ----------------------------------------------------------------------------
# What is compared
# ----------------------------------------------------------------------------

def real_sets(data, cfg, root="data", ref_n=10000, n=10000, seed=0):
    """(reference train images, test images, test labels): ref_n random train images and n random test images
    (all of a split when it is smaller), checked against the model's image shape."""
    from numpy_ref.data import load_dataset
    size = cfg.img_size if data == "shapes" or data.startswith("folder:") else None
    train, test = load_dataset(data, "train", root=root, size=size), load_dataset(data, "test", root=root, size=size)
    if train.shape != (cfg.in_channels, cfg.img_size, cfg.img_size):
        raise ValueError(f"{data} images are {train.shape}, but the model makes "
                         f"{(cfg.in_channels, cfg.img_size, cfg.img_size)}: the checkpoint was trained on other data")
    rng = np.random.default_rng([seed, 1])
    ref = train.images[np.sort(rng.permutation(len(train))[:ref_n])]
    pick = np.sort(rng.permutation(len(test))[:n])
    return ref, test.images[pick], test.labels[pick]


def noise_images(n, shape, seed=0):
    """n images of N(0, 1) noise clipped to [-1, 1] (what the sampler starts from): the ceiling row."""
    return np.clip(np.random.default_rng([seed, 2]).standard_normal((n, *shape)), -1, 1).astype(np.float32)


def sample_labels(n, num_classes):
    """Class ids (n,) taking turns 0, 1, .., K-1, 0, ..; None for an unconditional model."""
    return (np.arange(n) % num_classes).astype(np.int64) if num_classes else None


def generate(params, cfg, sched, n, sampler=None, steps=50, eta=0.0, guidance=1.0, seed=0, batch=250,
             use_numpy=False, device=None, progress=None):
    """n samples (n, C, H, W) in [-1, 1] and their class ids (n,) or None, drawn `batch` at a time by the
    image_batches of numpy_ref.sample or its tinygrad twin (which fills the last batch up and cuts it, so one set
    of kernels serves all); sampler None: the default of cfg.prediction. progress: a wrapper over the batches'
    (first, images) pairs (e.g. tqdm)."""
    labels = sample_labels(n, cfg.num_classes)
    if use_numpy:
        from numpy_ref.sample import image_batches
        batches = image_batches(params, cfg, sched, n, labels, sampler, steps, eta, seed, guidance, batch)
    else:
        from .sample import image_batches
        from .weights import to_tensors
        batches = image_batches(to_tensors(params, device), cfg, sched, n, labels, sampler, steps, eta, seed, guidance,
                                batch, device=device)
    out = [images for _, images in (progress(batches) if progress else batches)]
    return np.concatenate(out), labels


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------

def evaluate(args):
    """Sample, embed and compare as set by the parsed CLI args. Returns a JSON-able dict (info, rows)."""
    import math
    from tqdm import tqdm
    check_args(args)
    if args.json:
        writable_file_for("--json", args.json)
    if not args.numpy:
        from .sample import check_device
        args.device = check_device(args.device)
    params, cfg, meta, which = load_checked(args.ckpt, args.raw)
    if cfg.text_vocab:
        raise CLIError(f"{args.ckpt} is a text-conditioned model (trained with --cond text): evaluate is not "
                       "supported yet for text models (it samples classes); sample it with python -m "
                       "tinygrad_impl.sample --prompt ...")
    data = meta.get("data")
    if not data:
        raise ValueError(f"{args.ckpt} does not say which dataset it was trained on (meta 'data'): it cannot be "
                         "compared with real images")
    feat_path = args.features or F.features_path(data, cfg.img_size)
    if not os.path.exists(feat_path):
        size_flag = "" if cfg.img_size == 32 else f" --size {cfg.img_size}"
        raise FileNotFoundError(f"no feature network at {feat_path}: make it with python -m tinygrad_impl.train_features "
                                f"--data {data}{size_flag}" + ("" if args.features is None else f" --out {feat_path}"))
    fparams, fcfg, fmeta = F.load_features(feat_path)
    if fmeta["dataset"] != data:
        raise ValueError(f"{feat_path} was trained on {fmeta['dataset']}, the checkpoint on {data}: features of one "
                         f"dataset say little about another; train one with --data {data}")
    F.check_images(fcfg, (1, cfg.in_channels, cfg.img_size, cfg.img_size), "the model's images")
    sched = schedule_of(meta, args.spacing)
    check_run(args, cfg, meta, sched)
    backend = "numpy" if args.numpy else "tinygrad"
    if not args.numpy:
        from tinygrad import Device
        backend += f" {args.device or Device.DEFAULT}"

    ref, test, test_labels = real_sets(data, cfg, args.data_root, args.ref_n, args.n, args.seed)
    t0 = time.perf_counter()
    samples, labels = generate(params, cfg, sched, args.n, args.sampler, args.steps, args.eta, args.guidance, args.seed,
                               min(args.batch, args.n), args.numpy, args.device,
                               progress=lambda it: tqdm(it, desc=f"sampling ({backend})", unit="batch",
                                                        total=math.ceil(args.n / min(args.batch, args.n))))
    sample_time = time.perf_counter() - t0
    embed = lambda images, what: F.compute_features(  # noqa: E731
        fparams, images, progress=lambda it: tqdm(it, desc=f"features of {what}", unit="batch", leave=False))
    ref_feats, _ = embed(ref, "the reference")
    ref_stats = metrics.gaussian_stats(ref_feats)
    # class accuracy needs the classifier's classes to be the model's classes
    conditional = cfg.num_classes > 0 and cfg.num_classes == fcfg.num_classes
    rows = []
    for name, images, ids in ((f"samples ({which})", samples, labels if conditional else None),
                              ("real test (floor)", test, test_labels),
                              ("Gaussian noise (ceiling)", noise_images(args.n, samples.shape[1:], args.seed), None)):
        feats, logits = embed(images, name)
        row = metrics.compare(feats, ref_feats, logits if ids is not None else None, ids, args.k, args.kid_subsets,
                              args.kid_subset_size, args.seed, ref_stats)
        rows.append(dict(row, set=name))
    info = dict(ckpt=str(args.ckpt), arch=cfg.arch, preset=meta.get("preset"), step=meta.get("step"), data=data,
                image=[cfg.in_channels, cfg.img_size, cfg.img_size], weights=which, sampler=args.sampler,
                steps=args.steps, spacing=sched.spacing, eta=args.eta, guidance=args.guidance, seed=args.seed,
                n=args.n, backend=backend, sample_time=round(sample_time, 1), features=str(feat_path),
                feature_dim=fcfg.feature_dim, feature_test_accuracy=fmeta["test_accuracy"], reference=f"{len(ref)} real train images", k=args.k,
                class_names=list(meta.get("class_names") or range(cfg.num_classes)))
    result = dict(info=info, rows=rows)
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_table(result):
    """The result as a header and a Markdown table (KID x 1e3, as usually quoted)."""
    i = result["info"]
    lines = [f"{i['ckpt']}: {i['arch']}{' (' + i['preset'] + ')' if i['preset'] else ''} step {i['step']}, "
             f"data {i['data']} {'x'.join(map(str, i['image']))}, {i['weights']} weights",
             f"{i['n']} samples: {i['sampler']} {i['steps']} steps, eta {i['eta']:g}, guidance {i['guidance']:g}, "
             f"seed {i['seed']} ({i['backend']}, {i['sample_time']:.0f} s)",
             f"features: {i['features']} ({i['feature_dim']}-d, classifier test accuracy {i['feature_test_accuracy']:.4f}); "
             f"reference: {i['reference']}; precision/recall with k={i['k']}",
             "",
             "| set | n | FD | KID x1e3 | precision | recall | class acc |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        acc = "-" if r["class_acc"] is None else f"{r['class_acc']:.3f}"
        lines.append(f"| {r['set']} | {r['n']} | {r['fd']:.3f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_se']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {acc} |")
    per_class = result["rows"][0].get("class_acc_per_class")
    if per_class:   # which classes the model draws recognisably
        names = i.get("class_names") or list(range(len(per_class)))
        lines += ["", f"class accuracy of the {result['rows'][0]['set']} per class: " +
                  ", ".join(f"{n} {a:.2f}" for n, a in zip(names, per_class))]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by tinygrad_impl.train (or weights.save_weights)")
    p.add_argument("--n", type=cli.positive(int), default=10000, help="number of samples (and of noise and test images)")
    p.add_argument("--sampler", default=None, choices=SAMPLERS, help=SAMPLER_HELP)
    p.add_argument("--steps", type=cli.positive(int), default=50, help="sampling steps, 1..T of the checkpoint")
    p.add_argument("--spacing", default=None, choices=SPACINGS, help=SPACING_HELP)
    p.add_argument("--eta", type=cli.in_range(float, 0, 1), default=0.0,
                   help="DDIM noise in 0..1: 0 deterministic, 1 DDPM-like (dpmpp2m, euler, heun: 0 only)")
    p.add_argument("--guidance", type=cli.non_negative(float), default=1.0,
                   help="classifier-free guidance weight >= 0: 1 = the conditional model alone (no guidance), "
                   "0 = the unconditional one, > 1 pushes toward the class")
    p.add_argument("--seed", type=cli.non_negative(int), default=0,
                   help="seed of the samples, the noise row and the real subsets")
    p.add_argument("--batch", type=cli.positive(int), default=250,
                   help="samples drawn at once (memory grows with it; the samples do not depend on it)")
    p.add_argument("--raw", action="store_true", help="use the raw weights even when the file has an EMA copy")
    p.add_argument("--features", default=None, help="feature network file (default data/features/<data>.safetensors, "
                                                    "made by python -m tinygrad_impl.train_features)")
    p.add_argument("--data-root", default="data", help="where the real dataset is looked for")
    p.add_argument("--ref-n", type=cli.positive(int), default=10000, help="real training images in the reference set")
    p.add_argument("--k", type=cli.positive(int), default=3, help="nearest neighbours of the precision/recall manifolds")
    p.add_argument("--kid-subsets", type=cli.positive(int), default=100, help="KID: number of random subsets")
    p.add_argument("--kid-subset-size", type=cli.in_range(int, 2), default=1000, help="KID: rows per subset")
    p.add_argument("--json", default=None, help="also write the results (info and rows) to this JSON file")
    p.add_argument("--numpy", action="store_true", help="sample with numpy_ref instead of tinygrad (slow, no tinygrad)")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL (default: DEV or tinygrad's pick)")
    return p


def check_args(args):
    """The checks between flags (each flag's own range is its argparse type)."""
    if args.n < args.k + 2:
        raise CLIError(f"--n {args.n} is too few: the k-NN manifolds need more than k+1={args.k + 1} samples "
                       "(and FD wants thousands; 10000 is the usual count)")
    if args.ref_n < args.k + 2:
        raise CLIError(f"--ref-n must be >= {args.k + 2} (more than --k {args.k} + 1), got {args.ref_n}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = evaluate(args)
    print(format_table(result))
    return result


if __name__ == "__main__":
    cli.run(main)
