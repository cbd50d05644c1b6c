"""Compare the architectures on one dataset at matched size and the same training budget.

    python -m tinygrad_impl.compare --data fashion-mnist --steps 4000 --batch 128 --device CUDA
    python -m tinygrad_impl.compare --archs tokenfree unet --steps 300 --n 2000      # a subset, a smaller budget
    python -m tinygrad_impl.compare --minutes 20 --seeds 0 1 2 --archs tokenfree uvit   # equal wall clock, 3 seeds
    python -m tinygrad_impl.compare --table                                          # only rebuild the table

For each entry of MATCHED (about 1.5M parameters each on 32x32x1 images) and of ABLATIONS (the token-free design
choices, each one change to MATCHED["tokenfree"]) it trains with tinygrad_impl.train (same steps or the same
wall-clock minutes, batch, lr, seed and data order for all; each --seeds value is one more run of every entry,
in <out>/<entry>-seed<k>), counts the forward's distinct tinygrad kernels (tinygrad_impl.report), evaluates the
EMA weights with
tinygrad_impl.evaluate (FD, KID, precision/recall, class accuracy on the project's own classifier), counts
parameters and MACs with numpy_ref, and writes <out>/compare.md and compare.json. It is resumable: a
finished model is not trained again, an unfinished one continues from its checkpoint (a larger --steps
continues a finished one), and a model's evaluation in <out>/<entry>/eval.json is redone only when its step or
the evaluation settings changed. Times are wall-clock seconds on the machine that ran it
(training time includes tinygrad's compile of the first step).
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

from numpy_ref import cli
from numpy_ref.configs import get_config, parse_overrides
from numpy_ref.models import count_macs

# entry -> (preset, --set overrides): about 1.5M parameters at 32x32x1 (MNIST, Fashion-MNIST: 28x28 padded), 10 classes.
# Token size 2x2 for both transformers (stride / patch 2): each sees a 16x16 grid.
MATCHED = {
    "tokenfree": ("tokenfree-xs", ["stride=2", "width=104"]),
    "uvit": ("uvit-xs", ["stride=2", "width=112"]),
    "unet": ("unet-xs", []),
    "mobile_unet": ("mobile_unet-xs", []),
    "snapgen_unet": ("snapgen_unet-xs", ["channels=28", "groups=4"]),
    "diffit": ("diffit-xs", ["window=8", "channels=40"]),
}
_TF = ["stride=2", "width=104"]
# the token-free design choices (DESIGN 3.1), each one change to MATCHED["tokenfree"]
ABLATIONS = {
    "tokenfree_no_pos_conv": ("tokenfree-xs", _TF + ["pos_conv=false"]),
    "tokenfree_no_skips": ("tokenfree-xs", _TF + ["skips=false"]),
    "tokenfree_pos_embed": ("tokenfree-xs", _TF + ["pos_embed=true"]),            # does it need positions after all?
    "tokenfree_stem_S": ("tokenfree-xs", _TF + ["stem_kernel=2"]),                # kernel S: no overlap
    "tokenfree_circular_stem": ("tokenfree-xs", _TF + ["stem_padding=circular"]),  # no zero padding to find a border
    "tokenfree_stride4": ("tokenfree-xs", ["stride=4", "width=240"]),            # an 8x8 grid at the same MACs
    "tokenfree_shared": ("tokenfree-xs", _TF + ["share_blocks=true"]),           # one block's weights for all N
}


def entries():
    """Every entry compare knows: entry -> (preset, --set overrides)."""
    return {**MATCHED, **ABLATIONS}


def run_dir(args, entry, seed):
    """<out>/<entry> for seed 0, <out>/<entry>-seed<k> for another training seed."""
    return os.path.join(args.out, entry if seed == 0 else f"{entry}-seed{seed}")


def size_of(arch, shape, num_classes):
    """(parameters, MACs per image of one forward) of MATCHED[arch] on images `shape` = (C, H, W)."""
    preset, sets = entries()[arch]
    C, H, _ = shape
    return count_macs(get_config(preset, img_size=H, in_channels=C, num_classes=num_classes, **parse_overrides(sets)))


def read_json(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def budget_reached(record, args):
    """True when a run's record has its budget: --steps steps, or with --minutes that many minutes of training."""
    if args.minutes:
        return record.get("done", False) or sum(s["train_s"] for s in record["sessions"]) >= 60 * args.minutes
    return record["step"] >= args.steps


