"""Training: the CLI on the built-in data learns, Ctrl-C + --resume equals a straight run bit for bit,
one jitted AdamW step equals a NumPy AdamW, and bad checkpoints / flags / datasets give clear errors. Nothing lost,
nothing silent: a diverging step is never saved, SIGTERM and SIGHUP save like Ctrl-C, every flag is checked before
anything compiles.

Every run here uses one shape (tokenfree-tiny, 8x8 shapes, batch 2, sample grids of 4) so tinygrad
compiles the training step and the sampler once for the whole file."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tinygrad import Context, Tensor

from numpy_ref import cli
from numpy_ref import data as D
from numpy_ref import weights as np_weights
from numpy_ref.configs import get_config
from numpy_ref.models import get_model as np_model
from numpy_ref.schedule import loss_weight, make_schedule, q_sample, training_target
from tinygrad_impl import bench, train
from util import opencl_available

TINY = ["--preset", "tokenfree-tiny", "--size", "8", "--batch", "2", "--lr", "3e-3", "--warmup", "5",
        "--sample-n", "4", "--sample-steps", "3", "--ckpt-every", "0", "--sample-every", "0"]
STEPS = 30


def run(out, *extra, callback=None):
    return train.train(train.build_parser().parse_args(TINY + ["--out", str(out), *extra]), callback=callback)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def cli_error(capsys, argv):
    """(exit code, stderr) of the train CLI as `python -m tinygrad_impl.train argv` runs it"""
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, argv)
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, run(out, "--steps", str(STEPS))


def eval_loss(params, cfg, n=128, seed=123, weighting="none"):
    """Mean |target - output|^2 of the NumPy model (target: eps or v) on fixed held-out draws from the shapes test split,
    each sample's error weighted as training weights it (loss_weight)."""
    ds = D.load_dataset("shapes", "test", size=cfg.img_size)
    rng = np.random.default_rng(seed)
    sched = make_schedule()
    x0 = ds.images[:n]
    t = rng.integers(0, sched.T, n)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    out = np_model(cfg.arch).forward(params, q_sample(x0, t, noise, sched), t, ds.labels[:n], cfg)
    err = np.mean((out - training_target(x0, t, noise, sched, cfg.prediction)) ** 2, axis=(1, 2, 3))   # (n,)
    return float(np.mean(loss_weight(t, sched, cfg.prediction, weighting) * err))


# ----------------------------------------------------------------------------
# The default preset's step on OpenCL
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device (install pocl-opencl-icd)")
def test_the_default_presets_training_step_runs_on_opencl():
    """tinygrad picks PoCL's CL device before the CPU backend where it is installed, so the README's main job runs
    there. PoCL cannot link a kernel whose name passes 255 characters, which the global grad norm fused into one
    kernel of ~100 reductions would have, aborting the process. Two steps of tokenfree-xs; the first loss is NumPy's."""
    cfg = get_config(train.RUN_DEFAULTS["preset"], num_classes=bench.NUM_CLASSES)
    params = bench.randomize_output_layers(np_model(cfg.arch).init_params(cfg, 0), cfg)
    batches = bench.bench_batches(cfg, 2, 2)
    xt, t, noise, y = batches[0]
    ref = float(np.mean((np_model(cfg.arch).forward(params, xt, t, y, cfg) - noise) ** 2))
    step = bench.tinygrad_trainer(cfg, params, device="CL")
    assert abs(step(batches[0]) - ref) < 1e-4 * max(1.0, ref)
    assert np.isfinite(step(batches[1]))


# ----------------------------------------------------------------------------
# A real run
# ----------------------------------------------------------------------------

