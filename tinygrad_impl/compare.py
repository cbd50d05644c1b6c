"""Compare the architectures on one dataset at matched size and the same training budget.

    python -m tinygrad_impl.compare --data fashion-mnist --steps 4000 --batch 128 --device CUDA
    python -m tinygrad_impl.compare --archs tokenfree unet --steps 300 --n 2000      # a subset, a smaller budget
    python -m tinygrad_impl.compare --table                                          # only rebuild the table

For each entry of MATCHED (about 1.5M parameters each on 32x32x1 images) it trains with
tinygrad_impl.train (same steps, batch, lr, seed and data order for all), evaluates the EMA weights with
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

from numpy_ref import cli
from numpy_ref.configs import get_config, parse_overrides
from numpy_ref.models import count_macs

# entry -> (preset, --set overrides): about 1.5M parameters at 32x32x1 (MNIST, Fashion-MNIST: 28x28 padded), 10 classes.
# Token size 2x2 for both transformers (stride / patch 2): each sees a 16x16 grid.
MATCHED = {
    "tokenfree": ("tokenfree-xs", ["stride=2", "width=104"]),
    "tokenfree_no_pos_conv": ("tokenfree-xs", ["stride=2", "width=104", "pos_conv=false"]),   # DESIGN 3.1 ablation
    "uvit": ("uvit-xs", ["stride=2", "width=112"]),
    "unet": ("unet-xs", []),
    "mobile_unet": ("mobile_unet-xs", []),
    "snapgen_unet": ("snapgen_unet-xs", ["channels=28", "groups=4"]),
    "diffit": ("diffit-xs", ["window=8", "channels=40"]),
}


def size_of(arch, shape, num_classes):
    """(parameters, MACs per image of one forward) of MATCHED[arch] on images `shape` = (C, H, W)."""
    preset, sets = MATCHED[arch]
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


def train_one(arch, args):
    """Train (or finish training) MATCHED[arch]; returns its record: the checkpoint's step and one entry per session."""
    from tinygrad import Device

    from tinygrad_impl import train
    out = os.path.join(args.out, arch)
    record_path = os.path.join(out, "train.json")
    record = read_json(record_path) or dict(step=0, sessions=[])
    ckpt = os.path.join(out, "ckpt.safetensors")
    if record["step"] < args.steps and os.path.exists(ckpt):
        from numpy_ref.weights import read_file
        meta = read_file(ckpt)[2]
        if meta["step"] >= args.steps:   # the session ended (killed while drawing its last grid) before this record
            record["sessions"].append(dict(steps=meta["step"] - record["step"], train_s=0.0, steps_per_s=float("nan"),
                                           loss=meta.get("loss"), batch=args.batch, device=args.device or Device.DEFAULT,
                                           host=platform.node(), note="time not recorded"))
            record["step"] = meta["step"]
            write_json(record_path, record)
    if record["step"] >= args.steps:
        return record
    preset, sets = MATCHED[arch]
    argv = ["--preset", preset, "--data", args.data, "--data-root", args.data_root, "--steps", str(args.steps),
            "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(args.seed), "--out", out,
            "--sample-every", "0", "--ckpt-every", str(args.ckpt_every)]
    argv += ["--set", *sets] if sets else []
    argv += ["--size", str(args.size)] if args.size else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--resume"] if os.path.exists(ckpt) else []
    summary = train.train(train.build_parser().parse_args(argv))
    record["sessions"].append(dict(steps=summary["step"] - summary["start"], train_s=round(summary["train_time"], 1),
                                   steps_per_s=round(summary["steps_per_s"], 3), loss=summary["loss"], batch=args.batch,
                                   device=args.device or Device.DEFAULT, host=platform.node()))
    record["step"] = summary["step"]   # the checkpoint's step (a killed session's steps count, not its time)
    os.makedirs(out, exist_ok=True)
    write_json(record_path, record)
    if summary["interrupted"]:   # Ctrl-C / SIGTERM: train saved its checkpoint; the same command continues it
        print(f"{summary['stopped_by']}: stopped; run the same command again to continue", flush=True)
        raise KeyboardInterrupt
    return record


def evaluate_one(arch, args):
    """Evaluate MATCHED[arch]'s EMA weights; an earlier eval.json is kept only if it is of the same step and settings."""
    from tinygrad_impl import evaluate
    path = os.path.join(args.out, arch, "eval.json")
    ckpt = os.path.join(args.out, arch, "ckpt.safetensors")
    record = read_json(os.path.join(args.out, arch, "train.json"))
    want = dict(step=record["step"], n=args.n, sampler=args.sampler,
                steps=args.sample_steps, guidance=args.guidance)
    ev = read_json(path)
    if ev is None or any(ev["info"].get(k) != v for k, v in want.items()):
        argv = ["--ckpt", ckpt, "--n", str(args.n), "--ref-n", str(args.n), "--sampler", args.sampler,
                "--steps", str(args.sample_steps), "--guidance", str(args.guidance), "--data-root", args.data_root,
                "--features", features_file(args), "--json", path]
        argv += ["--device", args.device] if args.device else []
        evaluate.main(argv)
    return read_json(path)


