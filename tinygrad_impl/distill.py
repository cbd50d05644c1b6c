"""Distil a trained teacher checkpoint into a student: knowledge distillation across architectures, or progressive
step distillation into a few-step student, optionally with an adversarial term.

    python -m tinygrad_impl.distill --teacher runs/shapes-tokenfree-xs/ckpt.safetensors --preset snapgen_unet-xs \
        --out runs/kd-snapgen                                              # --mode kd (SnapGen, DESIGN.md 7)
    python -m tinygrad_impl.distill --mode progressive --teacher runs/shapes-tokenfree-xs/ckpt.safetensors \
        --student-steps 8 --out runs/pd8                                   # 16 DDIM steps of the teacher -> 8
    python -m tinygrad_impl.distill --mode progressive --teacher runs/pd8/ckpt.safetensors --out runs/pd4  # 8 -> 4 ...
    python -m tinygrad_impl.distill --mode progressive --teacher runs/pd2/ckpt.safetensors --out runs/pd1 \
        --adv-weight 0.1                                                   # ... 2 -> 1, with a discriminator
    python -m tinygrad_impl.sample --ckpt runs/pd1/ckpt.safetensors        # samples at 1 step (its own count)

--mode kd: the student (any --preset) and the frozen teacher see the same x_t, t, y;
L = L_task + w_out |out_s - out_t|^2 + w_feat sum_l w(t) |P_l(f_s,l) - f_t,l|^2 / mean(f_t,l^2), P_l a learned 1x1
conv from the student's width to the teacher's at tap l ("mid", "out": tinygrad_impl/taps.py), the larger
map average-pooled to the smaller; w(t) = sigma_t^2 (numpy_ref/distill.py kd_weight). Projecting the student's
features to the teacher's (DESIGN.md 7), not the teacher's to the student's, as DESIGN.md 3.6 writes it: a
projection of the teacher's could shrink its target to zero. L_task is train's (the teacher run's loss weight).

--mode progressive: progressive distillation (Salimans & Ho 2022, arXiv 2202.00512), one halving a run: the student
starts as a copy of the teacher and learns in one DDIM step what the teacher does in two (numpy_ref/distill.py).
Chosen over consistency distillation (arXiv 2303.01469) because its target is exact and deterministic (two teacher
steps, no EMA target network, no distance metric such as LPIPS, which this project cannot load), its students are
plain DDIM samplers that numpy_ref.sample already runs, and each round's quality can be checked step count by step
count. The student checkpoint records sample_steps (its count) and spacing "trailing" (its grid), so both sample
CLIs draw it at that count by default.

--adv-weight (1 to 4 step students): a small conv discriminator D (projection-conditioned on the class) on the
student's clipped x0 estimate against the real x0 of the batch, hinge loss (Lim & Ye 2017, as in UFOGen and
adversarial diffusion distillation): L_D = mean relu(1 - D(x0)) + mean relu(1 + D(x0_s)), and the student adds
-adv_weight mean D(x0_s).

Resumable like train (--resume): the checkpoint is train's (model, EMA, AdamW) plus the projections' and the
discriminator's weights and AdamW moments under aux/proj/*, aux/disc/*; every draw of step k comes from
np.random.default_rng([seed, k]). The teacher is unguided; labels are dropped with --label-drop, so guidance works on
the student as on any model.
"""
import argparse
import json
import math
import os
import time

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit

from numpy_ref import cli
from numpy_ref import distill as D
from numpy_ref.cli import CLIError
from numpy_ref.configs import PRESETS, get_config, parse_overrides
from numpy_ref.data import load_dataset
from numpy_ref.sample import load_checked
from numpy_ref.schedule import loss_weight, make_schedule, noisy_sample
from numpy_ref.weights import read_file
from . import weights
from .adamw import adamw_update, new_state, pack_state
from .layers import conv2d, embedding, linear
from .models import get_model
from .taps import LEVELS, collect
from .sample import check_device
from .train import (NonFinite, StopRequest, batch_at, init_state, keep_log_until, load_training_state, lr_at,
                    mean_tail, sample_grid, state_tensors, steady_rate, step_scalars)

MODES = ("kd", "progressive")
# run settings: a resumed run takes these from the checkpoint (an explicit, different flag is an error)
RUN_DEFAULTS = dict(mode="kd", teacher=None, preset=None, set=[], data=None, student_steps=None, w_out=1.0, w_feat=1.0,
                    feat_levels="mid,out", adv_weight=0.0, batch=32, lr=None, warmup=100, weight_decay=0.0, clip=1.0,
                    ema_decay=0.999, label_drop=0.1, seed=0)
