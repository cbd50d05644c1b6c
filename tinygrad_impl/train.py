"""Train a diffusion model with tinygrad: AdamW with warm-up, grad clipping, EMA, label dropout, one TinyJit step.

    python -m tinygrad_impl.train                          # tokenfree-xs on the built-in shapes, CPU-sized defaults
    python -m tinygrad_impl.train --data fashion-mnist --preset tokenfree-s --steps 20000 --batch 128 --device CUDA
    python -m tinygrad_impl.train --resume                 # continue runs/<name>/ckpt.safetensors

Ctrl-C, SIGTERM (timeout, docker stop, Slurm, systemd) and SIGHUP finish the step, save the checkpoint and exit.
A step whose loss, gradient norm or updated weights are not finite is never saved: the run stops there (the last
checkpoint stays as it was), or with --on-nonfinite skip that step's update is dropped and training goes on.

    python -m tinygrad_impl.train --data captions          # text-to-image: the captioned shapes, --cond text

Writes runs/<data>-<preset>/: ckpt.safetensors (model, EMA, AdamW state, step, config, data name; the vocabulary of a
text model), samples_<step>.png (EMA sample grids, row r = class r, or prompt r of a text model), log.jsonl (one line
per step).

Every random draw of step k (batch indices, t, noise, dropped labels, flips) comes from
np.random.default_rng([seed, k]), so a resumed run repeats the uninterrupted one exactly.
"""
import argparse
import json
import math
import os
import signal
import time

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit

from numpy_ref import cli
from numpy_ref.captions import MAX_LEN
from numpy_ref.cli import CLIError
from numpy_ref.configs import PRESETS, ModelConfig, drop_condition, get_config, parse_overrides
from numpy_ref.data import DATASETS, data_tag, load_dataset
from numpy_ref.sample import default_prompts, grid_cols, save_grid
from numpy_ref.samplers import default_sampler
from numpy_ref.schedule import (LOSS_WEIGHTS, PREDICTIONS, TIMESTEP_SAMPLINGS, draw_timesteps, loss_weight,
                                make_schedule, noisy_sample, training_target)
from numpy_ref.text import encode_batch, vocab_from_json, vocab_to_json
from . import parallel, weights
from .adamw import BETAS, adamw_update, flat_views, new_state, pack_state
from .beam import use_beam
from .models import get_model
from .sample import check_device, sample_images

# run settings: a resumed run takes these from the checkpoint (an explicit, different flag is an error).
# v-prediction and lr 1e-3 rather than DESIGN 4b's eps and 2e-4..3e-4: on the default run, eps gave striped colour
# noise (eps at high t is never precise enough, and x0 = (x - s1 eps) / s0 magnifies its error); min-snr weighting
# and guidance 3 drew the classes best there (docs/experiments.md)
RUN_DEFAULTS = dict(preset="tokenfree-xs", set=[], prediction="v", data="shapes", size=None, batch=32, lr=1e-3, warmup=100,
                    weight_decay=0.0, clip=1.0, ema_decay=0.999, label_drop=0.1, seed=0, schedule="linear", T=1000,
                    loss_weight="min-snr", timestep_sampling="uniform", lr_decay="none", hflip=False, cond=None)
# --cond's default depends on the data: text for data with captions, class (the labels; none: unconditional) else
CAPTIONED = ("captions",)
CONDITIONS = ("text", "class")
# --prediction flow without these flags: rectified flow as SD3 trains it (plain MSE on v, logit-normal t); min-snr
# would give the pure-noise end s = 1, where sampling starts, weight 0
FLOW_DEFAULTS = dict(loss_weight="none", timestep_sampling="logit-normal")
# the value of a run setting for a checkpoint whose run settings do not name it
LEGACY_RUN = dict(loss_weight="none", timestep_sampling="uniform", lr_decay="none", hflip=False, cond="class")
# settings that may change between sessions of one run
SESSION_DEFAULTS = dict(steps=2000, sample_every=500, ckpt_every=250, sample_n=36, sample_steps=25, guidance=3.0,
                        on_nonfinite="stop")
# --on-nonfinite skip gives up after this many refused steps in a row: the run does not recover by itself
MAX_SKIPS_IN_A_ROW = 10
# a step that grows the weights' norm past this factor has diverged even if every number is finite: AdamW moves each
# weight by about lr, so a healthy step changes the norm by well under 1%, and lr 1e6 multiplies it by ~1e7
MAX_NORM_GROWTH = 2.0

# ----------------------------------------------------------------------------
# Schedules of the optimiser
# ----------------------------------------------------------------------------

