"""The attribute classifier and the text-to-image measurement: NumPy and tinygrad agree, files both ways with clear
errors, judging reads the grid right, a short training beats chance, and evaluate_text prints its table for a tiny
text checkpoint made by the training CLI (device CPU: conftest's default)."""
import json

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import attributes as NA
from numpy_ref import weights as W
from numpy_ref.captions import MAX_LEN, VOCAB, load_captioned, make_captioned
from numpy_ref.configs import PRESETS, get_config
from numpy_ref.text import vocab_to_json
from tinygrad_impl import attributes as TA
from tinygrad_impl import evaluate_text, train_attributes
from util import assert_close, cli_fails, random_params

CFG = NA.AttributeConfig(img_size=16, in_channels=3, width=8, hidden=16)


def random_attribute_params(cfg, seed=0):
    """Every tensor random (init_params has unit norm scales and zero biases, which hide mistakes there)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in NA.param_shapes(cfg).items():
        scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.5
        out[name] = (rng.standard_normal(shape) * scale + (1.0 if name.endswith("norm.weight") else 0.0)).astype(np.float32)
    return out


def perfect_logits(attrs):
    """The logits a perfect classifier would give the images of attrs: +-4 objectness, one-hot heads."""
    t = NA.cell_targets(attrs)
    out = {"object": t["object"] * 8 - 4}
    for name, k in NA.HEADS:
        out[name] = np.eye(k)[np.maximum(t[name], 0)] * (t[name][..., None] >= 0)
    return out


# ----------------------------------------------------------------------------
# The network and its files
# ----------------------------------------------------------------------------

def test_numpy_and_tinygrad_agree(size=24):   # a 3x3 stride-8 map: the cell centres fall between its positions
    cfg = NA.AttributeConfig(img_size=size, width=8, hidden=16)
    params = random_attribute_params(cfg, seed=1)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
    ref = NA.forward(params, x)
    out = TA.forward({k: Tensor(v) for k, v in params.items()}, Tensor(x))
    assert {k: v.shape for k, v in ref.items()} == {"object": (3, 9), "shape": (3, 9, 6), "colour": (3, 9, 7),
                                                     "size": (3, 9, 2)}
    for k in ref:
        assert np.abs(ref[k]).std() > 1e-2, k
        assert_close(ref[k], out[k].numpy(), what=k)
    # the batched helper gives the numbers of one forward
    np.testing.assert_allclose(NA.compute_logits(params, np.concatenate([x, x]), batch=2)["shape"],
                               np.concatenate([ref["shape"]] * 2), rtol=1e-5, atol=1e-6)


def test_init_params_and_the_cell_pool():
    a, b = NA.init_params(CFG, seed=3), TA.init_params(CFG, seed=3)
    assert sorted(a) == sorted(b) == sorted(NA.param_shapes(CFG))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy(), err_msg=k)
    for n in (2, 3, 4, 5):
        pool = NA.cell_pool(n, n)
        assert pool.shape == (9, n * n) and np.allclose(pool.sum(1), 1) and (pool >= 0).all()
    pool = NA.cell_pool(4, 4).reshape(9, 4, 4)      # 32x32: cell (r, c) is the mean of a 2x2 block of the 4x4 map
    assert np.allclose(pool[0, :2, :2], 0.25) and np.allclose(pool[8, 2:, 2:], 0.25) and pool[0, 2:].sum() == 0
    with pytest.raises(ValueError, match="img_size=8 must be >= 16"):
        NA.AttributeConfig(img_size=8)
    with pytest.raises(ValueError, match="trained on \\(3, 16, 16\\) images.*--size 32"):
        NA.check_images(CFG, (2, 3, 32, 32))


def test_judge_reads_the_grid():
    _, _, attrs = make_captioned(64, size=16, seed=7)
    assert {1, 2} <= set(attrs["count"].tolist())
    logits = perfect_logits(attrs)
    ok = NA.judge(logits, attrs)
    assert all(v.all() for v in ok.values()), {k: v.mean() for k, v in ok.items()}
    one = np.nonzero(attrs["count"] == 1)[0][0]
    two = np.nonzero(attrs["count"] == 2)[0][0]
    moved = {k: v.copy() for k, v in logits.items()}
    # the one object drawn one cell over, with its looks: wrong position, right shape, colour and size
    cell, other = attrs["position"][one, 0], (attrs["position"][one, 0] + 1) % 9
    moved["object"][one, [cell, other]] = moved["object"][one, [other, cell]]
    for name, _ in NA.HEADS:
        moved[name][one, other] = moved[name][one, cell]
    # the second of two objects with the wrong colour
    c1 = attrs["position"][two, 1]
    moved["colour"][two, c1] = np.roll(moved["colour"][two, c1], 1)
    ok = NA.judge(moved, attrs)
    assert not ok["position"][one] and ok["shape"][one] and ok["colour"][one] and ok["count"][one]
    assert not ok["colour"][two] and ok["shape"][two] and ok["position"][two] and not ok["all"][two]
    assert ok["all"].sum() == 62
    # a third object makes the count wrong
    extra = {k: v.copy() for k, v in logits.items()}
    extra["object"][one] = 4
    assert not NA.judge(extra, attrs)["count"][one]
    acc = NA.accuracies(ok, attrs["count"] == 2)
    assert acc["colour"] == pytest.approx(1 - 1 / (attrs["count"] == 2).sum())
    assert np.isnan(NA.accuracies(ok, np.zeros(64, bool))["all"])


def test_attribute_files_both_ways_and_their_errors(tmp_path):
    params = random_attribute_params(CFG, seed=6)
    acc = {"shape": 0.75, "all": 0.5}
    path = NA.save_attributes(tmp_path / "a.safetensors", params, CFG, acc, {"steps": 3})
    p_tg, cfg, meta = TA.load_attributes(path)
    assert cfg == CFG and meta["test_accuracy"] == acc and meta["steps"] == 3
    TA.save_attributes(tmp_path / "b.safetensors", p_tg, cfg, acc)
    p_np, _, _ = NA.load_attributes(tmp_path / "b.safetensors")
    for k in params:
        np.testing.assert_array_equal(params[k], p_np[k], err_msg=k)
    assert not list(tmp_path.glob(".tmp-*"))                     # written atomically: no temporary file left
    with pytest.raises(FileNotFoundError, match="python -m tinygrad_impl.train_attributes"):
        NA.load_attributes(tmp_path / "none.safetensors")
    mcfg = PRESETS["tokenfree-tiny"]
    W.save_weights(tmp_path / "model.safetensors", random_params(mcfg), mcfg)
    with pytest.raises(ValueError, match="not an attribute classifier"):
        NA.load_attributes(tmp_path / "model.safetensors")
    data = open(path, "rb").read()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        NA.load_attributes(tmp_path / "trunc.safetensors")
    with pytest.raises(ValueError, match="'cells.fc.weight' has shape"):
        NA.save_attributes(tmp_path / "bad.safetensors", dict(params, **{"cells.fc.weight": np.zeros((2, 2))}), CFG, acc)
    assert NA.attributes_path() == "data/attributes-captions.safetensors"
    assert NA.attributes_path(16) == "data/attributes-captions-16.safetensors"


# ----------------------------------------------------------------------------
# Training, then evaluate_text on a tiny text checkpoint
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(classifier file, summary) of a short train_attributes run at 16x16 (compiling its step is most of it)."""
    out = tmp_path_factory.mktemp("attr") / "attributes-16.safetensors"
    summary = train_attributes.main(["--size", "16", "--steps", "120", "--batch", "32", "--width", "8", "--hidden", "16",
                                     "--warmup", "10", "--held-out-images", "200", "--lr", "1e-2", "--out", str(out)])
    return out, summary


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    """A tokenfree-tiny text model for 16x16 captions with random (non-zero) weights and the vocabulary, as the
    training CLI writes it (test_text_cli trains one; compiling a training step here would triple this file's time)."""
    cfg = get_config("tokenfree-tiny", img_size=16, num_classes=0, text_vocab=len(VOCAB), text_len=MAX_LEN, depth=1,
                     text_width=8, text_depth=1, text_heads=2)
    path = tmp_path_factory.mktemp("text") / "ckpt.safetensors"
    meta = dict(step=2, data="captions", schedule="linear", T=1000, preset="tokenfree-tiny", vocab=vocab_to_json(VOCAB),
                run=dict(cond="text"))
    W.save_weights(path, random_params(cfg, seed=1), cfg, meta, ema=random_params(cfg, seed=2))
    return path