def test_thirty_steps_lower_the_loss_and_write_everything(straight):
    out, summary = straight
    assert summary["step"] == STEPS and not summary["interrupted"]
    params, cfg, meta = np_weights.load_weights(out / "ckpt.safetensors")
    assert meta["step"] == STEPS and meta["data"] == "shapes" and meta["schedule"] == "linear" and meta["T"] == 1000
    assert meta["seed"] == 0 and meta["batch"] == 2 and meta["class_names"] == list(D.SHAPES)
    assert (cfg.img_size, cfg.in_channels, cfg.num_classes, cfg.prediction) == (8, 3, 6, "v")   # the CLI's default
    init = np_model(cfg.arch).init_params(cfg, seed=0)
    assert meta["run"]["loss_weight"] == "min-snr"                                              # the CLI's default
    before, after = eval_loss(init, cfg, weighting="min-snr"), eval_loss(params, cfg, weighting="min-snr")
    # a run that never updates gives a ratio of 1
    assert after < 0.9 * before, f"held-out loss {before:.3f} -> {after:.3f}: training did not learn"
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    # (single-step losses of batch 2 swing with the t drawn, by ~1000x under min-snr: the held-out loss above is the
    # learning check; here the log and the summary agree)
    assert summary["loss"] == pytest.approx(np.mean([r["loss"] for r in log]), rel=1e-5)
    # EMA copy, optimizer state, and a grid of EMA samples (4 images of 8x8, 2x upscaled, 1px gaps)
    tensors, _, _ = np_weights.read_file(out / "ckpt.safetensors")
    for k in params:
        assert f"ema/{k}" in tensors and f"opt/m/{k}" in tensors and f"opt/v/{k}" in tensors
    ema, _, _ = np_weights.load_weights(out / "ckpt.safetensors", ema=True)
    k = "blocks.0.mlp.fc1.weight"
    # load_training_state reads back every part of the state a resumed run continues from
    state, cfg_r, meta_r = train.load_training_state(out / "ckpt.safetensors")
    assert cfg_r == cfg and meta_r == meta and list(state["params"]) == list(np_model(cfg.arch).param_shapes(cfg))
    for part, prefix in (("params", ""), ("ema", "ema/"), ("m", "opt/m/"), ("v", "opt/v/")):
        np.testing.assert_array_equal(state[part][k].numpy(), tensors[prefix + k], err_msg=part)
    assert not np.array_equal(ema[k], params[k]) and not np.array_equal(ema[k], init[k])
    from PIL import Image
    with Image.open(out / f"samples_{STEPS:06d}.png") as im:
        assert im.size == (2 * (2 * 9 + 1), 2 * (2 * 9 + 1))


def test_ctrl_c_then_resume_equals_the_straight_run(straight, tmp_path):
    ref_out, _ = straight

    def press_ctrl_c(step, loss):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)   # the real signal: train's handler saves after this step

    before = signal.getsignal(signal.SIGINT)   # Python's default, or SIG_IGN under a shell's background job
    first = run(tmp_path, "--steps", str(STEPS), callback=press_ctrl_c)
    assert first["interrupted"] and first["step"] == 12
    assert np_weights.read_file(tmp_path / "ckpt.safetensors")[2]["step"] == 12
    assert len(read_log(tmp_path)) == 12
    assert signal.getsignal(signal.SIGINT) == before, "the SIGINT handler must be restored"
    second = run(tmp_path, "--steps", str(STEPS), "--resume")
    assert second["start"] == 12 and second["step"] == STEPS
    a, _, meta_a = np_weights.read_file(ref_out / "ckpt.safetensors")
    b, _, meta_b = np_weights.read_file(tmp_path / "ckpt.safetensors")
    assert sorted(a) == sorted(b) and meta_a["step"] == meta_b["step"] == STEPS
    for k in a:   # params, ema/, opt/m/, opt/v/: bit-identical
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [r["loss"] for r in read_log(ref_out)] == [r["loss"] for r in read_log(tmp_path)]


# ----------------------------------------------------------------------------
# The update rule against NumPy
# ----------------------------------------------------------------------------