def lr_at(step, lr, warmup, cosine_steps=None):
    """Linear warm-up to lr over `warmup` steps, then constant (so --steps can grow on --resume); with cosine_steps,
    a cosine decay from lr to 0 at step cosine_steps instead (a fixed budget: train_features)."""
    if cosine_steps is None or step < warmup:
        return lr * min(1.0, (step + 1) / max(1, warmup))
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, cosine_steps - warmup)))


def ema_decay_at(step, decay):
    """EMA warm-up (DESIGN.md 4b): early steps forget the random initial weights fast."""
    return min(decay, (1 + step) / (10 + step))


def step_scalars(step, lr, ema_decay, device=None):
    """(lr, EMA decay, bc1, bc2) of training step `step` as (1,) Tensors: the scalars make_train_step's step takes.
    lr is this step's learning rate (lr_at); bc1, bc2 are Adam's bias corrections 1 - beta^(step + 1)."""
    values = (lr, ema_decay_at(step, ema_decay), 1 - BETAS[0] ** (step + 1), 1 - BETAS[1] ** (step + 1))
    return tuple(Tensor([v], device=device) for v in values)


# ----------------------------------------------------------------------------
# Training state: params, EMA copy, AdamW moments (one flat buffer each, and a view per parameter: adamw.py)
# ----------------------------------------------------------------------------

def init_state(cfg, seed, device=None):
    model = get_model(cfg.arch)
    return new_state(model.init_params(cfg, seed, device), model.param_shapes(cfg), device)


def state_tensors(state):
    """The non-model tensors of a checkpoint: opt/m/<name>, opt/v/<name>."""
    return {f"opt/{which}/{k}": t for which in ("m", "v") for k, t in state[which].items()}


def save_checkpoint(path, state, cfg, meta):
    """Model, EMA and AdamW state in one safetensors file, written atomically."""
    return weights.save_weights(path, state["params"], cfg, meta, ema=state["ema"], extra=state_tensors(state))


def load_training_state(path, device=None):
    """(state, cfg, meta) to resume a run from: params, EMA copy and AdamW moments packed as make_train_step wants
    them (pack_state), the config, and the metadata (step, data, seed, batch, run settings).
    ValueError naming what is missing for a file that is no training checkpoint."""
    from numpy_ref.weights import check_params, read_file
    tensors, cfg, meta = read_file(path)
    params = {k: v for k, v in tensors.items() if "/" not in k}
    check_params(params, cfg, path)
    parts = {"ema": "ema/", "m": "opt/m/", "v": "opt/v/"}
    state = {"params": params}
    for key, prefix in parts.items():
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not part:
            raise ValueError(f"{path} has no {prefix}* tensors: it holds weights but no training state, so it "
                             "cannot be resumed (sample it, or start a new run in another --out)")
        check_params(part, cfg, f"{path} ({prefix}*)")
        state[key] = part
    for key in ("step", "data", "seed", "batch"):
        if key not in meta:
            raise ValueError(f"{path}: the metadata has no {key!r}; it was not written by tinygrad_impl.train")
    return pack_state(state, get_model(cfg.arch).param_shapes(cfg), device), cfg, meta


# ----------------------------------------------------------------------------
# One training step, jitted
# ----------------------------------------------------------------------------

