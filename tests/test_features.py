"""The feature network: NumPy and tinygrad agree, tinygrad's gradient matches finite differences, files both
ways with clear errors, and the training CLI learns the built-in dataset at 8x8."""
import json
import os

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import features as NF
from numpy_ref import weights as W
from numpy_ref.configs import PRESETS
from numpy_ref.layers import linear
from tinygrad_impl import features as TF
from tinygrad_impl import train_features
from util import assert_close, cli_fails, random_params

CFG = NF.FeatureConfig(img_size=8, in_channels=3, num_classes=5, width=8)


def random_feature_params(cfg, seed=0, dtype=np.float32):
    """Every tensor random (init_params has unit norm scales and zero biases, which hide mistakes there)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in NF.param_shapes(cfg).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.5
        out[name] = (rng.standard_normal(shape) * scale + (1.0 if name.endswith("norm.weight") else 0.0)).astype(dtype)
    return out


def test_numpy_and_tinygrad_agree():
    cfg = NF.FeatureConfig(img_size=8, in_channels=1, num_classes=3, width=8)   # 3 channels: the gradient test
    params = random_feature_params(cfg, seed=1)
    x = np.random.default_rng(2).uniform(-1, 1, (4, cfg.in_channels, cfg.img_size, cfg.img_size)).astype(np.float32)
    f_np, l_np = NF.forward(params, x)
    p_tg = {k: Tensor(v) for k, v in params.items()}
    f_tg, l_tg = TF.forward(p_tg, Tensor(x))
    assert f_np.shape == (4, cfg.feature_dim) and l_np.shape == (4, cfg.num_classes)
    assert np.abs(f_np).max() > 1e-2 and np.abs(l_np).std() > 1e-2
    assert_close(f_np, f_tg.numpy(), what="features")
    assert_close(l_np, l_tg.numpy(), what="logits")
    # the batched helpers (tinygrad pads the last batch to the same shape) give the numbers of one forward
    x3 = np.concatenate([x, x, x[:2]])
    f_b, l_b = TF.compute_features(p_tg, x3, batch=4)
    assert_close(np.concatenate([f_np, f_np, f_np[:2]]), f_b, what="tinygrad compute_features")
    f_n, _ = NF.compute_features(params, x3, batch=3)
    np.testing.assert_allclose(f_n, np.concatenate([f_np, f_np, f_np[:2]]), rtol=1e-5, atol=1e-6)


def test_init_params_are_the_same_on_both_sides():
    a, b = NF.init_params(CFG, seed=3), TF.init_params(CFG, seed=3)
    assert sorted(a) == sorted(b) == sorted(NF.param_shapes(CFG))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy(), err_msg=k)
        assert a[k].shape == NF.param_shapes(CFG)[k]


def test_gradient_of_the_classification_loss_matches_finite_differences():
    params64 = random_feature_params(CFG, seed=4, dtype=np.float64)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (4, 3, 8, 8))
    y = np.array([0, 1, 4, 2])

    def loss(p):   # mean cross-entropy in float64 NumPy
        _, logits = NF.forward(p, x)
        z = logits - logits.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(4), y]))

    names = ["blocks.0.conv.weight", "blocks.1.norm.weight", "blocks.3.conv.bias", "head.weight"]
    p_tg = {k: Tensor(v.astype(np.float32)) for k, v in params64.items()}
    _, logits = TF.forward(p_tg, Tensor(x.astype(np.float32)))
    grads = logits.sparse_categorical_crossentropy(Tensor(y.astype(np.int32))).gradient(*[p_tg[k] for k in names])
    for name, g in zip(names, grads):
        g = g.numpy()
        for idx in [tuple(rng.integers(0, s) for s in params64[name].shape) for _ in range(3)]:
            h = 1e-5
            plus, minus = dict(params64), dict(params64)
            plus[name], minus[name] = params64[name].copy(), params64[name].copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            fd = (loss(plus) - loss(minus)) / (2 * h)
            assert abs(g[idx] - fd) <= 1e-4 + 1e-2 * abs(fd), f"d/d{name}{list(idx)}: tinygrad {g[idx]:.6g}, FD {fd:.6g}"


def test_feature_files_both_ways_and_their_errors(tmp_path):
    params = random_feature_params(CFG, seed=6)
    path = NF.save_features(tmp_path / "f.safetensors", params, CFG, "shapes", 0.875, {"steps": 3})
    p_tg, cfg, meta = TF.load_features(path)
    assert cfg == CFG and meta["dataset"] == "shapes" and meta["test_accuracy"] == 0.875 and meta["steps"] == 3
    TF.save_features(tmp_path / "g.safetensors", p_tg, cfg, "shapes", 0.5)
    p_np, _, meta = NF.load_features(tmp_path / "g.safetensors")
    assert meta["test_accuracy"] == 0.5
    for k in params:
        np.testing.assert_array_equal(params[k], p_np[k], err_msg=k)
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        md = f.metadata()
    assert md["kind"] == "features" and json.loads(md["config"])["width"] == 8
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask   # written like a new file, not safetensors' 0600

    # a diffusion checkpoint where a feature network belongs, a truncated file, a missing one, a bad tensor
    mcfg = PRESETS["tokenfree-tiny"]
    W.save_weights(tmp_path / "model.safetensors", random_params(mcfg), mcfg)
    with pytest.raises(ValueError, match="diffusion model checkpoint; give it as --ckpt"):
        NF.load_features(tmp_path / "model.safetensors")
    data = open(path, "rb").read()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        NF.load_features(tmp_path / "trunc.safetensors")
    with pytest.raises(FileNotFoundError, match="train_features --data"):
        NF.load_features(tmp_path / "none.safetensors")
    bad = dict(params, **{"head.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="'head.weight' has shape"):
        NF.save_features(tmp_path / "bad.safetensors", bad, CFG, "shapes", 0.1)
    assert not (tmp_path / "bad.safetensors").exists()


def test_bad_configs_and_images_raise_clear_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        NF.FeatureConfig(width=12)
    with pytest.raises(ValueError, match="at least 2 classes"):
        NF.FeatureConfig(num_classes=0)
    NF.check_images(CFG, (5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"trained on \(3, 8, 8\) images.*--size 16"):
        NF.check_images(CFG, (5, 3, 16, 16))
    assert NF.features_path("shapes") == "data/features/shapes.safetensors"
    assert NF.features_path("shapes", 8) == "data/features/shapes-8.safetensors"


def test_random_shift_moves_content_and_keeps_shape():
    x = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(train_features.random_shift(x, rng, 0), x)
    out = train_features.random_shift(x, np.random.default_rng(1), 2)
    assert out.shape == x.shape and not np.array_equal(out, x)
    # every output is a window of the edge-padded input
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    for i in range(2):
        assert any(np.array_equal(out[i], padded[i, :, a:a + 6, b:b + 6]) for a in range(5) for b in range(5))


def test_train_features_cli_learns_the_built_in_shapes(tmp_path, capsys):
    out = tmp_path / "feat.safetensors"
    summary = train_features.main(["--data", "shapes", "--size", "8", "--steps", "100", "--batch", "32", "--width", "16",
                                   "--warmup", "10", "--lr", "5e-3", "--out", str(out)])
    params, cfg, meta = NF.load_features(out)
    assert cfg == NF.FeatureConfig(img_size=8, in_channels=3, num_classes=6, width=16)
    assert meta["dataset"] == "shapes" and meta["steps"] == 100 and meta["class_names"][0] == "circle"
    # the stored accuracy is what the NumPy forward measures on the test split, and far above chance (1/6)
    from numpy_ref.data import load_dataset
    test = load_dataset("shapes", "test", size=8)
    _, logits = NF.compute_features(params, test.images)
    assert meta["test_accuracy"] == pytest.approx(float((logits.argmax(1) == test.labels).mean()))
    assert meta["test_accuracy"] > 0.4, f"test accuracy {meta['test_accuracy']:.3f} after 100 steps"
    assert summary["test_accuracy"] == meta["test_accuracy"]
    assert "test accuracy" in capsys.readouterr().out
    line = cli_fails(capsys, train_features.main, ["--steps", "0", "--out", str(tmp_path / "x.safetensors")])
    assert "argument --steps: must be > 0, got 0" in line


# ----------------------------------------------------------------------------
# The evaluation CLI on a tiny checkpoint
# ----------------------------------------------------------------------------

def tiny_checkpoint_and_features(tmp_path):
    """A tokenfree-tiny model (8x8x3, the 6 classes of shapes) with random weights and a random EMA copy, and a
    feature network for 8x8 shapes made here (untrained: the test is about the plumbing, not its quality)."""
    from dataclasses import replace
    cfg = replace(PRESETS["tokenfree-tiny"], num_classes=6)
    ckpt = W.save_weights(tmp_path / "ckpt.safetensors", random_params(cfg, 1), cfg,
                          {"data": "shapes", "schedule": "linear", "T": 1000, "step": 5, "preset": "tokenfree-tiny"},
                          ema=random_params(cfg, 2))
    fcfg = NF.FeatureConfig(img_size=8, in_channels=3, num_classes=6, width=8)
    feats = NF.save_features(tmp_path / "feat.safetensors", random_feature_params(fcfg, 3), fcfg, "shapes", 0.25)
    return str(ckpt), str(feats)


def test_evaluate_cli_on_a_tiny_checkpoint_both_backends(tmp_path, capsys):
    from tinygrad_impl import evaluate
    ckpt, feats = tiny_checkpoint_and_features(tmp_path)
    common = ["--ckpt", ckpt, "--features", feats, "--n", "12", "--batch", "8", "--steps", "2", "--ref-n", "60",
              "--kid-subsets", "4", "--seed", "1"]
    res_tg = evaluate.main(common + ["--json", str(tmp_path / "tg.json")])
    table = capsys.readouterr().out
    res_np = evaluate.main(common + ["--numpy"])
    assert json.load(open(tmp_path / "tg.json")) == json.loads(json.dumps(res_tg))
    info = res_tg["info"]
    assert (info["n"], info["sampler"], info["steps"], info["weights"], info["data"]) == (12, "ddim", 2, "EMA", "shapes")
    for text in ("12 samples: ddim 2 steps", "EMA weights", "| samples (EMA) | 12 |", "| real test (floor) | 12 |",
                 "| Gaussian noise (ceiling) | 12 |", "test accuracy 0.2500", "60 real train images"):
        assert text in table, f"{text!r} missing from:\n{table}"
    per_class = res_tg["rows"][0]["class_acc_per_class"]   # 12 samples, 2 of each class: their mean is the overall
    assert len(per_class) == 6 and np.mean(per_class) == pytest.approx(res_tg["rows"][0]["class_acc"])
    # (this checkpoint's metadata names no classes, so the line numbers them; a training checkpoint names them)
    assert f"per class: 0 {per_class[0]:.2f}, 1 " in table and f", 5 {per_class[5]:.2f}" in table
    samples, test, noise = res_tg["rows"]
    # the same seed draws the same images in both backends (2 batches, the second filled up to 8 and cut)
    for a, b in zip(res_tg["rows"], res_np["rows"]):
        for key in ("fd", "kid", "precision", "recall", "class_acc"):
            if a[key] is None or b[key] is None:               # no class accuracy for the noise row: None in both
                assert a[key] is None and b[key] is None, (a["set"], key)
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["set"], key)
    # calibration: real test images sit much closer to the real train set than noise does
    assert test["fd"] < 0.5 * noise["fd"]
    assert noise["class_acc"] is None and samples["class_acc"] is not None
    # the test row's class accuracy is the classifier's accuracy on those images, measured independently
    _, test_imgs, test_labels = evaluate.real_sets("shapes", W.read_file(ckpt)[1], n=12, ref_n=60, seed=1)
    params, _, _ = NF.load_features(feats)
    _, logits = NF.compute_features(params, test_imgs)
    assert test["class_acc"] == pytest.approx(float((logits.argmax(1) == test_labels).mean()))
    # raw weights differ from the EMA copy
    res_raw = evaluate.main(common + ["--numpy", "--raw"])
    assert res_raw["info"]["weights"] == "raw" and res_raw["rows"][0]["fd"] != pytest.approx(samples["fd"])


def evaluate_fails(capsys, argv):
    from tinygrad_impl import evaluate
    return cli_fails(capsys, evaluate.main, argv)


def test_evaluate_cli_explains_what_is_missing(tmp_path, capsys):
    ckpt, feats = tiny_checkpoint_and_features(tmp_path)
    base = ["--ckpt", ckpt, "--n", "12", "--numpy"]
    assert "train_features --data shapes --size 8 --out" in evaluate_fails(
        capsys, base + ["--features", str(tmp_path / "none.safetensors")])
    fcfg = NF.FeatureConfig(img_size=16, in_channels=3, num_classes=6, width=8)
    NF.save_features(tmp_path / "f16.safetensors", NF.init_params(fcfg), fcfg, "shapes", 0.5)
    assert "trained on (3, 16, 16) images" in evaluate_fails(capsys, base + ["--features", str(tmp_path / "f16.safetensors")])
    fcfg = NF.FeatureConfig(img_size=8, in_channels=3, num_classes=10, width=8)
    NF.save_features(tmp_path / "fm.safetensors", NF.init_params(fcfg), fcfg, "mnist", 0.5)
    assert "trained on mnist, the checkpoint on shapes" in evaluate_fails(
        capsys, base + ["--features", str(tmp_path / "fm.safetensors")])
    assert "give it as --ckpt" in evaluate_fails(capsys, base + ["--features", ckpt])
    assert "--n 3 is too few" in evaluate_fails(capsys, ["--ckpt", ckpt, "--features", feats, "--n", "3"])


# every flag checked before anything is sampled: (flags, what the one-line error must say)
EVALUATE_BAD_FLAGS = [
    (["--guidance", "nan"], "argument --guidance: must be a finite number, got nan"),
    (["--guidance", "-1"], "argument --guidance: must be >= 0, got -1"),
    (["--eta", "-1"], "argument --eta: must be >= 0 and <= 1, got -1"),
    (["--steps", "0"], "argument --steps: must be > 0, got 0"),
    (["--steps", "5000"], "--steps must be in 1..1000 (the checkpoint's schedule has T = 1000), got 5000"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--batch", "0"], "argument --batch: must be > 0, got 0"),
    (["--n", "-5"], "argument --n: must be > 0, got -5"),
    (["--k", "0"], "argument --k: must be > 0, got 0"),
    (["--kid-subset-size", "1"], "argument --kid-subset-size: must be >= 2, got 1"),
    (["--ref-n", "3"], "--ref-n must be >= 5 (more than --k 3 + 1), got 3"),
    (["--sampler", "dpmpp2m", "--eta", "0.5"], "--eta must be 0 for --sampler dpmpp2m"),
    (["--device", "NOSUCH"], "--device NOSUCH: tinygrad has no such backend; devices tinygrad finds here: "),
]


@pytest.mark.parametrize("extra, message", EVALUATE_BAD_FLAGS, ids=[" ".join(f) for f, _ in EVALUATE_BAD_FLAGS])
def test_evaluate_bad_flags_are_one_line_errors_with_exit_code_2(tmp_path, capsys, extra, message):
    ckpt, feats = tiny_checkpoint_and_features(tmp_path)
    line = evaluate_fails(capsys, ["--ckpt", ckpt, "--features", feats, "--n", "12", "--ref-n", "60",
                                   "--json", str(tmp_path / "r.json"), *extra])
    assert message in line
    assert not (tmp_path / "r.json").exists()


def test_evaluate_refuses_nan_weights_and_an_unwritable_json_before_sampling(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.numpy import save_file
    ckpt, feats = tiny_checkpoint_and_features(tmp_path)
    with safe_open(ckpt, "np") as f:   # a diverged run: the EMA copy holds a NaN (save_weights refuses to write it)
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = "final_conv.bias"
    tensors[f"ema/{name}"][0] = np.nan
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    base = ["--ckpt", str(tmp_path / "nan.safetensors"), "--features", feats, "--n", "12", "--ref-n", "60"]
    line = evaluate_fails(capsys, base)
    assert f"the EMA weights hold NaN or inf in 1 tensor ({name})" in line and "or try --raw" in line
    # --json is tried first: a folder is refused before the (bad) checkpoint is read
    assert f"--json {tmp_path} is a folder" in evaluate_fails(capsys, base + ["--json", str(tmp_path)])
    (tmp_path / "a_file").write_text("")
    assert "cannot create the folder of --json" in evaluate_fails(capsys, base + ["--json", str(tmp_path / "a_file" / "r.json")])


def test_evaluate_samples_do_not_depend_on_the_batch_size(tmp_path):
    """Sample i has its own noise and class i % K: batches of 5 or 12, NumPy or tinygrad, draw the same images."""
    from tinygrad_impl import evaluate
    ckpt, _ = tiny_checkpoint_and_features(tmp_path)
    params, cfg, meta, _ = W.load_for_sampling(ckpt)
    sched = evaluate.schedule_of(meta)
    one, labels = evaluate.generate(params, cfg, sched, 12, steps=2, guidance=2.0, seed=1, batch=12, use_numpy=True)
    cut, labels5 = evaluate.generate(params, cfg, sched, 12, steps=2, guidance=2.0, seed=1, batch=5, use_numpy=True)
    assert one.shape == (12, 3, 8, 8) and labels.tolist() == labels5.tolist() == [i % 6 for i in range(12)]
    assert np.abs(one[1:] - one[:1]).max() > 0.1
    np.testing.assert_allclose(cut, one, atol=1e-3)
