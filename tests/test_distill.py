"""Distillation (tinygrad_impl/distill.py, numpy_ref/distill.py): the progressive-distillation target is the same in
NumPy and tinygrad and exact for an oracle teacher, the trailing grids nest, a knowledge-distilled and a
progressive + adversarial student train, resume bit for bit, and the few-step student samples at its own step count
with the same images in numpy_ref.sample and tinygrad_impl.sample; bad teachers and flags give one-line errors.

Device: tinygrad's CPU backend (conftest.py sets DEV=CPU unless DEV says otherwise). The teacher is a uvit-tiny with
one block and random weights, written as a train checkpoint (a trained one would cost a training-step compile more,
~45-70 s on two busy cores; distill reads only its weights, config and metadata). Every run uses one shape (8x8
shapes, batch 2) so each step graph compiles once for the file."""
import json
import os
import sys

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import distill as ND
from numpy_ref import weights as np_weights
from numpy_ref.configs import get_config
from numpy_ref.models import get_model as np_model
from numpy_ref.samplers import sampling_plan
from numpy_ref.schedule import make_schedule
from tinygrad_impl import distill as TD
from tinygrad_impl.models import get_model as tg_model
from tinygrad_impl.train import load_training_state
from tinygrad_impl.weights import to_tensors
from util import assert_close, cli_fails, random_params

CLASSES = ["circle", "square", "triangle", "diamond", "plus", "ring"]
TINY = ["--batch", "2", "--warmup", "1", "--ckpt-every", "0"]


def write_teacher(path, seed=0, **overrides):
    """A uvit-tiny teacher checkpoint (v-prediction, 8x8x3, 6 classes) with random weights, as train writes one"""
    cfg = get_config("uvit-tiny", img_size=8, in_channels=3, num_classes=6, prediction="v",
                     **{"depth": 1, **overrides})
    params = {k: 0.5 * v for k, v in random_params(cfg, seed).items()}
    meta = dict(step=2, data="shapes", schedule="linear", T=1000, seed=0, batch=2, preset="uvit-tiny",
                class_names=CLASSES, loss=0.5, run=dict(loss_weight="min-snr", timestep_sampling="uniform"))
    return np_weights.save_weights(str(path), params, cfg, meta, ema=params)


def run(*argv):
    return TD.distill(TD.build_parser().parse_args([*TINY, *map(str, argv)]))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher") / "ckpt.safetensors")


@pytest.fixture(scope="module")
def kd(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("kd")
    return out, run("--teacher", teacher, "--preset", "tokenfree-tiny", "--set", "depth=1", "--steps", 2,
                    "--sample-n", 0, "--out", out)


@pytest.fixture(scope="module")
def progressive(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("pd")
    return out, run("--mode", "progressive", "--teacher", teacher, "--student-steps", 2, "--adv-weight", 0.1,
                    "--steps", 2, "--sample-n", 4, "--out", out)


# ----------------------------------------------------------------------------
# The shared formulas
# ----------------------------------------------------------------------------

def test_trailing_grids_nest_and_start_at_pure_noise():
    for n in (1, 2, 4, 8, 16):
        assert (ND.student_timesteps(1000, 2 * n)[::2] == ND.student_timesteps(1000, n)).all()
        t, t_mid, t_next = ND.progressive_pairs(1000, n)
        assert (t > t_mid).all() and (t_mid > t_next).all() and t[0] == 999 and t_next[-1] == -1
    sched = make_schedule(spacing="trailing")
    assert [t for t, _ in sampling_plan(sched, "ddim", 1)] == [999]           # the even grid would say [0]
    assert [t for t, _ in sampling_plan(sched, "ddim", 4)] == [999, 749, 499, 249]
    assert [t for t, _ in sampling_plan(make_schedule(), "ddim", 1)] == [0]    # the default is unchanged


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_target_is_exact_for_an_oracle_teacher(prediction):
    """A teacher that always knows x0 (its output reads as x0 at any z): two of its DDIM steps land where one step
    with x0 lands, so the target x~ is x0 itself, and one student DDIM step from z with x~ reaches the teacher's z''."""
    sched = make_schedule()
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.9, 0.9, (3, 1, 4, 4))
    oracle = lambda z, t, y: ND.output_from_x0(x0, z, *(np.reshape(v, (-1, 1, 1, 1))  # noqa: E731
                                                         for v in ND.alpha_sigma(t, sched, prediction)), prediction)
    t, t_mid, t_next = (np.array([g[0], g[1], g[1]]) for g in ND.progressive_pairs(1000, 2))
    a, s = ND.alpha_sigma(t, sched, prediction)
    z = a.reshape(-1, 1, 1, 1) * x0 + s.reshape(-1, 1, 1, 1) * rng.standard_normal(x0.shape)
    x_target, out_target = ND.progressive_target(oracle, z.astype(np.float32), t, t_mid, t_next, None, sched, prediction)
    assert np.abs(x_target - x0).max() < 1e-4
    assert np.abs(ND.x0_from_output(out_target, z, a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1), prediction)
                  - x0).max() < 1e-4