def make_train_step(state, cfg, weight_decay=0.0, clip=1.0, undo=False):
    """step(xt, t, target, y, lr, decay, bc1, bc2, weight=None) -> (loss, grad_norm): one AdamW update of state in place.
    state comes from pack_state (one flat buffer a part). target is what the model should output (the noise, or v:
    see training_target); weight (B,) scales each sample's squared error (see loss_weight; None: plain mean).
    Scalars that change (lr, EMA decay, Adam bias corrections) come in as (1,) Tensors so one JIT serves all steps.

    step.finite, a (1,) Tensor the step overwrites, is 1 when the step's loss, gradient norm and updated parameters
    are all finite and the update grew the weights' norm by less than MAX_NORM_GROWTH, else 0 (the EMA and Adam
    moments follow from those); step.norms (2,) holds the weights' norm before and after the update.
    With undo=True the step first copies the four state buffers, and step.undo() puts them back: the update of a
    refused step is dropped (--on-nonfinite skip). Without it, a refused step's state must not be used again."""
    model = get_model(cfg.arch)
    # the canonical parameter order, not the dict's: a file loads in sorted order, and the order of the
    # grad-norm sum changes its last bits (so --resume would drift from the straight run once clipping acts)
    params = [state["params"][k] for k in model.param_shapes(cfg)]
    flat = state["flat"]
    finite = Tensor.ones(1, device=flat["params"].device).contiguous().realize()
    norms = Tensor.zeros(2, device=flat["params"].device).contiguous().realize()
    backup = {k: v.clone().realize() for k, v in flat.items()} if undo else {}

    @TinyJit
    def step(xt, t, target, y, lr, decay, bc1, bc2, weight=None):
        if undo:
            Tensor.realize(*[backup[k].assign(flat[k]) for k in backup])
        before = flat["params"].square().sum().sqrt().realize()                       # the norm before the update
        out = model.forward(state["params"], xt, t, y, cfg)                          # (B, C, H, W)
        err = (out - target).square()
        loss = (err if weight is None else err * weight.reshape(-1, 1, 1, 1)).mean()
        grad_norm = adamw_update(state, loss.gradient(*params), lr, decay, bc1, bc2, weight_decay, clip)
        Tensor.realize(loss, grad_norm, *flat.values())
        # |x| < inf is False for NaN and for +-inf (x * 0 == 0 would be folded to True by tinygrad's rewrites)
        after = flat["params"].square().sum().sqrt()
        ok = (loss.abs() < math.inf) & (grad_norm.abs() < math.inf) & (flat["params"].abs() < math.inf).all() & \
            (after < MAX_NORM_GROWTH * before)
        Tensor.realize(finite.assign(ok.float().reshape(1)), norms.assign(before.reshape(1).cat(after.reshape(1))))
        return loss, grad_norm

    def restore():
        if not undo:
            raise RuntimeError("make_train_step(undo=False) keeps no copy of the state to restore")
        Tensor.realize(*[flat[k].assign(backup[k]) for k in backup])

    step.finite, step.norms, step.undo = finite, norms, restore
    return step


def caption_ids(ds, cfg):
    """The captions of ds encoded once: token ids (N, cfg.text_len) int64, with ds's vocabulary."""
    return encode_batch(ds.captions, ds.vocab, cfg.text_len)


def batch_at(step, seed, ds, batch, sched, label_drop, null_class, prediction="eps", timestep_sampling="uniform",
             hflip=False, text_ids=None):
    """(xt, t, target, y) of training step `step`, drawn from default_rng([seed, step]); y None if unconditional.
    xt (B, C, H, W) is q_sample's x_t (eps, v) or the flow's (1 - s) x0 + s eps; target the noise (prediction "eps"),
    v, or the flow's eps - x0. timestep_sampling: draw_timesteps' kind; hflip: each image mirrored left-right with
    probability 1/2 (drawn last, so a run without it draws what it drew before).
    null_class: the class id of a dropped label, or the ModelConfig (drop_condition). text_ids (N, L): the encoded
    captions of ds (caption_ids), for a text model (null_class then its config): y is then (B, L) token ids, a dropped
    row the empty prompt (all PAD); the draws are those of a class model."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(ds), batch)
    t = draw_timesteps(rng, batch, sched.T, timestep_sampling)
    x0 = ds.images[idx]                                                              # (B, C, H, W)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    drop = rng.random(batch) < label_drop
    if hflip:
        x0 = np.where((rng.random(batch) < 0.5)[:, None, None, None], x0[..., ::-1], x0)
    if text_ids is not None:
        y = drop_condition(null_class, text_ids[idx], drop)
    elif isinstance(null_class, ModelConfig):
        y = drop_condition(null_class, ds.labels[idx], drop) if null_class.num_classes else None
    else:
        y = None if not ds.num_classes else np.where(drop, null_class, ds.labels[idx])
    return noisy_sample(x0, t, noise, sched, prediction), t, training_target(x0, t, noise, sched, prediction), y


# ----------------------------------------------------------------------------
# Sample grids during training
# ----------------------------------------------------------------------------

def ema_for_sampling(state, cfg, devices=None):
    """The EMA weights as {name: Tensor} on one device: with --devices, a copy of them on the first device"""
    if not devices:
        return state["ema"]
    return flat_views(Tensor(state["flat"]["ema"].numpy(), device=devices[0]), get_model(cfg.arch).param_shapes(cfg))


def grid_prompts(n, vocab, cfg):
    """(prompts, token ids (P, text_len)) of a text model's training grids: one fixed prompt a row (default_prompts)."""
    prompts = default_prompts(math.ceil(n / grid_cols(n)))
    return prompts, encode_batch(prompts, vocab, cfg.text_len)