def features_file(args):
    """The feature network: --features, or the default file of the dataset at its image size."""
    from numpy_ref.data import load_dataset
    from numpy_ref.features import features_path
    if args.features:
        return args.features
    return features_path(args.data, load_dataset(args.data, "test", root=args.data_root, size=args.size).shape[1])


def table(args):
    """Markdown table of every architecture with results in args.out; also writes compare.md / compare.json."""
    from numpy_ref.data import load_dataset
    ds = load_dataset(args.data, "test", root=args.data_root, size=args.size)
    rows, lines = [], []
    for arch in MATCHED:
        record, ev = read_json(os.path.join(args.out, arch, "train.json")), read_json(os.path.join(args.out, arch, "eval.json"))
        if record is None or ev is None:
            continue
        params, macs = size_of(arch, ds.shape, ds.num_classes)
        sam, floor, ceil = ev["rows"]
        sessions = record["sessions"]
        rows.append(dict(arch=arch, preset=MATCHED[arch][0], set=MATCHED[arch][1], params=params, macs=macs,
                         steps=record["step"], batch=sessions[-1]["batch"], train_s=sum(s["train_s"] for s in sessions),
                         steps_per_s=sessions[-1]["steps_per_s"], loss=sessions[-1]["loss"],
                         device=sessions[-1]["device"], info=ev["info"], samples=sam, floor=floor, ceiling=ceil))
    if not rows:
        raise FileNotFoundError(f"no finished models under {args.out}: run without --table first")
    i = rows[0]["info"]
    lines.append(f"{args.data} {'x'.join(map(str, i['image']))}; "
                 f"{i['n']} EMA samples, {i['sampler']} {i['steps']} steps, guidance {i['guidance']:g}; "
                 f"FD/KID against {i['reference']}")
    lines += ["", "| model | steps | batch | params | MACs/img | train min | steps/s | final loss | FD | KID x1e3 | precision "
              "| recall | class acc |", "| --- " + "| ---: " * 12 + "|"]
    fmt = lambda r: (f"{r['fd']:.2f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_se']:.2f} | {r['precision']:.3f} | "  # noqa: E731
                     f"{r['recall']:.3f} | {'-' if r['class_acc'] is None else format(r['class_acc'], '.3f')}")
    for r in sorted(rows, key=lambda r: r["samples"]["fd"]):
        name = r["arch"] + (f" ({' '.join(r['set'])})" if r["set"] else "")
        lines.append(f"| {name} | {r['steps']} | {r['batch']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.0f}M | {r['train_s'] / 60:.1f} | "
                     f"{r['steps_per_s']:.2f} | {r['loss']:.4f} | {fmt(r['samples'])} |")
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
    p.add_argument("--archs", nargs="+", default=list(MATCHED), choices=list(MATCHED))
    p.add_argument("--data", default="fashion-mnist", help="dataset (MATCHED is sized for 32x32x1: mnist, fashion-mnist)")
    count = cli.positive(int)
    p.add_argument("--size", type=count, default=None, help="image size of shapes / folder: data")
    p.add_argument("--data-root", default="data")
    p.add_argument("--steps", type=count, default=4000, help="training steps of every model")
    p.add_argument("--batch", type=count, default=128)
    p.add_argument("--lr", type=cli.positive(float), default=3e-4)
    p.add_argument("--seed", type=cli.non_negative(int), default=0)
    p.add_argument("--ckpt-every", type=cli.non_negative(int), default=1000)
    p.add_argument("--n", type=cli.in_range(int, 2), default=5000, help="samples per model (and real reference images)")
    p.add_argument("--sampler", default="ddim")
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
        from numpy_ref.data import data_tag
        from tinygrad_impl.sample import check_device
        args.device = check_device(args.device)
        cli.writable_folder(args.out)
        if not os.path.exists(features_file(args)):
            from tinygrad_impl import train_features
            print(f"no feature network for {data_tag(args.data)} yet: training one", flush=True)
            train_features.main(["--data", args.data, "--data-root", args.data_root, "--out", features_file(args)]
                                + (["--size", str(args.size)] if args.size else [])
                                + (["--device", args.device] if args.device else []))
        for arch in args.archs:
            print(f"== {arch} ==", flush=True)
            train_one(arch, args)
            evaluate_one(arch, args)
    text = table(args)
    print(text)


if __name__ == "__main__":
    cli.run(main)
