# %% [markdown]
# # 08 Distillation: from many sampling steps to few
#
# Every sample of the models so far costs 25 network calls. Progressive distillation (Salimans & Ho 2022,
# arXiv 2202.00512) teaches a student to do in ONE deterministic DDIM step what its teacher does in TWO, and then
# the student becomes the next teacher: 16 -> 8 -> 4 -> 2 -> 1 calls. `tinygrad_impl/distill.py` runs one halving
# per call; the formulas live in `numpy_ref/distill.py`. This tutorial:
#
# 1. builds the target of one batch by hand, in NumPy, and checks what makes it right;
# 2. runs rounds of `python -m tinygrad_impl.distill --mode progressive` (the last ones with a discriminator);
# 3. samples the student at its own step count in NumPy and in tinygrad (the same images) beside the teacher
#    sampled with as few DDIM steps.
#
# Full mode distils tutorial 04's checkpoint (trained first if missing) 16 -> 8 -> 4 -> 2, one round
# after another. Fast mode (TUTORIAL_FAST=1) only proves the code runs: one round of two steps into a 2-step student,
# from tutorial 04's checkpoint when it exists, else from a tiny teacher with random weights (its samples are noise).
# Writes `08_students.png`.

# %%
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import numpy as np

from numpy_ref import distill as D
from numpy_ref import weights as np_weights
from numpy_ref.data import load_dataset
from numpy_ref.models import get_model
from numpy_ref.sample import grid_labels, sample_images as np_sample_images, schedule_of
from tinygrad_impl import distill
from tinygrad_impl.sample import sample_images as tg_sample_images
from tinygrad_impl.weights import to_tensors
from tutorial_utils import FAST, checkpoint_path, ensure_checkpoint, image_table, runs_dir

ROUNDS = [2] if FAST else [8, 4, 2]          # the student step count of each round (the first teacher: 16)
STEPS = 2 if FAST else 300                   # training steps a round
ADV_FROM = 4                                 # rounds into 4 steps or fewer add the adversarial term


def tiny_teacher(path):
    """Fast mode without tutorial 04's checkpoint: a uvit-tiny (one block) with random weights, as a train
    checkpoint (v-prediction, 8x8 shapes, 6 classes)."""
    from numpy_ref.configs import get_config
    cfg = get_config("uvit-tiny", img_size=8, in_channels=3, num_classes=6, prediction="v", depth=1)
    rng = np.random.default_rng(0)
    params = {k: (0.5 * rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 4)).astype(np.float32)
              for k, s in get_model("uvit").param_shapes(cfg).items()}
    meta = dict(step=0, data="shapes", schedule="linear", T=1000, seed=0, batch=2, preset="uvit-tiny",
                class_names=list(load_dataset("shapes", "train", size=8).class_names))
    return np_weights.save_weights(path, params, cfg, meta, ema=params)


teacher_path = checkpoint_path() if not FAST or os.path.exists(checkpoint_path()) else None
teacher_path = ensure_checkpoint() if not FAST else teacher_path or tiny_teacher(os.path.join(runs_dir("08"), "teacher.safetensors"))
params, cfg, meta, which = np_weights.load_for_sampling(teacher_path)
sched = schedule_of(meta)
print(f"teacher: {cfg.arch}, {cfg.prediction}-prediction, {cfg.img_size}x{cfg.img_size}, step {meta['step']} ({teacher_path})")

# %% [markdown]
# ## The target of one batch
#
# A training image x0, a point t of the student's grid (for a 2-step student: t = 999 or 499) and noise give
# z = alpha x0 + sigma eps. The teacher takes two DDIM steps, t -> t' -> t'' (t'' = -1 is the clean image):
#
#     z'  = alpha' x^(z, t)   + sigma'  / sigma  (z  - alpha  x^(z, t))
#     z'' = alpha'' x^(z', t') + sigma'' / sigma' (z' - alpha' x^(z', t'))
#
# The student's target is the x~ whose ONE DDIM step from z lands on z'':
# x~ = (z'' - sigma''/sigma z) / (alpha'' - sigma''/sigma alpha). We check exactly that.

# %%
ds = load_dataset(meta.get("data", "shapes"), "train", size=cfg.img_size)
x0, z, t, t_mid, t_next, coefs, weight, y = distill.progressive_batch(0, 0, ds, 6, sched, ROUNDS[0], 0.0,
                                                                      cfg.null_class, cfg.prediction)