def sample_grid(params, cfg, sched, path, n=36, steps=25, guidance=2.0, seed=0, device=None, prompt_ids=None):
    """Samples of `params` (the EMA copy) as a PNG grid, by the default sampler of cfg.prediction (ddim, or euler
    for a flow model: one model call a step either way); row r shows class r % num_classes, or for a text model
    prompt r of prompt_ids (P, L) (grid_prompts)."""
    images = sample_images(params, cfg, sched, n, default_sampler(cfg.prediction), steps, 0.0, seed, guidance,
                           device=device, prompt_ids=prompt_ids)
    return save_grid(images, path, cols=grid_cols(n), upscale=2)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_impl.train", description=__doc__.split("\n\n")[0])
    d = {**RUN_DEFAULTS, **SESSION_DEFAULTS}
    h = lambda text, k: f"{text} (default {d[k]})"   # run settings default to None so --resume can tell what was given
    count, zero_or_more = cli.positive(int), cli.non_negative(int)     # every number is checked before any work
    p.add_argument("--preset", choices=sorted(PRESETS), help=h("model preset", "preset"))
    p.add_argument("--set", nargs="+", metavar="FIELD=VALUE", help="change fields of the preset's ModelConfig, "
                   "e.g. --set width=112 depth=9 (matched-size comparisons)")
    p.add_argument("--prediction", choices=PREDICTIONS, help=h("what the model learns to output: the noise eps, "
                   "v = sqrt(abar) eps - sqrt(1 - abar) x0, or flow: rectified flow's velocity eps - x0 on "
                   "x_t = (1 - s) x0 + s eps, s = (t + 1) / T", "prediction"))
    p.add_argument("--data", help=h(f"dataset: {', '.join(DATASETS)}", "data"))
    p.add_argument("--size", type=count, help="image size of shapes / folder: data (default 32)")
    p.add_argument("--data-root", default="data", help="where real datasets are looked for and downloaded (default data)")
    p.add_argument("--download", action="store_true", help="download a missing dataset (checks its MD5)")
    p.add_argument("--steps", type=count, help=h("train until this step count (total, also with --resume: above the "
                   "checkpoint's step)", "steps"))
    p.add_argument("--minutes", type=cli.positive(float), default=None, help="also stop after this many wall-clock "
                   "minutes of this session (compile included): an equal-time budget; the checkpoint and the final "
                   "grid are written as at --steps")
    p.add_argument("--batch", type=count, help=h("batch size", "batch"))
    p.add_argument("--lr", type=cli.positive(float), help=h("AdamW learning rate after warm-up, > 0", "lr"))
    p.add_argument("--warmup", type=zero_or_more, help=h("linear warm-up steps", "warmup"))
    p.add_argument("--lr-decay", choices=("none", "cosine"), help=h("after warm-up: none (constant lr), or cosine "
                   "(down to 0 at --steps; a resumed run given more --steps stretches the rest)", "lr_decay"))
    p.add_argument("--weight-decay", type=cli.non_negative(float), help=h("AdamW decoupled weight decay, >= 0",
                   "weight_decay"))
    p.add_argument("--clip", type=cli.positive(float), help=h("global gradient-norm clip, > 0", "clip"))
    p.add_argument("--ema-decay", type=cli.in_range(float, 0, 1), help=h("EMA decay in [0, 1] (with warm-up)",
                   "ema_decay"))
    p.add_argument("--cond", choices=CONDITIONS, help="what the model is conditioned on: text (the captions' "
                   "prompts; data with captions: captions) or class (the labels; data without any: unconditional) "
                   f"(default text for {', '.join(CAPTIONED)}, class otherwise)")
    p.add_argument("--label-drop", type=cli.in_range(float, 0, 1), help=h("fraction of labels replaced by the null "
                   "class, or of prompts by the empty one (CFG), in [0, 1]", "label_drop"))
    p.add_argument("--seed", type=zero_or_more, help=h("seed of the init and of every batch, >= 0", "seed"))
    p.add_argument("--schedule", choices=("linear", "cosine"), help=h("noise schedule", "schedule"))
    flow_h = lambda text, k: f"{text} (default {d[k]}; {FLOW_DEFAULTS[k]} with --prediction flow)"  # noqa: E731
    p.add_argument("--loss-weight", choices=LOSS_WEIGHTS, help=flow_h("per-timestep weight of the MSE: none, or "
                   "min-snr (Min-SNR-5, arXiv 2303.09556)", "loss_weight"))
    p.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLINGS, help=flow_h("how training draws t: uniform, or "
                   "logit-normal (SD3: s = sigmoid(n), n ~ N(0, 1); --prediction flow only)", "timestep_sampling"))
    p.add_argument("--hflip", action="store_true", default=None, help="mirror each training image left-right with "
                   "probability 1/2, seeded like the noise; not for data whose mirror image is another class "
                   "(default off)")
    p.add_argument("--T", type=cli.in_range(int, 2), help=h("diffusion timesteps, >= 2", "T"))
    p.add_argument("--sample-every", type=zero_or_more, help=h("write an EMA sample grid every K steps (0: only at "
                   "the end)", "sample_every"))
    p.add_argument("--ckpt-every", type=zero_or_more, help=h("write the checkpoint every K steps (0: only at the "
                   "end; always on Ctrl-C, SIGTERM, SIGHUP)", "ckpt_every"))
    p.add_argument("--sample-n", type=count, help=h("images in a training sample grid", "sample_n"))
    p.add_argument("--sample-steps", type=count, help=h("sampler steps (ddim; euler for flow) of a training sample "
                   "grid, at most --T", "sample_steps"))
    p.add_argument("--guidance", type=cli.non_negative(float), help=h("CFG weight of the training sample grids, >= 0 "
                   "(1: the conditional model alone, 0: the unconditional one)", "guidance"))
    p.add_argument("--on-nonfinite", choices=("stop", "skip"), help=h("a step whose loss, gradient norm or updated "
                   "weights are NaN or inf: stop (nothing of it is saved) or skip (drop its update, go on; counted in "
                   f"the log; {MAX_SKIPS_IN_A_ROW} in a row stop the run)", "on_nonfinite"))
    p.add_argument("--out", help="output folder (default runs/<data>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.safetensors")
    p.add_argument("--device", default=None, help="tinygrad device, e.g. CPU, CL, CUDA, METAL (default: DEV or tinygrad's pick)")
    p.add_argument("--devices", default=None, help="data parallel over these tinygrad devices of one backend, e.g. "
                   "CUDA:0,CUDA:1 (or CPU:0,CPU:1): the batch is split over them, weights and optimizer state are "
                   "replicated; the checkpoint is the same file as a one-device run's")
    p.add_argument("--beam", type=zero_or_more, default=None, help="BEAM-search the kernels with this width (default: "
                   "the BEAM environment variable, else none); cached on disk, so only the first run pays (docs/speed.md)")
    return p