def test_one_jitted_step_is_adamw_with_clipping_and_ema():
    cfg = get_config("tokenfree-tiny", img_size=8, num_classes=6)
    ds = D.load_dataset("shapes", size=8)
    sched = make_schedule()
    state = train.init_state(cfg, seed=5)
    before = {s: {k: v.numpy() for k, v in state[s].items()} for s in state}
    xt, t, noise, y = train.batch_at(0, 0, ds, 2, sched, 0.1, cfg.null_class)
    # gradients from tinygrad (checked against finite differences in test_models), outside the JIT
    from tinygrad_impl.weights import to_tensors
    from tinygrad_impl.models import get_model as tg_model
    p = to_tensors(before["params"])
    with Context(TRAINING=1):
        eps = tg_model(cfg.arch).forward(p, Tensor(xt), Tensor(t.astype(np.float32)), Tensor(y.astype(np.int32)), cfg)
        loss = (eps - Tensor(noise)).square().mean()
        grads = dict(zip(p, (g.numpy() for g in loss.gradient(*p.values()))))
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    lr, decay, clip = 1e-2, 0.5, 0.5 * norm   # clip below the norm, so clipping is active
    step = train.make_train_step(state, cfg, weight_decay=0.0, clip=clip)
    with Context(TRAINING=1):
        got_loss, got_norm = step(Tensor(xt), Tensor(t.astype(np.float32)), Tensor(noise), Tensor(y.astype(np.int32)),
                                  Tensor([lr]), Tensor([decay]), Tensor([1 - 0.9]), Tensor([1 - 0.999]))
    assert got_loss.item() == pytest.approx(loss.item(), rel=1e-5) and got_norm.item() == pytest.approx(norm, rel=1e-4)
    assert step.finite.item() == 1.0
    # the same step with per-sample weights (min-snr) returns the weighted mean of the squared errors
    weight = np.array([0.25, 2.0], np.float32)
    with Context(TRAINING=1):
        err = (eps - Tensor(noise)).square().mean(axis=(1, 2, 3)).numpy()
        wloss, _ = train.make_train_step(train.init_state(cfg, seed=5), cfg, clip=clip)(
            Tensor(xt), Tensor(t.astype(np.float32)), Tensor(noise), Tensor(y.astype(np.int32)), Tensor([lr]),
            Tensor([decay]), Tensor([1 - 0.9]), Tensor([1 - 0.999]), Tensor(weight))
    assert wloss.item() == pytest.approx(float((weight * err).mean()), rel=1e-5)
    scale = clip / (norm + 1e-6)
    for k, g in grads.items():
        g = g * scale
        m, v = 0.1 * g, 0.001 * g * g
        new = before["params"][k] - lr * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
        np.testing.assert_allclose(state["params"][k].numpy(), new, rtol=1e-4, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(state["m"][k].numpy(), m, rtol=1e-4, atol=1e-9, err_msg=k)
        np.testing.assert_allclose(state["ema"][k].numpy(), decay * before["ema"][k] + (1 - decay) * new,
                                   rtol=1e-4, atol=1e-6, err_msg=k)


def test_a_refused_update_is_undone_and_the_next_step_starts_from_the_state_before_it():
    """An lr of inf leaves the loss and the gradient finite and the weights NaN: step.finite says 0, step.undo() puts
    back the state, and the jitted step (replaying by then) goes on from it: the same state as a run without the bad
    step, bit for bit, in params, EMA and both moments"""
    cfg = get_config("tokenfree-tiny", img_size=8, num_classes=6)
    ds, sched = D.load_dataset("shapes", size=8), make_schedule()
    a, b = train.init_state(cfg, seed=5), train.init_state(cfg, seed=5)
    step_a, step_b = train.make_train_step(a, cfg, undo=True), train.make_train_step(b, cfg)

    def call(step_fn, k, lr):
        xt, t, target, y = train.batch_at(k, 0, ds, 2, sched, 0.1, cfg.null_class, "v")
        with Context(TRAINING=1):
            step_fn(Tensor(xt), Tensor(t.astype(np.float32)), Tensor(target), Tensor(y.astype(np.int32)),
                    *train.step_scalars(k, lr, 0.999))
        return step_fn.finite.item()

    for k in range(3):   # TinyJit runs, captures, then replays from the third call on
        assert call(step_a, k, 1e-3) == 1 and call(step_b, k, 1e-3) == 1
    assert call(step_a, 3, float("inf")) == 0 and not np.isfinite(a["flat"]["params"].numpy()).all()
    step_a.undo()
    assert call(step_a, 4, 1e-3) == 1 and call(step_b, 4, 1e-3) == 1
    for part in ("params", "ema", "m", "v"):
        np.testing.assert_array_equal(a["flat"][part].numpy(), b["flat"][part].numpy(), err_msg=part)


def test_schedules_and_batches():
    assert train.lr_at(0, 1e-3, 10) == pytest.approx(1e-4) and train.lr_at(9, 1e-3, 10) == 1e-3
    assert train.lr_at(5000, 1e-3, 10) == 1e-3
    # the cosine variant (train_features): the same warm-up, then lr at the warm-up's end, lr/2 halfway, 0 at the end
    assert train.lr_at(0, 1e-3, 10, cosine_steps=110) == pytest.approx(1e-4)
    assert train.lr_at(10, 1e-3, 10, cosine_steps=110) == pytest.approx(1e-3)
    assert train.lr_at(60, 1e-3, 10, cosine_steps=110) == pytest.approx(5e-4)
    assert train.lr_at(110, 1e-3, 10, cosine_steps=110) == pytest.approx(0.0, abs=1e-12)
    assert train.ema_decay_at(0, 0.999) == pytest.approx(0.1) and train.ema_decay_at(10**6, 0.999) == 0.999
    ds, sched = D.load_dataset("shapes", size=8), make_schedule()
    a, b = train.batch_at(7, 1, ds, 5000, sched, 0.1, 6), train.batch_at(7, 1, ds, 5000, sched, 0.1, 6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], train.batch_at(8, 1, ds, 5000, sched, 0.1, 6)[1]), "each step draws anew"
    dropped = np.mean(a[3] == 6)
    assert 0.08 < dropped < 0.12, f"label dropout {dropped:.3f}, expected 0.1"
    ds0 = D.Dataset(ds.images, np.zeros(len(ds), np.int64), 0, ["all"], "one")
    assert train.batch_at(0, 0, ds0, 4, sched, 0.1, 0)[3] is None
    # a v-predicting model's batch: the same x_t, t, y; the target is v = sqrt(abar) eps - sqrt(1 - abar) x0
    xt, t, v, y = train.batch_at(7, 1, ds, 64, sched, 0.1, 6, prediction="v")
    x0_noise = train.batch_at(7, 1, ds, 64, sched, 0.1, 6)
    np.testing.assert_array_equal(xt, x0_noise[0])
    ab = sched.abar[t][:, None, None, None]
    x0 = (xt - np.sqrt(1 - ab) * x0_noise[2]) / np.sqrt(ab)
    np.testing.assert_allclose(v, np.sqrt(ab) * x0_noise[2] - np.sqrt(1 - ab) * x0, atol=2e-5)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------