teacher_fn = lambda x, tt, yy: get_model(cfg.arch).forward(params, x, tt, yy, cfg)  # noqa: E731
x_target, out_target = D.progressive_target(teacher_fn, z, t, t_mid, t_next, y, sched, cfg.prediction)
col = lambda v: np.reshape(v, (-1, 1, 1, 1))  # noqa: E731
a, s = (col(v) for v in D.alpha_sigma(t, sched, cfg.prediction))
am, sm = (col(v) for v in D.alpha_sigma(t_mid, sched, cfg.prediction))
an, sn = (col(v) for v in D.alpha_sigma(t_next, sched, cfg.prediction))
x1 = np.clip(D.x0_from_output(teacher_fn(z, t, y), z, a, s, cfg.prediction), -1, 1)      # the teacher, step 1
z1 = D.ddim_step(z, x1, a, s, am, sm)
x2 = np.clip(D.x0_from_output(teacher_fn(z1.astype(np.float32), t_mid, y), z1, am, sm, cfg.prediction), -1, 1)
z2 = D.ddim_step(z1, x2, am, sm, an, sn)                                                  # step 2
target_err = float(np.abs(D.ddim_step(z, x_target, a, s, an, sn) - z2).max())
print(f"t {t.tolist()} -> t' {t_mid.tolist()} -> t'' {t_next.tolist()}")
print(f"one student step with x~ lands on the teacher's two-step z'': max error {target_err:.2e}")
print(f"loss weights max(SNR, 1): {np.round(weight, 2).tolist()}")

# %% [markdown]
# ## Rounds of distillation
#
# Each round is one call of the CLI; its student records `sample_steps` and the trailing grid in the checkpoint,
# so the next round (and both sample CLIs) know its count. Rounds into 4 steps or fewer add a small conv
# discriminator on the student's x0 (hinge loss, `--adv-weight`).

# %%
current, students = teacher_path, []
for n in ROUNDS:
    out = runs_dir(f"08_pd{n}")
    flags = ["--mode", "progressive", "--teacher", current, "--student-steps", str(n), "--steps", str(STEPS),
             "--batch", "2" if FAST else "32", "--warmup", "1" if FAST else "20", "--ckpt-every", "0",
             "--sample-n", "0", "--out", out]
    if n <= ADV_FROM:
        flags += ["--adv-weight", "0.1"]
    if os.path.exists(os.path.join(out, "ckpt.safetensors")):     # a run from before: continue it (or nothing to do)
        flags = ["--resume", "--steps", str(STEPS), "--out", out, "--sample-n", "0"]
        if np_weights.read_file(os.path.join(out, "ckpt.safetensors"))[2]["step"] >= STEPS:
            flags = None
    if flags:
        print("python -m tinygrad_impl.distill " + " ".join(flags))
        distill.distill(distill.build_parser().parse_args(flags))
    current = os.path.join(out, "ckpt.safetensors")
    students.append((n, current))
log = [json.loads(line) for line in open(os.path.join(os.path.dirname(current), "log.jsonl"))]
loss_last = float(np.mean([r["loss"] for r in log[-20:]]))
print(f"last round: loss {loss_last:.4f} (mean of its last {min(20, len(log))} steps)")

# %% [markdown]
# ## The students beside the teacher at the same number of calls
#
# DDIM with n steps on the teacher (the even grid it was trained for) against the n-step student (its trailing
# grid), CFG 2, same seed. The student's images come out the same in NumPy and in tinygrad.

# %%
n_img = 6
rows, image_max_diff = [], 0.0
for n, path in students:
    sp, scfg, smeta, _ = np_weights.load_for_sampling(path)
    ssched = schedule_of(smeta)                                  # the trailing grid
    ref = np_sample_images(sp, scfg, ssched, n_img, "ddim", smeta["sample_steps"], seed=0, guidance=2.0)
    tg = tg_sample_images(to_tensors(sp), scfg, ssched, n_img, "ddim", smeta["sample_steps"], seed=0, guidance=2.0)
    image_max_diff = max(image_max_diff, float(np.abs(ref - tg).max()))
    teach = np_sample_images(params, cfg, sched, n_img, "ddim", n, seed=0, guidance=2.0)
    rows += [(f"teacher DDIM {n}", teach), (f"student {n} steps", ref)]
labels = grid_labels(n_img, cfg.num_classes)
path = image_table("08_students.png", rows, col_titles=[ds.class_names[c] for c in labels] if labels is not None else (),
                   upscale=max(1, 64 // cfg.img_size), title="teacher with few DDIM steps vs distilled students")
print(f"wrote {path}; NumPy vs tinygrad student images: max difference {image_max_diff:.2e}")

# %% [markdown]
# ## What to look at
#
# - The target check: one DDIM step with x~ reproduces the teacher's two steps to float precision.
# - `08_students.png` (full mode): the teacher's DDIM falls apart as the steps shrink (blurry blobs at 2 steps),
#   the student of the same count keeps more of the shapes. In fast mode both rows are noise.
#
# Knowledge distillation across architectures (`--mode kd --preset snapgen_unet-xs`) trains a smaller student
# from scratch with the teacher's outputs and features as extra targets.

# %%
print(f"KEY target_err={target_err:.3e} image_max_diff={image_max_diff:.3e} student_steps={students[-1][0]} "
      f"loss_last={loss_last:.5f}")