def settle_args(args):
    """Fill defaults; with --resume take the run settings from the checkpoint. Returns (args, ckpt path or None).
    Checks what argparse cannot (flags against each other and the checkpoint, the device, --out writable) before
    anything is read or compiled: CLIError or ValueError naming the flag."""
    given = {k for k in RUN_DEFAULTS if getattr(args, k) is not None}
    steps_given = args.steps is not None
    for k, v in SESSION_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = os.path.join("runs", f"{data_tag(args.data or RUN_DEFAULTS['data'])}-{args.preset or RUN_DEFAULTS['preset']}")
    args.device = check_device(args.device)
    if args.devices:
        if args.device:
            raise CLIError("give --device or --devices, not both")
        args.devices = parallel.parse_devices(args.devices)
    ckpt = os.path.join(args.out, "ckpt.safetensors")
    if args.resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; start without --resume, or give the run's --out")
        from numpy_ref.weights import read_file
        _, _, meta = read_file(ckpt)
        run = meta.get("run", {})
        for k in RUN_DEFAULTS:
            if k in given and k in run and getattr(args, k) != run[k]:
                raise ValueError(f"--{k.replace('_', '-')} {getattr(args, k)} differs from the checkpoint's {run[k]}: "
                                 f"a resumed run keeps its settings (drop the flag, or start a new run with another --out)")
            setattr(args, k, run.get(k, LEGACY_RUN.get(k, RUN_DEFAULTS[k])))
        saved = int(meta.get("step", 0))
        if args.steps <= saved:
            raise CLIError(f"--steps {args.steps}{'' if steps_given else ' (the default)'} is not above the step of "
                           f"{ckpt}, {saved}: nothing to train; give --steps above {saved} to train on")
    else:
        flow = (args.prediction or RUN_DEFAULTS["prediction"]) == "flow"
        for k, v in {**RUN_DEFAULTS, **(FLOW_DEFAULTS if flow else {})}.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.cond is None:
            args.cond = "text" if args.data in CAPTIONED else "class"
        if args.cond == "text" and args.data not in CAPTIONED:
            raise CLIError(f"--cond text: {args.data} has no captions to condition on; use --data "
                           f"{' or '.join(CAPTIONED)}, or --cond class")
        if args.cond == "text" and args.hflip:
            raise CLIError("--hflip with --cond text: a mirrored image no longer fits its caption's left and right; "
                           "drop --hflip")
        if args.timestep_sampling != "uniform" and args.prediction != "flow":
            raise CLIError(f"--timestep-sampling {args.timestep_sampling} is for --prediction flow; "
                           f"--prediction {args.prediction} trains on uniform t")
        if os.path.exists(ckpt):
            raise ValueError(f"{ckpt} exists: add --resume to continue it, or choose another --out")
    parse_overrides(args.set)   # a bad --set fails here, before any data is read
    if args.sample_steps > args.T:
        raise CLIError(f"--sample-steps {args.sample_steps} is more than the {args.T} diffusion timesteps (--T): "
                       f"give at most {args.T}")
    cli.writable_folder(args.out)
    return args, (ckpt if args.resume else None)