def test_truncated_foreign_and_weights_only_checkpoints(straight, tmp_path, capsys):
    ref_out, _ = straight
    blob = (ref_out / "ckpt.safetensors").read_bytes()
    cases = {"truncated": (blob[: len(blob) // 2], "truncated or another format"),
             "foreign": (None, "not written by this project"),
             "weights-only": (None, "no ema/")}
    from safetensors.numpy import save_file
    for name, (content, message) in cases.items():
        out = tmp_path / name
        out.mkdir()
        ckpt = out / "ckpt.safetensors"
        if name == "truncated":
            ckpt.write_bytes(content)
        elif name == "foreign":
            save_file({"w": np.zeros(3, np.float32)}, str(ckpt))
        else:
            params, cfg, meta = np_weights.load_weights(ref_out / "ckpt.safetensors")
            np_weights.save_weights(ckpt, params, cfg, meta)
        with pytest.raises(ValueError, match=message):
            run(out, "--steps", "40", "--resume")
        code, err = cli_error(capsys, TINY + ["--out", str(out), "--steps", "40", "--resume"])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1   # the CLI: the same reason


def test_flags_that_would_change_a_resumed_run_are_refused(straight):
    out, _ = straight
    with pytest.raises(ValueError, match="--batch 4 differs from the checkpoint's 2"):
        train.train(train.build_parser().parse_args(["--out", str(out), "--resume", "--batch", "4"]))
    with pytest.raises(ValueError, match="exists: add --resume"):
        run(out, "--steps", "40")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(out / "elsewhere", "--resume")
    with pytest.raises(SystemExit):
        run(out / "elsewhere", "--steps", "0")


def test_loss_weight_is_a_run_setting_and_old_checkpoints_resume_without_it(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ValueError, match="--loss-weight none differs from the checkpoint's min-snr"):
        train.train(train.build_parser().parse_args(["--out", str(out), "--resume", "--loss-weight", "none"]))
    # a checkpoint written before the setting existed has no loss_weight in its run settings: it resumes with none
    tensors, cfg, meta = np_weights.read_file(os.path.join(out, "ckpt.safetensors"))
    del meta["run"]["loss_weight"]
    old = tmp_path / "old"
    os.makedirs(old)
    part = lambda pre: {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    np_weights.save_weights(os.path.join(old, "ckpt.safetensors"), {k: v for k, v in tensors.items() if "/" not in k},
                            cfg, meta, ema=part("ema/"), extra={k: v for k, v in tensors.items() if k.startswith("opt/")})
    args, _ = train.settle_args(train.build_parser().parse_args(["--out", str(old), "--resume"]))
    assert args.loss_weight == "none" and args.batch == 2


def test_missing_dataset_gives_the_data_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(D, "SYSTEM_DIRS", ())
    code, msg = cli_error(capsys, ["--data", "fashion-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "fashion-mnist" in msg and os.path.join(str(tmp_path), "fashion-mnist") in msg
    assert "--download" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_set_changes_preset_fields_and_is_kept_on_resume(straight):
    from numpy_ref.configs import parse_overrides
    assert parse_overrides(["width=112", "channel_mult=1,2", "skips=false", "mlp_ratio=3"]) == \
        dict(width=112, channel_mult=(1, 2), skips=False, mlp_ratio=3.0)
    with pytest.raises(ValueError, match="depth takes int, not 'x'"):
        parse_overrides(["depth=x"])
    with pytest.raises(ValueError, match="FIELD one of width"):
        parse_overrides(["img_size=16"])                      # the data decides it
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        run(straight[0] / "elsewhere", "--set", "depth")
    with pytest.raises(ValueError, match=r"--set \['depth=3'\] differs from the checkpoint's \[\]"):
        train.train(train.build_parser().parse_args(["--out", str(straight[0]), "--resume", "--set", "depth=3"]))


# ----------------------------------------------------------------------------
# Nothing lost, nothing silent
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
    ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
    ("--lr", "-1e-3", "argument --lr: must be > 0, got -1e-3"),
    ("--lr", "0", "argument --lr: must be > 0, got 0"),
    ("--warmup", "-1", "argument --warmup: must be >= 0"),
    ("--weight-decay", "nan", "argument --weight-decay: must be a finite number"),
    ("--clip", "0", "argument --clip: must be > 0"),
    ("--ema-decay", "1.5", "argument --ema-decay: must be >= 0 and <= 1"),
    ("--label-drop", "-0.1", "argument --label-drop: must be >= 0 and <= 1"),
    ("--seed", "-1", "argument --seed: must be >= 0"),
    ("--batch", "0", "argument --batch: must be > 0"),
    ("--T", "1", "argument --T: must be >= 2"),
    ("--guidance", "inf", "argument --guidance: must be a finite number"),
    ("--ckpt-every", "-5", "argument --ckpt-every: must be >= 0"),
    ("--sample-n", "x", "argument --sample-n: must be an integer, got 'x'"),
])
def test_bad_numbers_are_refused_before_anything_runs(flag, value, message, tmp_path, capsys):
    """argparse refuses them: exit code 2 and the flag, its range and the value in one line, before a dataset is
    read or a kernel compiled (the run's folder is not even made)"""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out", str(out), f"{flag}={value}"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() and time.perf_counter() - t0 < 5


def test_flags_checked_against_each_other_the_device_and_the_output_folder(straight, tmp_path, capsys):
    """Mistakes argparse cannot see alone: one line `error: ...` and exit code 2, before any compile"""
    ckpt = straight[0] / "ckpt.safetensors"
    before = ckpt.read_bytes(), ckpt.stat().st_mtime_ns
    # --resume with --steps at or below the checkpoint's step: nothing to train, and the checkpoint stays as it was
    for steps in ("20", str(STEPS)):
        code, err = cli_error(capsys, ["--out", str(straight[0]), "--resume", "--steps", steps])
        assert code == 2 and f"--steps {steps} is not above the step of {ckpt}, {STEPS}" in err
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before
    code, err = cli_error(capsys, TINY + ["--out", str(tmp_path / "a"), "--device", "NOSUCH"])
    assert code == 2 and "--device NOSUCH: tinygrad has no such backend; devices tinygrad finds here:" in err
    assert "CPU" in err.split("finds here:")[1]
    (tmp_path / "file").write_text("x")
    code, err = cli_error(capsys, TINY + ["--out", str(tmp_path / "file")])
    assert code == 2 and err.strip() == f"error: --out {tmp_path / 'file'} is a file; give a folder"
    code, err = cli_error(capsys, TINY + ["--out", str(tmp_path / "b"), "--T", "20", "--sample-steps", "25"])
    assert code == 2 and "--sample-steps 25 is more than the 20 diffusion timesteps" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_diverging_step_is_never_saved_and_skip_drops_its_update(tmp_path, monkeypatch):
    """Two good steps, then lr 1e6 from step 3 on: step 3's loss and weights are finite but the update multiplies the
    weights' norm. The run stops there with one line naming the step, the norms and the learning rate, and the step-2
    checkpoint stays byte for byte. With --on-nonfinite skip the bad steps' updates are dropped, counted, and the run
    ends with the step-2 weights."""
    monkeypatch.setattr(train, "lr_at", lambda step, lr, warmup, cosine_steps=None: 1e-3 if step < 2 else 1e6)
    diverge = ["--ckpt-every", "1", "--steps", "5"]
    seen = {}

    def keep_checkpoint(step, loss):   # runs after the step's checkpoint is written
        seen[step] = (tmp_path / "stop" / "ckpt.safetensors").read_bytes()

    with pytest.raises(cli.CLIError, match=r"step 3: the update grew the weights' norm from \S+ to \S+e\+\d\d \(loss .*lr "
                       r"1e\+06\): the training diverged, most likely the learning rate is too high; stopped without "
                       r"saving it, .*\(step 2\) is kept"):
        run(tmp_path / "stop", *diverge, callback=keep_checkpoint)
    assert sorted(seen) == [1, 2] and (tmp_path / "stop" / "ckpt.safetensors").read_bytes() == seen[2]
    assert [r["step"] for r in read_log(tmp_path / "stop")] == [1, 2]

    summary = run(tmp_path / "skip", *diverge, "--on-nonfinite", "skip")
    assert summary["step"] == 5 and summary["skipped"] == 3 and not summary["interrupted"]
    log = read_log(tmp_path / "skip")
    assert [r.get("skipped", False) for r in log] == [False, False, True, True, True]
    stopped, _, _ = np_weights.read_file(tmp_path / "stop" / "ckpt.safetensors")
    skipped, _, meta = np_weights.read_file(tmp_path / "skip" / "ckpt.safetensors")
    assert meta["step"] == 5 and np.isfinite(meta["loss"])
    for k in stopped:   # the dropped updates left params, EMA and moments as step 2 had them
        np.testing.assert_array_equal(skipped[k], stopped[k], err_msg=k)
    assert max(np.abs(v).max() for v in skipped.values()) < 100   # nothing huge was saved


def test_an_lr_of_1e6_from_the_first_step_saves_nothing(tmp_path):
    """The probe of the issue: --lr 1e6 --warmup 1 --ckpt-every 1. Step 1's update is refused (the weights' norm
    would grow ~1e7-fold): no checkpoint is written at all."""
    with pytest.raises(cli.CLIError, match="step 1: the update grew the weights' norm .* no checkpoint was written"):
        run(tmp_path, "--lr", "1e6", "--warmup", "1", "--ckpt-every", "1", "--steps", "3")
    assert not (tmp_path / "ckpt.safetensors").exists()


def test_weights_made_nan_by_an_update_with_a_finite_loss_are_not_saved(tmp_path):
    """lr 1e39 is inf in float32: step 1's loss and gradient are finite, its updated weights are not. The finite
    check of the weights inside the step refuses it: no checkpoint with NaN weights is written."""
    with pytest.raises(cli.CLIError, match="step 1: the updated weights hold NaN or inf .* no checkpoint was written"):
        run(tmp_path, "--lr", "1e39", "--warmup", "0", "--ckpt-every", "1", "--steps", "3")
    assert not (tmp_path / "ckpt.safetensors").exists()


def test_sighup_saves_like_ctrl_c(tmp_path):
    def hang_up(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGHUP)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    summary = run(tmp_path, "--steps", str(STEPS), callback=hang_up)
    assert summary["interrupted"] and summary["stopped_by"] == "SIGHUP" and summary["step"] == 3
    assert np_weights.read_file(tmp_path / "ckpt.safetensors")[2]["step"] == 3
    assert {s: signal.getsignal(s) for s in before} == before, "the handlers must be restored"


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    """The signal a timeout, docker stop, Slurm or systemd sends: the step finishes, the checkpoint is saved, the
    process exits 0 and says how to continue"""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_impl.train", *TINY, "--steps", "100000", "--out",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.time() + 600
        while not ((tmp_path / "log.jsonl").exists() and (tmp_path / "log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "SIGTERM: saving a checkpoint after this step" in output and "SIGTERM: stopped at step" in output
    saved = np_weights.read_file(tmp_path / "ckpt.safetensors")[2]["step"]
    assert 1 <= saved < 100000 and len(read_log(tmp_path)) == saved
    summary = run(tmp_path, "--steps", str(saved + 2), "--resume")
    assert summary["start"] == saved and summary["step"] == saved + 2