def train_one(entry, seed, args):
    """Train (or finish training) entries()[entry] with this seed; returns its record: the checkpoint's step and one
    entry per session (steps, seconds of training, loss)."""
    from tinygrad import Device

    from tinygrad_impl import train
    out = run_dir(args, entry, seed)
    record_path = os.path.join(out, "train.json")
    record = read_json(record_path) or dict(step=0, sessions=[])
    ckpt = os.path.join(out, "ckpt.safetensors")
    if not args.minutes and record["step"] < args.steps and os.path.exists(ckpt):
        from numpy_ref.weights import read_file
        meta = read_file(ckpt)[2]
        if meta["step"] >= args.steps:   # the session ended (killed while drawing its last grid) before this record
            record["sessions"].append(dict(steps=meta["step"] - record["step"], train_s=0.0, steps_per_s=float("nan"),
                                           loss=meta.get("loss"), batch=args.batch, device=args.device or Device.DEFAULT,
                                           host=platform.node(), note="time not recorded"))
            record["step"] = meta["step"]
            write_json(record_path, record)
    if budget_reached(record, args):
        return record
    preset, sets = entries()[entry]
    steps = args.steps if not args.minutes else max(args.steps, record["step"] + 1)
    argv = ["--preset", preset, "--data", args.data, "--data-root", args.data_root, "--steps", str(steps),
            "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(seed), "--out", out,
            "--sample-every", "0", "--ckpt-every", str(args.ckpt_every)]
    if args.minutes:   # the minutes left of the budget; --steps is then only an upper bound
        left = 60 * args.minutes - sum(s["train_s"] for s in record["sessions"])
        argv += ["--minutes", f"{left / 60:.4f}"]
    argv += ["--set", *sets] if sets else []
    argv += ["--size", str(args.size)] if args.size else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--resume"] if os.path.exists(ckpt) else []
    summary = train.train(train.build_parser().parse_args(argv))
    record["sessions"].append(dict(steps=summary["step"] - summary["start"], train_s=round(summary["train_time"], 1),
                                   steps_per_s=round(summary["steps_per_s"], 3), loss=summary["loss"], batch=args.batch,
                                   device=args.device or Device.DEFAULT, host=platform.node()))
    record["step"] = summary["step"]   # the checkpoint's step (a killed session's steps count, not its time)
    record["budget"] = f"{args.minutes:g} minutes" if args.minutes else f"{args.steps} steps"
    if args.minutes and not summary["interrupted"]:
        record["done"] = True          # the time ran out (or --steps was reached): this budget is spent
    os.makedirs(out, exist_ok=True)
    write_json(record_path, record)
    if summary["interrupted"]:   # Ctrl-C / SIGTERM: train saved its checkpoint; the same command continues it
        print(f"{summary['stopped_by']}: stopped; run the same command again to continue", flush=True)
        raise KeyboardInterrupt
    return record


def evaluate_one(entry, seed, args):
    """Evaluate a run's EMA weights; an earlier eval.json is kept only if it is of the same step and settings."""
    from tinygrad_impl import evaluate
    out = run_dir(args, entry, seed)
    path, ckpt = os.path.join(out, "eval.json"), os.path.join(out, "ckpt.safetensors")
    record = read_json(os.path.join(out, "train.json"))
    want = dict(step=record["step"], n=args.n, steps=args.sample_steps, guidance=args.guidance,
                **({"sampler": args.sampler} if args.sampler else {}))
    ev = read_json(path)
    if ev is None or any(ev["info"].get(k) != v for k, v in want.items()):
        argv = ["--ckpt", ckpt, "--n", str(args.n), "--ref-n", str(args.n), "--steps", str(args.sample_steps),
                "--guidance", str(args.guidance), "--data-root", args.data_root, "--features", features_file(args),
                "--json", path] + (["--sampler", args.sampler] if args.sampler else [])
        argv += ["--device", args.device] if args.device else []
        evaluate.main(argv)
    return read_json(path)