class StopRequest:
    """Ctrl-C, SIGTERM or SIGHUP: finish the step, save, exit. The same signal again: what it does by default
    (KeyboardInterrupt for Ctrl-C; the end of the process for the others), without saving."""
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.requested, self.by, self.old = False, None, {}

    def install(self):
        """Take over the signals (only the main thread may); restore() gives them back."""
        if threading_main():
            self.old = {s: signal.signal(s, self) for s in self.SIGNALS}

    def restore(self):
        for s, handler in self.old.items():
            signal.signal(s, handler)
        self.old = {}

    def __call__(self, signum, frame):
        self.requested, self.by = True, signal.Signals(signum).name
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        what = "Ctrl-C" if signum == signal.SIGINT else self.by
        print(f"\n{what}: saving a checkpoint after this step ({what} again quits without saving)", flush=True)


class NonFinite(CLIError):
    """A training step with NaN or inf in its loss, gradient norm or updated weights, phrased for the user."""


def nonfinite_message(step, loss, gnorm, lr, saved_at, ckpt, norms=(1.0, 1.0)):
    """One line: which step, what was not finite (or what grew: norms = the weights' norm before and after), the
    likely cause, what was kept, what to do."""
    before, after = norms
    what = (f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {gnorm}"
            if not math.isfinite(gnorm) else "the updated weights hold NaN or inf" if not math.isfinite(after)
            else f"the update grew the weights' norm from {before:.4g} to {after:.4g}")
    kept = (f"{ckpt} (step {saved_at}) is kept as it was" if saved_at is not None else "no checkpoint was written")
    return (f"step {step}: {what} (loss {loss:.4g}, grad norm {gnorm:.4g}, lr {lr:.3g}): the training diverged, most "
            f"likely the learning rate is too high; stopped without saving it, {kept}. Lower --lr (or raise --warmup), "
            "or pass --on-nonfinite skip to drop such steps")