def test_progressive_target_numpy_equals_tinygrad():
    """The same teacher (random uvit-tiny) and z: numpy_ref.distill.progressive_target vs the tinygrad one."""
    cfg = get_config("uvit-tiny", img_size=8, in_channels=3, num_classes=6, prediction="v", depth=1)
    params = random_params(cfg, 1)
    sched = make_schedule()
    rng = np.random.default_rng(1)
    k = np.array([0, 1, 1, 0])
    t, t_mid, t_next = (g[k] for g in ND.progressive_pairs(1000, 2))
    z = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 3, 6, 5])                                                  # 6: the null class
    ref_x, ref_out = ND.progressive_target(lambda x, tt, yy: np_model("uvit").forward(params, x, tt, yy, cfg), z, t,
                                           t_mid, t_next, y, sched, "v")
    coefs = np.stack([*ND.alpha_sigma(t, sched, "v"), *ND.alpha_sigma(t_mid, sched, "v"),
                      *ND.alpha_sigma(t_next, sched, "v")], 1).astype(np.float32)
    p = to_tensors(params)
    x, out = TD.progressive_target(lambda xx, tt, yy: tg_model("uvit").forward(p, xx, tt, yy, cfg), Tensor(z),
                                   Tensor(t.astype(np.float32)), Tensor(t_mid.astype(np.float32)), Tensor(coefs),
                                   Tensor(y.astype(np.int32)), "v")
    assert_close(ref_x, x.numpy(), what="x target")
    assert_close(ref_out, out.numpy(), what="v target")
    assert np.abs(ref_x).max() > 0.1                                             # not trivially zero


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------

def test_kd_student_trains_and_keeps_its_projections(kd, teacher):
    out, summary = kd
    state, cfg, meta = load_training_state(str(out / "ckpt.safetensors"))
    tensors = np_weights.read_file(str(out / "ckpt.safetensors"))[0]
    assert cfg.arch == "tokenfree" and cfg.prediction == "v" and cfg.img_size == 8 and cfg.num_classes == 6
    assert meta["step"] == 2 and meta["mode"] == "kd" and "sample_steps" not in meta and meta["teacher"] == str(teacher)
    proj = {k for k in tensors if k.startswith("aux/proj/params/")}
    assert proj == {f"aux/proj/params/proj.{lvl}.{w}" for lvl in ("mid", "out") for w in ("weight", "bias")}
    init = TD.init_aux(TD.projection_shapes(["mid"], {"mid": 32}, {"mid": 16}), 0)["proj.mid.weight"]
    assert not np.array_equal(tensors["aux/proj/params/proj.mid.weight"], init)   # the projections were trained
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in log)


def test_kd_resume_across_a_stop_equals_the_straight_run(kd, teacher, tmp_path):
    out, _ = kd
    run("--teacher", teacher, "--preset", "tokenfree-tiny", "--set", "depth=1", "--steps", 1, "--sample-n", 0,
        "--out", tmp_path)
    run("--resume", "--steps", 2, "--sample-n", 0, "--out", tmp_path)                # the teacher from the checkpoint
    a = np_weights.read_file(str(out / "ckpt.safetensors"))[0]
    b = np_weights.read_file(str(tmp_path / "ckpt.safetensors"))[0]
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_progressive_student_records_its_steps_and_trains_a_discriminator(progressive):
    out, summary = progressive
    _, cfg, meta = load_training_state(str(out / "ckpt.safetensors"))
    assert meta["sample_steps"] == 2 and meta["spacing"] == "trailing" and meta["mode"] == "progressive"
    assert cfg.arch == "uvit" and summary["sample_steps"] == 2
    tensors = np_weights.read_file(str(out / "ckpt.safetensors"))[0]
    assert "aux/disc/params/disc.embed.weight" in tensors and "aux/disc/m/disc.conv0.weight" in tensors
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert all(np.isfinite(r["disc_loss"]) and r["disc_loss"] > 0 for r in log)
    assert os.path.exists(summary["grid"])