def kernels_of(entry, args, shape, num_classes):
    """Distinct and launched tinygrad kernels of one forward (batch 8: tinygrad_impl.report in a subprocess, which
    counts every program run, cached on disk or compiled now), kept in <out>/<entry>/kernels.json."""
    path = os.path.join(args.out, entry, "kernels.json")
    if read_json(path) is None:
        preset, sets = entries()[entry]
        cmd = [sys.executable, "-m", "tinygrad_impl.report", "--one", "--forward-only", "--presets", preset,
               "--img-size", str(shape[1]), "--channels", str(shape[0]), "--num-classes", str(num_classes),
               "--batch", "8"] + (["--set", *sets] if sets else [])
        env = dict(os.environ, **({"DEV": args.device} if args.device else {}))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"counting the kernels of {entry} failed:\n{done.stderr[-2000:]}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, json.loads(done.stdout.strip().splitlines()[-1]))
    return read_json(path)


def features_file(args):
    """The feature network: --features, or the default file of the dataset at its image size."""
    from numpy_ref.data import load_dataset
    from numpy_ref.features import features_path
    if args.features:
        return args.features
    return features_path(args.data, load_dataset(args.data, "test", root=args.data_root, size=args.size).shape[1])


METRICS = ("fd", "kid", "precision", "recall", "class_acc")


