"""Training: the CLI on the built-in data learns, Ctrl-C + --resume equals a straight run bit for bit,
one jitted AdamW step equals a NumPy AdamW, and bad checkpoints / flags / datasets give clear errors.

Every run here uses one shape (tokenfree-tiny, 8x8 shapes, batch 2, sample grids of 4) so tinygrad
compiles the training step and the sampler once for the whole file."""
import json
import os
import signal

import numpy as np
import pytest
from tinygrad import Context, Tensor

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

    first = run(tmp_path, "--steps", str(STEPS), callback=press_ctrl_c)
    assert first["interrupted"] and first["step"] == 12
    assert np_weights.read_file(tmp_path / "ckpt.safetensors")[2]["step"] == 12
    assert len(read_log(tmp_path)) == 12
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the SIGINT handler must be restored"
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

def test_truncated_foreign_and_weights_only_checkpoints(straight, tmp_path):
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
        with pytest.raises(SystemExit, match=message):   # the CLI prints the same reason
            train.main(TINY + ["--out", str(out), "--steps", "40", "--resume"])


def test_flags_that_would_change_a_resumed_run_are_refused(straight):
    out, _ = straight
    with pytest.raises(ValueError, match="--batch 4 differs from the checkpoint's 2"):
        train.train(train.build_parser().parse_args(["--out", str(out), "--resume", "--batch", "4"]))
    with pytest.raises(ValueError, match="exists: add --resume"):
        run(out, "--steps", "40")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(out / "elsewhere", "--resume")
    with pytest.raises(ValueError, match="--steps must be >= 1"):
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


def test_missing_dataset_gives_the_data_message(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", ())
    with pytest.raises(SystemExit) as e:
        train.main(["--data", "fashion-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    msg = str(e.value)
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