def test_a_short_training_beats_chance(trained, capsys):
    out, summary = trained
    params, cfg, meta = NA.load_attributes(out)
    assert cfg == NA.AttributeConfig(img_size=16, width=8, hidden=16) and meta["steps"] == 120
    # the stored accuracy is what judge() measures on the real test images with the NumPy forward
    test = load_captioned("test", 16)
    ok = NA.judge(NA.compute_logits(params, test.images), test.attributes)
    assert meta["test_accuracy"] == pytest.approx(NA.accuracies(ok))
    one = test.attributes["count"] == 1
    acc = NA.accuracies(ok, one)
    assert acc["position"] > 0.5 and acc["size"] > 0.75, acc       # chance: 1/9 and 1/2 (colour and shape come later)
    assert set(meta["heldout_accuracy"]) == {*NA.ATTRIBUTES, "all"}
    assert [r[:2] for r in summary["rows"]] == [(s, o) for s in ("test", "heldout") for o in ("1", "2", "all")]
    line = cli_fails(capsys, train_attributes.main, ["--size", "8", "--out", str(out.parent / "x.safetensors")])
    assert "argument --size: must be >= 16, got 8" in line


def test_evaluate_text_prints_one_row_per_split_guidance_and_object_count(trained, text_ckpt, tmp_path, capsys):
    clf, summary = trained
    flags = ["--ckpt", str(text_ckpt), "--attributes", str(clf), "--steps", "2", "--batch", "3", "--seed", "1"]
    res = evaluate_text.main([*flags, "--n", "5", "--guidance", "2", "3", "--split", "test", "heldout",
                              "--json", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    assert json.load(open(tmp_path / "r.json")) == json.loads(json.dumps(res))
    expected = []
    for split in ("test", "heldout"):
        counts = evaluate_text.pick_captions(split, 5, 16, seed=1)[2]["count"]
        expected += [(split, g, o, int((counts == o).sum())) for g in (2.0, 3.0) for o in (1, 2) if (counts == o).any()]
    assert [(r["split"], r["guidance"], r["objects"], r["n"]) for r in res["rows"]] == expected
    for split, g, o, n in expected:
        assert f"| {split} | {g:g} | {o} | {n} |" in table, table
    assert "| split | guidance | objects | n | count | shape | colour | size | position | all |" in table
    assert "ddim 2 steps" in table and all(0 <= r["all"] <= 1 for r in res["rows"])
    # --real judges the real images: on the whole test split, what training printed
    res = evaluate_text.main(["--real", "--attributes", str(clf), "--size", "16", "--n", "5000", "--split", "test"])
    trained_rows = {o: acc for split, o, _, acc in summary["rows"] if split == "test"}
    for r in res["rows"]:
        for a in (*NA.ATTRIBUTES, "all"):
            assert r[a] == pytest.approx(trained_rows[str(r["objects"])][a]), (r, a)
    assert "| test | real | 1 |" in capsys.readouterr().out


def test_evaluate_text_errors(trained, text_ckpt, tmp_path, capsys):
    clf, _ = trained
    mcfg = PRESETS["tokenfree-tiny"]
    class_ckpt = W.save_weights(tmp_path / "class.safetensors", random_params(mcfg), mcfg, {"data": "shapes"})
    line = cli_fails(capsys, evaluate_text.main, ["--ckpt", str(class_ckpt), "--attributes", str(clf)])
    assert "is a class-conditional (4 classes) model, not text-conditioned" in line and "tinygrad_impl.evaluate" in line
    missing = tmp_path / "none.safetensors"
    line = cli_fails(capsys, evaluate_text.main, ["--ckpt", str(text_ckpt), "--attributes", str(missing)])
    assert f"no attribute classifier at {missing}: make it with python -m tinygrad_impl.train_attributes --size 16 " \
           f"--out {missing}" == line.removeprefix("error: ")
    small = get_config("tokenfree-tiny", img_size=8, num_classes=0, text_vocab=len(VOCAB), text_len=MAX_LEN, depth=1,
                       text_width=8, text_depth=1, text_heads=2)
    W.save_weights(tmp_path / "small.safetensors", random_params(small), small, {"data": "captions"})
    line = cli_fails(capsys, evaluate_text.main, ["--ckpt", str(tmp_path / "small.safetensors")])
    assert "makes 8x8 images: too small to judge" in line and "--size 16" in line
    line = cli_fails(capsys, evaluate_text.main, ["--n", "5"])
    assert "--ckpt is required" in line
    line = cli_fails(capsys, evaluate_text.main, ["--real", "--size", "32", "--attributes", str(clf)])
    assert "trained on (3, 16, 16) images" in line and "train_attributes --size 32" in line
    line = cli_fails(capsys, evaluate_text.main, ["--ckpt", str(text_ckpt), "--attributes", str(clf), "--steps", "5000"])
    assert "--steps must be in 1..1000" in line