def spread(values, fmt):
    """'mean' of one value, 'mean ± sd' (sample standard deviation) of several; '-' when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def table(args):
    """Markdown table of every entry with results in args.out (one row per entry: the mean ± sd over its seeds);
    also writes compare.md / compare.json."""
    from numpy_ref.data import load_dataset
    ds = load_dataset(args.data, "test", root=args.data_root, size=args.size)
    rows = []
    for entry, (preset, sets) in entries().items():
        for name in sorted(os.listdir(args.out)) if os.path.isdir(args.out) else []:
            if name != entry and not (name.startswith(entry + "-seed") and name[len(entry) + 5:].isdigit()):
                continue
            seed = int(name[len(entry) + 5:]) if name != entry else 0
            record, ev = read_json(os.path.join(args.out, name, "train.json")), read_json(os.path.join(args.out, name, "eval.json"))
            if record is None or ev is None:
                continue
            params, macs = size_of(entry, ds.shape, ds.num_classes)
            sam, floor, ceil = ev["rows"]
            sessions = record["sessions"]
            kernels = read_json(os.path.join(args.out, entry, "kernels.json")) or {}
            rows.append(dict(entry=entry, seed=seed, preset=preset, set=sets, params=params, macs=macs,
                             budget=record.get("budget", f"{record['step']} steps"),
                             steps=record["step"], batch=sessions[-1]["batch"], train_s=sum(s["train_s"] for s in sessions),
                             loss=sessions[-1]["loss"], device=sessions[-1]["device"], kernels=kernels.get("fwd_kernels"),
                             launches=kernels.get("fwd_launches"), sample_s_per_image=ev["info"]["sample_time"] / ev["info"]["n"],
                             info=ev["info"], samples=sam, floor=floor, ceiling=ceil))
    if not rows:
        raise FileNotFoundError(f"no finished models under {args.out}: run without --table first")
    i = rows[0]["info"]
    budget = " / ".join(sorted({r["budget"] for r in rows})) + " of training each"
    total = sum(r["train_s"] for r in rows) / 3600
    lines = [f"{args.data} {'x'.join(map(str, i['image']))}; {budget} ({total:.1f} h of training in all, "
             f"{rows[0]['device']}); {i['n']} EMA samples, {i['sampler']} {i['steps']} steps, guidance "
             f"{i['guidance']:g}; FD/KID against {i['reference']}; kernels: distinct/launched in one forward (batch 8); "
             "a ± is the standard deviation over training seeds",
             "", "| model | seeds | steps | params | MACs/img | kernels | train min | s/img sampling | FD | KID x1e3 "
             "| precision | recall | class acc |", "| --- " + "| ---: " * 12 + "|"]
    by_entry = {}
    for r in rows:
        by_entry.setdefault(r["entry"], []).append(r)
    fd_mean = lambda rs: float(np.mean([r["samples"]["fd"] for r in rs]))  # noqa: E731
    for entry, rs in sorted(by_entry.items(), key=lambda kv: fd_mean(kv[1])):
        r0 = rs[0]
        name = entry + (f" ({' '.join(r0['set'])})" if r0["set"] else "")
        col = lambda k, fmt, scale=1.0: spread([None if r["samples"][k] is None else scale * r["samples"][k] for r in rs], fmt)  # noqa: E731
        kern = "-" if r0["kernels"] is None else f"{r0['kernels']}/{r0['launches']}"
        lines.append(f"| {name} | {len(rs)} | {spread([r['steps'] for r in rs], '.0f')} | {r0['params'] / 1e6:.2f}M | "
                     f"{r0['macs'] / 1e6:.0f}M | {kern} | {spread([r['train_s'] / 60 for r in rs], '.1f')} | "
                     f"{spread([r['sample_s_per_image'] for r in rs], '.3f')} | {col('fd', '.2f')} | "
                     f"{col('kid', '.2f', 1e3)} | {col('precision', '.3f')} | {col('recall', '.3f')} | "
                     f"{col('class_acc', '.3f')} |")
    fmt = lambda r: (f"{r['fd']:.2f} | {1e3 * r['kid']:.2f} | {r['precision']:.3f} | "  # noqa: E731
                     f"{r['recall']:.3f} | {'-' if r['class_acc'] is None else format(r['class_acc'], '.3f')}")
    lines.append(f"| real test images (floor) |{' |' * 7} {fmt(rows[0]['floor'])} |")
    lines.append(f"| Gaussian noise (ceiling) |{' |' * 7} {fmt(rows[0]['ceiling'])} |")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(text + "\n")
    write_json(os.path.join(args.out, "compare.json"), rows)
    return text


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(entries()), choices=list(entries()),
                   help="entries of MATCHED (the architectures) and ABLATIONS (the token-free design choices)")
    p.add_argument("--data", default="fashion-mnist", help="dataset (MATCHED is sized for 32x32x1: mnist, fashion-mnist)")
    count = cli.positive(int)
    p.add_argument("--size", type=count, default=None, help="image size of shapes / folder: data")
    p.add_argument("--data-root", default="data")
    p.add_argument("--steps", type=count, default=4000, help="training steps of every model (with --minutes: at most)")
    p.add_argument("--minutes", type=cli.positive(float), default=None, help="compute-matched: train every model for "
                   "this many wall-clock minutes on this machine (compile included) in place of equal steps")
    p.add_argument("--batch", type=count, default=128)
    p.add_argument("--lr", type=cli.positive(float), default=3e-4)
    p.add_argument("--seeds", nargs="+", type=cli.non_negative(int), default=[0], help="training seeds: one run of "
                   "every entry each (the table shows mean ± sd)")
    p.add_argument("--ckpt-every", type=cli.non_negative(int), default=1000)
    p.add_argument("--n", type=cli.in_range(int, 2), default=5000, help="samples per model (and real reference images)")
    p.add_argument("--sampler", default=None, help="default: the checkpoint's own (ddim; euler for flow models)")
    p.add_argument("--sample-steps", type=count, default=50)
    p.add_argument("--guidance", type=cli.non_negative(float), default=1.0, help="CFG weight of the evaluation "
                   "samples (1 = none)")
    p.add_argument("--features", default=None, help="feature network file (default data/features/<data>.safetensors; "
                   "trained first when missing)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL")
    p.add_argument("--table", action="store_true", help="only rebuild the table from what --out holds")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.table:
        from numpy_ref.data import data_tag, load_dataset
        from tinygrad_impl.sample import check_device
        args.device = check_device(args.device)
        cli.writable_folder(args.out)
        if not os.path.exists(features_file(args)):
            from tinygrad_impl import train_features
            print(f"no feature network for {data_tag(args.data)} yet: training one", flush=True)
            train_features.main(["--data", args.data, "--data-root", args.data_root, "--out", features_file(args)]
                                + (["--size", str(args.size)] if args.size else [])
                                + (["--device", args.device] if args.device else []))
        ds = load_dataset(args.data, "test", root=args.data_root, size=args.size)
        for entry in args.archs:
            for seed in args.seeds:
                print(f"== {entry} (seed {seed}) ==", flush=True)
                train_one(entry, seed, args)
                evaluate_one(entry, seed, args)
            kernels_of(entry, args, ds.shape, ds.num_classes)
    text = table(args)
    print(text)


if __name__ == "__main__":
    cli.run(main)