# kd trains a student from scratch (train's lr); progressive fine-tunes a copy of the teacher
MODE_LR = dict(kd=1e-3, progressive=2e-4)
MODE_STEPS = dict(kd=2000, progressive=500)
SESSION_DEFAULTS = dict(ckpt_every=250, sample_n=16, guidance=3.0)
MAX_ADV_STEPS = 4            # the adversarial term is for students of 1 to 4 steps
FIRST_TEACHER_STEPS = 16     # an undistilled teacher is read as a 16-step DDIM sampler (16 -> 8 -> 4 -> 2 -> 1)
DISC_WIDTHS = (16, 32, 32)   # the discriminator's conv widths (3x3; strides 1, 2, 2)

# ----------------------------------------------------------------------------
# The progressive-distillation target (numpy_ref/distill.py's formulas on Tensors)
# ----------------------------------------------------------------------------

def progressive_target(teacher_fn, z, t, t_mid, coefs, y, prediction="eps", clip=True):
    """(x~, the student's output target), both (B, C, H, W), of z (B, C, H, W) at t (B,): the teacher's two DDIM
    steps t -> t_mid -> t_next. coefs (B, 6): alpha, sigma at t, t_mid, t_next (numpy_ref.distill.alpha_sigma).
    teacher_fn(x, t, y) -> output. The same formula as numpy_ref.distill.progressive_target."""
    a, s, am, sm, an, sn = (coefs[:, i].reshape(-1, 1, 1, 1) for i in range(6))      # 6 x (B, 1, 1, 1)
    x0 = D.x0_from_output(teacher_fn(z, t, y), z, a, s, prediction)
    x0 = x0.clip(-1.0, 1.0) if clip else x0
    z_mid = D.ddim_step(z, x0, a, s, am, sm)                                          # (B, C, H, W)
    x0_mid = D.x0_from_output(teacher_fn(z_mid, t_mid, y), z_mid, am, sm, prediction)
    x0_mid = x0_mid.clip(-1.0, 1.0) if clip else x0_mid
    z_next = D.ddim_step(z_mid, x0_mid, am, sm, an, sn)
    x_target = D.one_step_x0(z, z_next, a, s, an, sn)
    return x_target, D.output_from_x0(x_target, z, a, s, prediction)