def train(args, callback=None):
    """Run (or resume) training as set by the parsed CLI args. Returns a summary dict.
    callback(step, loss), if given, runs after every step that was kept, after its checkpoint and grid if any.
    A step that is not finite raises NonFinite (a CLIError) with --on-nonfinite stop, after which nothing is saved."""
    from tqdm import tqdm
    args, resume_from = settle_args(args)
    device, devices = args.device, args.devices
    if devices:
        parallel.check_batch(args.batch, devices)
    ds = load_dataset(args.data, "train", root=args.data_root, download=args.download, size=args.size)
    C, H, W = ds.shape
    sched = make_schedule(args.schedule, args.T)
    text = args.cond == "text"
    if text and not getattr(ds, "captions", None):
        raise CLIError(f"--cond text: {args.data} has no captions to condition on; use --cond class")
    conds = (0, len(ds.vocab)) if text else (ds.num_classes, 0)      # (num_classes, text_vocab) of the model
    run = {k: getattr(args, k) for k in RUN_DEFAULTS}
    if resume_from:
        state, cfg, meta = load_training_state(resume_from, device)
        start, saved_loss = int(meta["step"]), meta.get("loss")
        if (cfg.img_size, cfg.in_channels, cfg.num_classes, cfg.text_vocab) != (H, C, *conds):
            what = lambda k, v: f"a vocabulary of {v} tokens" if v else f"{k} classes"  # noqa: E731
            raise ValueError(f"{resume_from} was trained on {cfg.img_size}x{cfg.img_size}x{cfg.in_channels} images with "
                             f"{what(cfg.num_classes, cfg.text_vocab)}, but {args.data} gives {H}x{W}x{C} with "
                             f"{what(*conds)}")
        if text and "vocab" in meta and vocab_from_json(meta["vocab"]) != list(ds.vocab):
            raise ValueError(f"{resume_from} was trained with another vocabulary than {args.data}'s: its token ids "
                             "would mean other words")
    else:
        overrides = {**(dict(text_len=MAX_LEN) if text else {}), **parse_overrides(args.set)}
        cfg = get_config(args.preset, img_size=H, in_channels=C, num_classes=conds[0], text_vocab=conds[1],
                         prediction=args.prediction, **overrides)
        state, start, saved_loss = init_state(cfg, args.seed, device), 0, None
    if devices:   # one copy of the state on every device; each step's batch split over them
        state = parallel.replicate_state(state, get_model(cfg.arch).param_shapes(cfg), devices)
    put = (lambda a: parallel.shard_batch(Tensor(a, device=devices[0]), devices)) if devices else \
        (lambda a: Tensor(a, device=device))
    ckpt, log_path = os.path.join(args.out, "ckpt.safetensors"), os.path.join(args.out, "log.jsonl")
    keep_log_until(log_path, start)
    n_params = sum(int(np.prod(v.shape)) for v in state["params"].values())
    text_ids = caption_ids(ds, cfg) if text else None
    prompts, prompt_ids = grid_prompts(args.sample_n, ds.vocab, cfg) if text else (None, None)
    conds_text = f"captions, a vocabulary of {cfg.text_vocab} tokens" if text else f"{ds.num_classes or 'no'} classes"
    print(f"{cfg.arch} ({args.preset}, {n_params / 1e6:.2f}M params) on {ds.name} ({len(ds)} images {C}x{H}x{W}, "
          f"{conds_text}), batch {args.batch}, steps {start}->{args.steps}, "
          f"device {','.join(devices) if devices else device or Device.DEFAULT}, out {args.out}", flush=True)

    def meta_at(step):
        # a session that kept no step keeps the loss the checkpoint had
        loss = mean_tail(losses) if losses else saved_loss
        return dict(step=step, data=args.data, schedule=args.schedule, T=args.T, seed=args.seed, batch=args.batch,
                    preset=args.preset, class_names=list(ds.class_names), loss=loss, run=run,
                    **(dict(vocab=vocab_to_json(ds.vocab)) if text else {}))

    skip = args.on_nonfinite == "skip"
    step_fn = make_train_step(state, cfg, args.weight_decay, args.clip, undo=skip)
    stop = StopRequest()
    stop.install()
    losses, step_times, t0, step = [], [], time.perf_counter(), start
    out_of_time = lambda: args.minutes is not None and time.perf_counter() - t0 >= 60 * args.minutes  # noqa: E731
    saved_at, skipped, in_a_row, gave_up = (start if resume_from else None), 0, 0, None
    bar = tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        with open(log_path, "a", buffering=1) as log:   # line-buffered: the log is current while training
            while step < args.steps and not stop.requested and not out_of_time():
                t_step = time.perf_counter()
                xt, t, target, y = batch_at(step, args.seed, ds, args.batch, sched, args.label_drop,
                                            cfg if text else cfg.null_class, cfg.prediction, args.timestep_sampling,
                                            args.hflip, text_ids)
                lr = lr_at(step, args.lr, args.warmup, args.steps if args.lr_decay == "cosine" else None)
                w = None if args.loss_weight == "none" else put(loss_weight(t, sched, cfg.prediction, args.loss_weight))
                scalars = step_scalars(step, lr, args.ema_decay, devices[0] if devices else device)
                with Context(TRAINING=1):
                    loss, gnorm = step_fn(put(xt), put(t.astype(np.float32)), put(target),
                                          None if y is None else put(y.astype(np.int32)),
                                          *([parallel.replicate(s, devices) for s in scalars] if devices else scalars), w)
                loss, gnorm, finite = float(loss.item()), float(gnorm.item()), step_fn.finite.item() == 1.0
                step += 1
                elapsed = time.perf_counter() - t0
                if not finite:
                    message = nonfinite_message(step, loss, gnorm, lr, saved_at, ckpt, step_fn.norms.tolist())
                    if not skip:
                        raise NonFinite(message)
                    step_fn.undo()
                    skipped, in_a_row = skipped + 1, in_a_row + 1
                    log.write(json.dumps(dict(step=step, skipped=True, loss=finite_or_none(loss),
                                              grad_norm=finite_or_none(gnorm), lr=lr, time=round(elapsed, 2))) + "\n")
                    bar.write(f"step {step}: {message.split(': ', 1)[1].split(' (loss')[0]} (loss {loss:.4g}, grad norm "
                              f"{gnorm:.4g}): its update is dropped ({skipped} skipped so far)")
                    bar.update(1)
                    if in_a_row >= MAX_SKIPS_IN_A_ROW:   # the state is the last good one again: it is saved below
                        gave_up = (f"steps {step - in_a_row + 1}-{step} were all refused (the last: loss {loss:.4g}, "
                                   f"grad norm {gnorm:.4g}, lr {lr:.3g}): the training diverged, most likely the "
                                   f"learning rate is too high. Lower --lr (or raise --warmup) and --resume")
                        break
                    continue
                in_a_row = 0
                losses.append(loss)
                step_times.append(time.perf_counter() - t_step)
                log.write(json.dumps(dict(step=step, loss=round(loss, 6), grad_norm=round(gnorm, 4), lr=lr,
                                          time=round(elapsed, 2))) + "\n")
                bar.update(1)
                bar.set_postfix({"loss": f"{np.mean(losses[-50:]):.4f}", "steps/s": f"{steady_rate(step_times):.2f}"})
                if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
                    log.flush()
                    save_checkpoint(ckpt, state, cfg, meta_at(step))
                    saved_at = step
                if args.sample_every and step % args.sample_every == 0 and step < args.steps:
                    path = sample_grid(ema_for_sampling(state, cfg, devices), cfg, sched,
                                       os.path.join(args.out, f"samples_{step:06d}.png"), args.sample_n,
                                       args.sample_steps, args.guidance, args.seed, devices[0] if devices else device,
                                       prompt_ids)
                    bar.write(f"step {step}: loss {mean_tail(losses):.4f}, EMA samples -> {path}")
                if callback is not None:
                    callback(step, loss)
    finally:
        bar.close()
        stop.restore()
    train_time = time.perf_counter() - t0
    save_checkpoint(ckpt, state, cfg, meta_at(step))
    summary = dict(step=step, start=start, loss=mean_tail(losses), steps_per_s=steady_rate(step_times),
                   first_step_s=step_times[0] if step_times else 0.0, train_time=train_time, ckpt=ckpt, out=args.out,
                   interrupted=stop.requested, stopped_by=stop.by, skipped=skipped,
                   out_of_time=step < args.steps and not stop.requested and not gave_up)
    skipped_note = f"; {skipped} non-finite steps skipped (their updates dropped)" if skipped else ""
    if gave_up:
        raise NonFinite(f"{gave_up}; the state before them is saved in {ckpt} (step {step}){skipped_note}")
    if stop.requested:
        print(f"{stop.by}: stopped at step {step}{skipped_note}; checkpoint {ckpt}. Continue with: "
              f"python -m tinygrad_impl.train --out {args.out} --resume --steps {args.steps}")
        return summary
    grid = sample_grid(ema_for_sampling(state, cfg, devices), cfg, sched, os.path.join(args.out, f"samples_{step:06d}.png"),
                       args.sample_n, args.sample_steps, args.guidance, args.seed, devices[0] if devices else device,
                       prompt_ids)
    summary["grid"] = grid
    rows_text = (f"row r = prompt r: {'; '.join(prompts)}" if text else
                 f"row r = class r: {', '.join(ds.class_names[:cfg.num_classes])}")
    prompt_flag = ' --prompt "a small red triangle at the top left"' if text else ""
    if summary["out_of_time"]:
        print(f"--minutes {args.minutes:g}: the time is up at step {step} of {args.steps}")
    print(f"done: step {step}, loss {summary['loss']:.4f} (mean of the last {min(len(losses), 50)} steps){skipped_note}, "
          f"{summary['steps_per_s']:.2f} steps/s after a first step of {summary['first_step_s']:.0f} s (compiling); "
          f"{train_time / 60:.1f} min in all\n"
          f"checkpoint {ckpt}\nEMA samples {grid} ({rows_text})\n"
          f"sample more: python -m tinygrad_impl.sample --ckpt {ckpt} --out grid.png{prompt_flag}   (or numpy_ref.sample, "
          "NumPy only)")
    return summary


def finite_or_none(x):
    """x for a JSON log, None for NaN and inf (which strict JSON readers refuse)"""
    return x if math.isfinite(x) else None


def steady_rate(step_times):
    """Training steps per second, leaving out the first step of a session (tinygrad compiles in it)."""
    rest = step_times[1:]
    return len(rest) / sum(rest) if rest and sum(rest) > 0 else float("nan")


def mean_tail(losses, n=50):
    return float(np.mean(losses[-n:])) if losses else float("nan")


def keep_log_until(path, step):
    """Drop log lines after `step` (they were made after the checkpoint a resumed run restarts from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def threading_main():
    import threading
    return threading.current_thread() is threading.main_thread()


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.beam is not None:
        use_beam(args.beam, check_device(args.device))
    return train(args)


if __name__ == "__main__":
    cli.run(main)