def test_the_student_samples_at_its_count_alike_in_numpy_and_tinygrad(progressive, capsys):
    from numpy_ref import sample as np_sample
    from tinygrad_impl import sample as tg_sample
    out, _ = progressive
    ckpt = str(out / "ckpt.safetensors")
    common = ["--ckpt", ckpt, "--n", "4", "--batch", "4", "--seed", "3"]
    np_sample.main([*common, "--out", str(out / "np.png"), "--npy", str(out / "np.npy")])
    tg_sample.main([*common, "--out", str(out / "tg.png"), "--npy", str(out / "tg.npy")])
    printed = capsys.readouterr().out
    assert printed.count("ddim 2 steps") == 2, printed                          # the checkpoint's count, by default
    a, b = np.load(out / "np.npy"), np.load(out / "tg.npy")
    assert a.shape == (4, 3, 8, 8) and a.std() > 0.01
    assert_close(a, b, atol=1e-3, rtol=1e-3, what="images")                     # as tests/test_samplers.py


# ----------------------------------------------------------------------------
# Errors: one line, exit code 2, before anything compiles
# ----------------------------------------------------------------------------

def test_bad_teachers_and_flags_are_refused(capsys, teacher, kd, progressive, tmp_path):
    kd_out, pd_out = str(kd[0]), str(progressive[0])
    out = str(tmp_path / "x")
    fails = lambda *argv: cli_fails(capsys, TD.main, [*TINY, *map(str, argv)])  # noqa: E731
    assert "no such file" in fails("--teacher", tmp_path / "none.safetensors", "--preset", "tokenfree-tiny", "--out", out)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a checkpoint")
    assert "not a readable safetensors" in fails("--teacher", junk, "--preset", "tokenfree-tiny", "--out", out)
    assert "must see the same images" in fails("--teacher", teacher, "--preset", "tokenfree-tiny", "--size", 16,
                                               "--out", out)
    assert "needs --preset" in fails("--teacher", teacher, "--out", out)
    assert "--adv-weight is for few-step" in fails("--teacher", teacher, "--preset", "tokenfree-tiny",
                                                   "--adv-weight", 0.1, "--out", out)
    assert "1..4 steps; this one has 8" in fails("--mode", "progressive", "--teacher", teacher, "--adv-weight", 0.1,
                                                 "--out", out)
    assert "is a 2-step student" in fails("--mode", "progressive", "--teacher", pd_out + "/ckpt.safetensors",
                                          "--student-steps", 2, "--out", out)
    assert "--feat-levels" in fails("--teacher", teacher, "--preset", "tokenfree-tiny", "--feat-levels", "top",
                                    "--out", out)
    assert "no checkpoint at" in fails("--resume", "--out", out)
    assert "add --resume" in fails("--teacher", teacher, "--preset", "tokenfree-tiny", "--out", kd_out)
    other = write_teacher(tmp_path / "other.safetensors", heads=1)
    assert "another model than" in fails("--teacher", other, "--resume", "--steps", 5, "--out", kd_out)


# ----------------------------------------------------------------------------
# Tutorial 08
# ----------------------------------------------------------------------------

def test_08_distillation_tutorial(tmp_path, monkeypatch, capsys):
    """Tutorial 08 in fast mode, run in this process (runpy) so it reuses the progressive step compiled above: as
    a subprocess (tests/test_tutorials.py's way) it compiles that step again, ~60 s more on two cores."""
    import re
    import runpy
    from test_tutorials import TUTORIALS, assert_pngs
    monkeypatch.setenv("TUTORIAL_FAST", "1")
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("tutorial_utils",):          # read TUTORIAL_FAST / TUTORIAL_OUT at import
        sys.modules.pop(name, None)
    runpy.run_path(os.path.join(TUTORIALS, "08_distillation.py"), run_name="__main__")
    sys.modules.pop("tutorial_utils", None)
    key_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("KEY ")][-1]
    key = {k: float(v) for k, v in re.findall(r"(\w+)=([-+\d.e]+)", key_line)}
    assert_pngs(tmp_path, "08_students.png")
    assert key["target_err"] < 1e-4 and key["image_max_diff"] < 1e-3
    assert key["student_steps"] == 2 and np.isfinite(key["loss_last"])