def progressive_batch(step, seed, ds, batch, sched, steps, label_drop, null_class, prediction="eps"):
    """(x0, z, t, t_mid, t_next, coefs, weight, y) of step `step` of a round into a `steps`-step student, drawn from
    default_rng([seed, step]): x0 (B, C, H, W) data, z its x_t at t, a point of the student's grid; t_mid, t_next
    (B,) the teacher's middle step and the student step's end (-1: clean); coefs (B, 6) float32 (progressive_target); weight (B,) progressive_weight; y (B,) or None."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(ds), batch)
    k = rng.integers(0, steps, batch)                                                 # the student step of each image
    t, t_mid, t_next = (g[k] for g in D.progressive_pairs(sched.T, steps))
    x0 = ds.images[idx]                                                               # (B, C, H, W)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    drop = rng.random(batch) < label_drop
    y = None if not ds.num_classes else np.where(drop, null_class, ds.labels[idx])
    a, s = D.alpha_sigma(t, sched, prediction)
    coefs = np.stack([a, s, *D.alpha_sigma(t_mid, sched, prediction), *D.alpha_sigma(t_next, sched, prediction)], 1)
    weight = D.progressive_weight(a, s).astype(np.float32)
    return x0, noisy_sample(x0, t, noise, sched, prediction), t, t_mid, t_next, coefs.astype(np.float32), weight, y


# ----------------------------------------------------------------------------
# Auxiliary nets: feature projections and the discriminator
# ----------------------------------------------------------------------------

def projection_shapes(levels, student_ch, teacher_ch):
    """{name: shape} of the 1x1 convs P_l, student channels -> teacher channels, per tap level"""
    out = {}
    for lvl in levels:
        out[f"proj.{lvl}.weight"] = (teacher_ch[lvl], student_ch[lvl], 1, 1)
        out[f"proj.{lvl}.bias"] = (teacher_ch[lvl],)
    return out


def disc_shapes(in_channels, num_classes):
    """{name: shape} of the discriminator: three 3x3 convs (DISC_WIDTHS), a linear head, and with classes a
    projection embedding (num_classes + 1 rows: the null class too)"""
    shapes, cin = {}, in_channels
    for i, w in enumerate(DISC_WIDTHS):
        shapes[f"disc.conv{i}.weight"], shapes[f"disc.conv{i}.bias"], cin = (w, cin, 3, 3), (w,), w
    shapes["disc.head.weight"], shapes["disc.head.bias"] = (1, cin), (1,)
    if num_classes:
        shapes["disc.embed.weight"] = (num_classes + 1, cin)
    return shapes


def init_aux(shapes, seed):
    """N(0, 1/fan_in) weights, zero biases, a projection starting at the identity-like scale: {name: float32 array}"""
    rng = np.random.default_rng([seed, 7])
    out = {}
    for k, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        out[k] = (np.zeros(shape) if k.endswith(".bias") else rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def discriminator(p, x, y):
    """D(x) logits (B,): x (B, C, H, W) in [-1, 1], y (B,) class ids or None. Three 3x3 convs with leaky ReLU
    (strides 1, 2, 2), global mean, a linear head, plus <embed(y), features> (projection discriminator, Miyato &
    Koyama 2018) when the model has classes."""
    h = x
    for i in range(len(DISC_WIDTHS)):
        h = conv2d(h, p[f"disc.conv{i}.weight"], p[f"disc.conv{i}.bias"], stride=1 if i == 0 else 2,
                   padding=1).leaky_relu(0.2)                                         # (B, w_i, h_i, w_i)
    f = h.mean(axis=(2, 3))                                                           # (B, w)
    out = linear(f, p["disc.head.weight"], p["disc.head.bias"])[:, 0]                 # (B,)
    if "disc.embed.weight" in p and y is not None:
        out = out + (embedding(y, p["disc.embed.weight"]) * f).sum(-1)
    return out


def match_maps(a, b):
    """Average-pool the larger of two (B, C, h, w) maps to the other's size (an integer factor)"""
    if a.shape[2] > b.shape[2]:
        return a.avg_pool2d(a.shape[2] // b.shape[2]), b
    if b.shape[2] > a.shape[2]:
        return a, b.avg_pool2d(b.shape[2] // a.shape[2])
    return a, b


def tap_shapes(cfg, device=None):
    """{level: (C, h, w)} of the feature taps of a cfg model on one image (a lazy forward: nothing runs)"""
    model = get_model(cfg.arch)
    params = {k: Tensor.empty(*s, device=device) for k, s in model.param_shapes(cfg).items()}
    x = Tensor.empty(1, cfg.in_channels, cfg.img_size, cfg.img_size, device=device)
    with collect() as feats:
        model.forward(params, x, Tensor.zeros(1, device=device), None, cfg)
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def aux_tensors(aux):
    """The checkpoint tensors of the auxiliary states: aux/<net>/<part>/<name> for params, m and v"""
    return {f"aux/{net}/{part}/{k}": t for net, st in aux.items() for part in ("params", "m", "v")
            for k, t in st[part].items()}


def load_aux(tensors, net, shapes, path, device=None):
    """The packed state of auxiliary net `net` from checkpoint tensors; ValueError when it is missing or mis-shaped"""
    parts = {}
    for part in ("params", "m", "v"):
        prefix = f"aux/{net}/{part}/"
        got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(got) != set(shapes) or any(tuple(got[k].shape) != tuple(s) for k, s in shapes.items()):
            raise ValueError(f"{path}: its aux/{net}/{part}/* tensors do not fit this run's {net} (written by another "
                             "version?); start a new run in another --out")
        parts[part] = got
    parts["ema"] = parts["params"]
    return pack_state(parts, shapes, device)


# ----------------------------------------------------------------------------
# One distillation step, jitted
# ----------------------------------------------------------------------------

def make_distill_step(state, cfg, teacher, tcfg, mode, aux, levels=(), w_out=1.0, w_feat=0.0, adv_weight=0.0,
                      weight_decay=0.0, clip=1.0):
    """step(x0, z, t, t_mid, coefs, weight, y, lr, decay, bc1, bc2) -> (loss, grad_norm, disc_loss): one AdamW update
    of the student `state` (pack_state), and of aux["proj"] (the projections P_l) and aux["disc"] when present.
    kd: z (B, C, H, W) x_t, x0 the task target (what train's target is), weight (B, 2) = (task weight, w(t)); t_mid,
    coefs None. progressive: x0 (B, C, H, W) data (the discriminator's real images), t_mid (B,), coefs (B, 6),
    weight (B,) progressive_weight. Scalars come in as (1,) Tensors so one JIT serves all steps."""
    model, tmodel = get_model(cfg.arch), get_model(tcfg.arch)
    params = [state["params"][k] for k in model.param_shapes(cfg)]
    proj, disc = aux.get("proj"), aux.get("disc")
    proj_params = list(proj["params"].values()) if proj else []
    disc_params = list(disc["params"].values()) if disc else []
    teacher_fn = lambda x, t, y: tmodel.forward(teacher, x, t, y, tcfg)  # noqa: E731

    @TinyJit
    def step(x0, z, t, t_mid, coefs, weight, y, lr, decay, bc1, bc2):
        with collect() as fs:
            out = model.forward(state["params"], z, t, y, cfg)                         # (B, C, H, W)
        d_loss = Tensor.zeros(1, device=z.device).sum()                               # () (no discriminator)
        if mode == "kd":
            with collect() as ft:
                out_t = teacher_fn(z, t, y).detach()                                   # (B, C, H, W)
            task = ((out - x0) ** 2).mean(axis=(1, 2, 3))                               # (B,)
            loss = (task * weight[:, 0]).mean() + w_out * ((out - out_t) ** 2).mean()
            for lvl in levels:
                f = conv2d(fs[lvl], proj["params"][f"proj.{lvl}.weight"], proj["params"][f"proj.{lvl}.bias"])
                f, g = match_maps(f, ft[lvl].detach())                                   # (B, C_t, h, w) each
                loss = loss + w_feat * (weight[:, 1] * D.feature_loss(f, g)).mean()
        else:
            x_target, _ = progressive_target(teacher_fn, z, t, t_mid, coefs, y, cfg.prediction)
            a, s = coefs[:, 0].reshape(-1, 1, 1, 1), coefs[:, 1].reshape(-1, 1, 1, 1)
            x_s = D.x0_from_output(out, z, a, s, cfg.prediction)                      # (B, C, H, W)
            loss = (weight * ((x_s - x_target.detach()) ** 2).mean(axis=(1, 2, 3))).mean()
            if disc:
                fake = x_s.clip(-1.0, 1.0)
                loss = loss - adv_weight * discriminator(disc["params"], fake, y).mean()
                d_loss = ((1.0 - discriminator(disc["params"], x0, y)).relu().mean() +
                          (1.0 + discriminator(disc["params"], fake.detach(), y)).relu().mean())          # ()
        grads = loss.gradient(*params, *proj_params)
        grad_norm = adamw_update(state, grads[:len(params)], lr, decay, bc1, bc2, weight_decay, clip)
        if proj:
            adamw_update(proj, grads[len(params):], lr, decay, bc1, bc2, weight_decay, clip)
        if disc:
            adamw_update(disc, d_loss.gradient(*disc_params), lr, decay, bc1, bc2, weight_decay, clip)
        Tensor.realize(loss, grad_norm, d_loss, *state["flat"].values(),
                       *[v for st in aux.values() for v in st["flat"].values()])
        return loss, grad_norm, d_loss

    return step


# ----------------------------------------------------------------------------
# The teacher, the student, the data
# ----------------------------------------------------------------------------

def load_teacher(path):
    """(params {name: array}, cfg, meta) of a teacher checkpoint, its EMA weights when it has them. One-line CLIError
    for a missing, unreadable or diverged file, or a text-conditioned teacher."""
    if not path:
        raise CLIError("--teacher is required: the ckpt.safetensors of a trained run (python -m tinygrad_impl.train)")
    if not os.path.isfile(path):
        raise CLIError(f"--teacher {path}: no such file; give the ckpt.safetensors of a trained run "
                       "(python -m tinygrad_impl.train writes runs/<data>-<preset>/ckpt.safetensors)")
    try:
        params, cfg, meta, _ = load_checked(path)
    except ValueError as e:
        raise CLIError(f"--teacher: {e}") from None
    if cfg.text_vocab:
        raise CLIError(f"--teacher {path} is text-conditioned; distill takes class-conditional or unconditional "
                       "teachers")
    return params, cfg, meta


def teacher_steps(tmeta):
    """The DDIM step count the teacher stands for: a distilled student's own, else FIRST_TEACHER_STEPS"""
    return int(tmeta.get("sample_steps", FIRST_TEACHER_STEPS))


def check_shapes(ds, tcfg, teacher_path, what):
    """CLIError unless the images of ds (C, H, W) are the teacher's (cfg.in_channels, img_size, img_size)"""
    if tuple(ds.shape) != (tcfg.in_channels, tcfg.img_size, tcfg.img_size):
        C, H, W = ds.shape
        raise CLIError(f"{what} gives {C}x{H}x{W} images but the teacher {teacher_path} takes "
                       f"{tcfg.in_channels}x{tcfg.img_size}x{tcfg.img_size}: teacher and student must see the same "
                       f"images; drop --size, or give --size {tcfg.img_size}")


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.distill", description=__doc__.split("\n\n")[0])
    d = {**RUN_DEFAULTS, **SESSION_DEFAULTS}
    h = lambda text, k: f"{text} (default {d[k]})"  # noqa: E731
    count, zero_or_more, weight = cli.positive(int), cli.non_negative(int), cli.non_negative(float)
    p.add_argument("--teacher", help="the teacher's checkpoint (a train or distill ckpt.safetensors; its EMA weights); "
                   "with --resume: the run's own by default")
    p.add_argument("--mode", choices=MODES, help=h("kd: knowledge distillation into a student of --preset; "
                   "progressive: halve the teacher's DDIM steps", "mode"))
    p.add_argument("--preset", choices=sorted(PRESETS), help="kd: the student's preset (required); progressive: the "
                   "student is the teacher's architecture, started from its weights")
    p.add_argument("--set", nargs="+", metavar="FIELD=VALUE", help="kd: change fields of the student's preset")
    p.add_argument("--data", help="the dataset (default: the teacher's)")
    p.add_argument("--size", type=count, default=None, help="image size (default and only choice: the teacher's)")
    p.add_argument("--data-root", default="data", help="where real datasets are looked for (default data)")
    p.add_argument("--student-steps", type=count, help="progressive: the student's DDIM steps (default: half the "
                   f"teacher's, which is a distilled student's own count or {FIRST_TEACHER_STEPS})")
    p.add_argument("--w-out", type=weight, help=h("kd: weight a of the output distillation |out_s - out_t|^2", "w_out"))
    p.add_argument("--w-feat", type=weight, help=h("kd: weight b of the feature distillation (0: none)", "w_feat"))
    p.add_argument("--feat-levels", help=h(f"kd: the taps to distil, comma-separated from {', '.join(LEVELS)}",
                                           "feat_levels"))
    p.add_argument("--adv-weight", type=weight, help=h(f"progressive, students of 1..{MAX_ADV_STEPS} steps: weight of "
                   "the adversarial (hinge) term; 0: none", "adv_weight"))
    p.add_argument("--steps", type=count, help="train until this step count (default 2000 for kd, 500 a progressive "
                   "round; with --resume: above the checkpoint's)")
    p.add_argument("--batch", type=count, help=h("batch size", "batch"))
    p.add_argument("--lr", type=cli.positive(float), help="AdamW learning rate (default 1e-3 for kd, 2e-4 for "
                   "progressive: a fine-tune of the teacher)")
    p.add_argument("--warmup", type=zero_or_more, help=h("linear warm-up steps", "warmup"))
    p.add_argument("--weight-decay", type=cli.non_negative(float), help=h("AdamW weight decay", "weight_decay"))
    p.add_argument("--clip", type=cli.positive(float), help=h("global gradient-norm clip (each net its own)", "clip"))
    p.add_argument("--ema-decay", type=cli.in_range(float, 0, 1), help=h("the student's EMA decay", "ema_decay"))
    p.add_argument("--label-drop", type=cli.in_range(float, 0, 1), help=h("fraction of labels replaced by the null "
                   "class (CFG)", "label_drop"))
    p.add_argument("--seed", type=zero_or_more, help=h("seed of the init and of every batch", "seed"))
    p.add_argument("--ckpt-every", type=zero_or_more, help=h("write the checkpoint every K steps (0: at the end "
                   "only)", "ckpt_every"))
    p.add_argument("--sample-n", type=zero_or_more, help=h("images in the final sample grid (0: none)", "sample_n"))
    p.add_argument("--guidance", type=cli.non_negative(float), help=h("CFG weight of the sample grid", "guidance"))
    p.add_argument("--out", required=True, help="output folder: ckpt.safetensors, log.jsonl, samples_<step>.png")
    p.add_argument("--resume", action="store_true", help="continue <out>/ckpt.safetensors")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL")
    return p


def settle_args(args):
    """Fill defaults; with --resume take the run settings from the checkpoint (a different explicit flag is an
    error). Returns (args, the checkpoint to resume or None). Checks the flags against each other first."""
    given = {k for k in RUN_DEFAULTS if getattr(args, k) is not None}
    for k, v in SESSION_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.device = check_device(args.device)
    ckpt = os.path.join(args.out, "ckpt.safetensors")
    saved = 0
    if args.resume:
        if not os.path.exists(ckpt):
            raise CLIError(f"--resume: no checkpoint at {ckpt}; start without --resume, or give the run's --out")
        meta = read_file(ckpt)[2]
        run = meta.get("run")
        if not isinstance(run, dict) or "mode" not in run:
            raise CLIError(f"--resume: {ckpt} was not written by tinygrad_impl.distill (no distillation settings); "
                           "resume it with tinygrad_impl.train, or choose another --out")
        for k in RUN_DEFAULTS:
            if k == "teacher" and k in given:   # a teacher file may move: distill checks its config instead
                continue
            if k in given and k in run and getattr(args, k) != run[k]:
                raise CLIError(f"--{k.replace('_', '-')} {getattr(args, k)} differs from the checkpoint's {run[k]}: "
                               "a resumed run keeps its settings (drop the flag, or start a new run in another --out)")
            setattr(args, k, run.get(k, RUN_DEFAULTS[k]))
        saved = int(meta.get("step", 0))
    else:
        for k, v in RUN_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if os.path.exists(ckpt):
            raise CLIError(f"{ckpt} exists: add --resume to continue it, or choose another --out")
    if args.lr is None:
        args.lr = MODE_LR[args.mode]
    if args.steps is None:
        args.steps = MODE_STEPS[args.mode] if not args.resume else saved + MODE_STEPS[args.mode]
    if args.resume and args.steps <= saved:
        raise CLIError(f"--steps {args.steps} is not above the step of {ckpt}, {saved}: give --steps above {saved}")
    levels = [lvl for lvl in args.feat_levels.split(",") if lvl]
    if any(lvl not in LEVELS for lvl in levels):
        raise CLIError(f"--feat-levels {args.feat_levels}: choose among {', '.join(LEVELS)} (comma-separated)")
    if args.mode == "kd":
        if not args.preset:
            raise CLIError("--mode kd needs --preset: the student's architecture, e.g. snapgen_unet-xs")
        if args.adv_weight:
            raise CLIError(f"--adv-weight is for few-step students (--mode progressive, 1..{MAX_ADV_STEPS} steps); "
                           "drop it for --mode kd")
    elif args.set:
        raise CLIError("--set: a progressive student is a copy of the teacher (its architecture); drop --set")
    parse_overrides(args.set)
    cli.writable_folder(args.out)
    return args, (ckpt if args.resume else None)


def distill(args, callback=None):
    """Run (or resume) a distillation as set by the parsed CLI args; returns a summary dict. callback(step, loss)
    runs after every step (after its checkpoint, if any)."""
    from tqdm import tqdm
    args, resume_from = settle_args(args)
    device = args.device
    tparams, tcfg, tmeta = load_teacher(args.teacher)
    if args.size is not None and args.size != tcfg.img_size:
        raise CLIError(f"--size {args.size}: the teacher {args.teacher} takes {tcfg.img_size}x{tcfg.img_size} images; "
                       f"teacher and student must see the same images (drop --size)")
    data = args.data or tmeta.get("data")
    if not data:
        raise CLIError(f"--teacher {args.teacher} names no dataset in its metadata; give --data")
    ds = load_dataset(data, "train", root=args.data_root, size=tcfg.img_size)
    check_shapes(ds, tcfg, args.teacher, f"--data {data}")
    if ds.num_classes != tcfg.num_classes:
        raise CLIError(f"--data {data} has {ds.num_classes} classes but the teacher {args.teacher} has "
                       f"{tcfg.num_classes}; distil on the teacher's dataset")
    trun = tmeta.get("run", {})
    sched = make_schedule(tmeta.get("schedule", "linear"), int(tmeta.get("T", 1000)))
    progressive = args.mode == "progressive"
    steps_n = None
    if progressive:
        if args.preset and PRESETS[args.preset].arch != tcfg.arch:
            raise CLIError(f"--preset {args.preset}: a progressive student starts from the teacher's weights, so it is "
                           f"a {tcfg.arch}; drop --preset (use --mode kd for another architecture)")
        have = teacher_steps(tmeta)
        if have < 2:
            raise CLIError(f"--teacher {args.teacher} is a 1-step student already: there are no steps left to halve")
        steps_n = args.student_steps or have // 2
        if "sample_steps" in tmeta and steps_n * 2 != have:
            raise CLIError(f"--student-steps {steps_n}: the teacher is a {have}-step student, so one round makes a "
                           f"{have // 2}-step one (give --student-steps {have // 2}, or drop it)")
        if args.adv_weight and steps_n > MAX_ADV_STEPS:
            raise CLIError(f"--adv-weight is for students of 1..{MAX_ADV_STEPS} steps; this one has {steps_n}: "
                           "drop it, or distil further first")
        args.student_steps = steps_n
    levels = [lvl for lvl in args.feat_levels.split(",") if lvl] if not progressive and args.w_feat else []

    teacher = weights.to_tensors(tparams, device)
    if resume_from:
        state, cfg, meta = load_training_state(resume_from, device)
        start, saved_loss = int(meta["step"]), meta.get("loss")
        if meta.get("teacher_config") != tcfg.to_json():
            raise CLIError(f"--teacher {args.teacher} is another model than the one {resume_from} was distilled from "
                           f"({meta.get('teacher')}); give that teacher, or start a new run in another --out")
        if (cfg.img_size, cfg.in_channels) != (tcfg.img_size, tcfg.in_channels):
            raise CLIError(f"{resume_from}: the student takes {cfg.img_size}x{cfg.img_size}x{cfg.in_channels} images, the "
                           f"teacher {tcfg.img_size}x{tcfg.img_size}x{tcfg.in_channels}")
    elif progressive:
        cfg, start, saved_loss = tcfg, 0, None
        state = new_state(tparams, get_model(cfg.arch).param_shapes(cfg), device)
    else:
        cfg = get_config(args.preset, img_size=tcfg.img_size, in_channels=tcfg.in_channels,
                         num_classes=tcfg.num_classes, prediction=tcfg.prediction, **parse_overrides(args.set))
        state, start, saved_loss = init_state(cfg, args.seed, device), 0, None

    aux_shapes = {}
    if levels:
        sf, tf = tap_shapes(cfg, device), tap_shapes(tcfg, device)
        for lvl in levels:
            (_, hs, _), (_, ht, _) = sf[lvl], tf[lvl]
            if max(hs, ht) % min(hs, ht):
                raise CLIError(f"--feat-levels {lvl}: the student's map is {hs}x{hs}, the teacher's {ht}x{ht}, not an "
                               f"integer factor apart; drop {lvl} from --feat-levels")
        aux_shapes["proj"] = projection_shapes(levels, {k: v[0] for k, v in sf.items()}, {k: v[0] for k, v in tf.items()})
    if args.adv_weight:
        aux_shapes["disc"] = disc_shapes(cfg.in_channels, cfg.num_classes)
    if resume_from:
        tensors = read_file(resume_from)[0]
        aux = {net: load_aux(tensors, net, shapes, resume_from, device) for net, shapes in aux_shapes.items()}
    else:
        aux = {net: new_state(init_aux(shapes, args.seed), shapes, device) for net, shapes in aux_shapes.items()}

    run = {k: getattr(args, k) for k in RUN_DEFAULTS}
    ckpt, log_path = os.path.join(args.out, "ckpt.safetensors"), os.path.join(args.out, "log.jsonl")
    keep_log_until(log_path, start)
    loss_kind = trun.get("loss_weight", "none")
    tsampling = trun.get("timestep_sampling", "uniform")
    student_sched = make_schedule(sched.kind, sched.T, spacing="trailing") if progressive else sched
    n_s = sum(int(np.prod(v.shape)) for v in state["params"].values())
    n_t = sum(int(np.prod(v.shape)) for v in tparams.values())
    what = (f"progressive: {2 * steps_n} teacher steps -> {steps_n}" if progressive else
            f"kd: w_out {args.w_out}, w_feat {args.w_feat} at {','.join(levels) or 'no taps'}")
    print(f"teacher {tcfg.arch} ({n_t / 1e6:.2f}M) -> student {cfg.arch} ({n_s / 1e6:.2f}M), {what}"
          f"{f', adversarial {args.adv_weight}' if args.adv_weight else ''}; {ds.name} {ds.shape}, batch {args.batch}, "
          f"steps {start}->{args.steps}, device {device or Device.DEFAULT}, out {args.out}", flush=True)

    def meta_at(step):
        loss = mean_tail(losses) if losses else saved_loss
        extra = dict(sample_steps=steps_n, spacing="trailing") if progressive else {}
        return dict(step=step, data=data, schedule=sched.kind, T=sched.T, seed=args.seed, batch=args.batch,
                    preset=args.preset or tmeta.get("preset"), class_names=list(ds.class_names), loss=loss, run=run,
                    teacher=args.teacher, teacher_config=tcfg.to_json(), mode=args.mode, **extra)

    def save(step):
        extra = {**state_tensors(state), **aux_tensors(aux)}
        return weights.save_weights(ckpt, state["params"], cfg, meta_at(step), ema=state["ema"], extra=extra)

    step_fn = make_distill_step(state, cfg, teacher, tcfg, args.mode, aux, levels, args.w_out, args.w_feat,
                                args.adv_weight, args.weight_decay, args.clip)
    put = lambda a: None if a is None else Tensor(np.asarray(a), device=device)  # noqa: E731
    stop = StopRequest()
    stop.install()
    losses, step_times, t0, step = [], [], time.perf_counter(), start
    bar = tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        with open(log_path, "a", buffering=1) as log:
            while step < args.steps and not stop.requested:
                t_step = time.perf_counter()
                if progressive:
                    x0, z, t, t_mid, _, coefs, weight, y = progressive_batch(step, args.seed, ds, args.batch, sched,
                                                                          steps_n, args.label_drop, cfg.null_class,
                                                                          cfg.prediction)
                    t_mid = t_mid.astype(np.float32)
                else:
                    z, t, x0, y = batch_at(step, args.seed, ds, args.batch, sched, args.label_drop, cfg.null_class,
                                           cfg.prediction, tsampling)               # x0 here: the task target
                    a, s = D.alpha_sigma(t, sched, cfg.prediction)
                    weight = np.stack([loss_weight(t, sched, cfg.prediction, loss_kind), D.kd_weight(a, s)], 1)
                    t_mid = coefs = None
                lr = lr_at(step, args.lr, args.warmup)
                with Context(TRAINING=1):
                    loss, gnorm, dloss = step_fn(put(x0), put(z), put(t.astype(np.float32)), put(t_mid), put(coefs),
                                                 put(weight.astype(np.float32)),
                                                 None if y is None else put(y.astype(np.int32)),
                                                 *step_scalars(step, lr, args.ema_decay, device))
                loss, gnorm, dloss = float(loss.item()), float(gnorm.item()), float(dloss.item())
                step += 1
                if not (math.isfinite(loss) and math.isfinite(gnorm) and math.isfinite(dloss)):
                    kept = f"{ckpt} is kept as it was" if os.path.exists(ckpt) else "no checkpoint was written"
                    raise NonFinite(f"step {step}: the loss is {loss:.4g} (grad norm {gnorm:.4g}, discriminator "
                                    f"{dloss:.4g}, lr {lr:.3g}): the distillation diverged; stopped without saving it, "
                                    f"{kept}. Lower --lr (or raise --warmup, or lower --adv-weight)")
                losses.append(loss)
                step_times.append(time.perf_counter() - t_step)
                log.write(json.dumps(dict(step=step, loss=round(loss, 6), grad_norm=round(gnorm, 4), lr=lr,
                                          **(dict(disc_loss=round(dloss, 6)) if args.adv_weight else {}),
                                          time=round(time.perf_counter() - t0, 2))) + "\n")
                bar.update(1)
                bar.set_postfix({"loss": f"{np.mean(losses[-50:]):.4f}", "steps/s": f"{steady_rate(step_times):.2f}"})
                if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
                    save(step)
                if callback is not None:
                    callback(step, loss)
    finally:
        bar.close()
        stop.restore()
    save(step)
    summary = dict(step=step, start=start, loss=mean_tail(losses), steps_per_s=steady_rate(step_times),
                   first_step_s=step_times[0] if step_times else 0.0, train_time=time.perf_counter() - t0, ckpt=ckpt,
                   out=args.out, interrupted=stop.requested, sample_steps=steps_n)
    if stop.requested:
        print(f"{stop.by}: stopped at step {step}; checkpoint {ckpt}. Continue with: python -m tinygrad_impl.distill "
              f"--out {args.out} --resume --steps {args.steps}")
        return summary
    n_steps = steps_n or 25
    if args.sample_n:
        summary["grid"] = sample_grid(state["ema"], cfg, student_sched, os.path.join(args.out, f"samples_{step:06d}.png"),
                                      args.sample_n, n_steps, args.guidance, args.seed, device)
    print(f"done: step {step}, loss {summary['loss']:.4f} (mean of the last {min(len(losses), 50)} steps), "
          f"{summary['steps_per_s']:.2f} steps/s after a first step of {summary['first_step_s']:.0f} s (compiling)\n"
          f"checkpoint {ckpt} ({n_steps} sampling steps{' by default' if progressive else ''})"
          + (f"\nEMA samples {summary['grid']}" if args.sample_n else "") +
          f"\nsample more: python -m tinygrad_impl.sample --ckpt {ckpt} --out grid.png   (or numpy_ref.sample)")
    return summary


def main(argv=None):
    return distill(build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
