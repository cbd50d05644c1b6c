"""Architecture report: parameters, MACs, distinct tinygrad kernels, compile time and memory per preset.

    python -m tinygrad_impl.report                         # every *-xs preset at 32x32x3, 10 classes
    python -m tinygrad_impl.report --presets tokenfree-xs uvit-xs --img-size 32 --batch 8

Each preset is measured in a fresh subprocess with tinygrad's kernel disk cache off, so the kernel
counts and compile times are those of a first run. "distinct kernels" is the number of different
programs tinygrad compiled; "launches" is how many kernels one call ran. A model built from one
reused fixed-size block compiles few distinct kernels for many launches (the seed paper's claim).
The training step measured is the one tinygrad_impl.train runs: its make_train_step (the project's loss with the
run defaults' prediction and loss weighting, AdamW of tinygrad_impl.adamw, gradient clipping, EMA; one TinyJit).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def measure(preset, img_size, channels, num_classes, batch, sets=(), step=True):
    """Measure one preset (with --set overrides `sets`) in this process; returns a dict of numbers. The training step
    is train.py's own (make_train_step: the run defaults' prediction and loss weighting, AdamW of adamw.py, clip, EMA,
    one TinyJit); step=False measures the forward only."""
    from tinygrad import Context, GlobalCounters, Tensor
    from tinygrad.uop.ops import Ops
    from tinygrad.engine import realize

    from numpy_ref.configs import get_config, parse_overrides
    from numpy_ref.models import count_macs
    from numpy_ref.schedule import loss_weight, make_schedule
    from tinygrad_impl.models import get_model
    from tinygrad_impl.train import RUN_DEFAULTS, init_state, lr_at, make_train_step, step_scalars

    run = RUN_DEFAULTS
    cfg = get_config(preset, img_size=img_size, in_channels=channels, num_classes=num_classes,
                     prediction=run["prediction"], **parse_overrides(list(sets)))
    model = get_model(cfg.arch)
    n_params, macs = count_macs(cfg)
    state = init_state(cfg, 0)
    p = state["params"]
    rng = np.random.default_rng(0)
    t = rng.integers(0, run["T"], batch)
    xb = Tensor(rng.uniform(-1, 1, (batch, channels, img_size, img_size)).astype(np.float32))
    tb = Tensor(t.astype(np.float32))
    yb = Tensor(rng.integers(0, num_classes, batch).astype(np.int32)) if num_classes else None
    target = Tensor(rng.standard_normal((batch, channels, img_size, img_size)).astype(np.float32))
    weight = None if run["loss_weight"] == "none" else Tensor(
        loss_weight(t, make_schedule(run["schedule"], run["T"]), cfg.prediction, run["loss_weight"]))
    train_step = make_train_step(state, cfg, run["weight_decay"], run["clip"])
    calls = [0]

    def step():
        """One call of the jitted training step, with the scalars train.py passes at that step."""
        i, calls[0] = calls[0], calls[0] + 1
        with Context(TRAINING=1):
            loss, _ = train_step(xb, tb, target, yb, *step_scalars(i, lr_at(i, run["lr"], run["warmup"]),
                                                                      run["ema_decay"]), weight)
        return loss.item()

    def counted(fn):
        """(distinct programs, launches, seconds) of one call; distinct counts programs run, compiled now or earlier."""
        seen, track_stats = set(), realize.track_stats
        def recording(ctx, call, st, ets):
            seen.update(k.src[0].key for _, k in realize.get_call_kernels(call) if k.src[0].op is Ops.PROGRAM)
            return track_stats(ctx, call, st, ets)
        realize.track_stats, GlobalCounters.kernel_count = recording, 0
        try:
            st = time.perf_counter()
            fn()
            return len(seen), GlobalCounters.kernel_count, time.perf_counter() - st
        finally:
            realize.track_stats = track_stats

    fwd_kernels, fwd_launches, fwd_compile = counted(lambda: model.forward(p, xb, tb, yb, cfg).realize())
    fwd_time = counted(lambda: model.forward(p, xb, tb, yb, cfg).realize())[2]
    if not step:
        return dict(preset=preset, arch=cfg.arch, params=n_params, macs=macs, fwd_kernels=fwd_kernels,
                    fwd_launches=fwd_launches, fwd_compile_s=fwd_compile, fwd_s=fwd_time)

    step_kernels, step_launches, step_compile = counted(step)
    counted(step)                                                         # the JIT captures on its second call
    step_time = min(counted(step)[2] for _ in range(2))
    return dict(preset=preset, arch=cfg.arch, params=n_params, macs=macs,
                fwd_kernels=fwd_kernels, fwd_launches=fwd_launches, fwd_compile_s=fwd_compile, fwd_s=fwd_time,
                step_kernels=step_kernels, step_launches=step_launches, step_compile_s=step_compile, step_s=step_time,
                tinygrad_mb=GlobalCounters.mem_used / 2**20,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def format_table(rows, batch):
    head = ["preset", "params", "MACs/img", "fwd kernels (distinct/launched)", "fwd compile s",
            "train.py step kernels (distinct/launched)", "train.py step compile s", f"train.py step s (B={batch})",
            "tinygrad MB", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["preset"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.1f}M",
            f"{r['fwd_kernels']}/{r['fwd_launches']}", f"{r['fwd_compile_s']:.1f}",
            f"{r['step_kernels']}/{r['step_launches']}", f"{r['step_compile_s']:.1f}", f"{r['step_s']:.2f}",
            f"{r['tinygrad_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    from numpy_ref.configs import PRESETS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=sorted(n for n in PRESETS if n.endswith("-xs")))
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8, help="batch of the forward and of train.py's training step (default 8)")
    ap.add_argument("--device", default=None, help="tinygrad device (CPU, CL, CUDA, METAL); default: DEV or CPU")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="change fields of every preset's ModelConfig")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # internal: measure one preset, print JSON
    ap.add_argument("--forward-only", action="store_true", help=argparse.SUPPRESS)   # internal, with --one
    args = ap.parse_args(argv)
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown presets {unknown}; choose from {', '.join(sorted(PRESETS))}")
    if args.one:
        print(json.dumps(measure(args.presets[0], args.img_size, args.channels, args.num_classes, args.batch, args.set,
                                 step=not args.forward_only)))
        return
    env = dict(os.environ, CACHELEVEL="0", DEV=args.device or os.environ.get("DEV", "CPU"))
    rows = []
    for preset in args.presets:
        print(f"measuring {preset} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "tinygrad_impl.report", "--one", "--presets", preset, "--img-size", str(args.img_size),
               "--channels", str(args.channels), "--num-classes", str(args.num_classes), "--batch", str(args.batch)]
        cmd += ["--set", *args.set] if args.set else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"{preset} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.img_size}x{args.img_size}x{args.channels}, {args.num_classes} classes, batch {args.batch}, "
          f"device {env['DEV']}, {os.cpu_count()} cores; MACs counted by numpy_ref (linear, conv, attention) per image; "
          "train.py step: one jitted training step of tinygrad_impl.train with its run defaults")
    print(format_table(rows, args.batch))
    if len(rows) < len(args.presets):
        sys.exit(1)


if __name__ == "__main__":
    main()
