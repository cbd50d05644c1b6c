"""Text-to-image from the command line: train --data captions (--cond text), sample --prompt in NumPy and tinygrad
(the same images from a seed), and the one-line errors of conditions that do not fit the checkpoint."""
import json

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import samplers as S
from numpy_ref import sample as np_sample
from numpy_ref import weights as np_weights
from numpy_ref.captions import MAX_LEN, VOCAB
from numpy_ref.configs import get_config
from numpy_ref.data import load_dataset
from numpy_ref.schedule import make_schedule
from numpy_ref.text import vocab_to_json
from tinygrad_impl import evaluate
from tinygrad_impl import sample as tg_sample
from tinygrad_impl import samplers as TS
from tinygrad_impl import train
from util import cli_fails, random_params

TINY = ["--size", "8", "--preset", "tokenfree-tiny", "--set", "depth=1", "text_width=8", "text_depth=1",
        "text_heads=2"]
PROMPTS = ["a small red triangle at the top left", "a big blue circle at the center"]


def text_cfg(**kw):
    return get_config("tokenfree-tiny", img_size=8, num_classes=0, text_vocab=len(VOCAB), text_len=MAX_LEN,
                      text_width=8, text_depth=1, text_heads=2, depth=1, **kw)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    """A tiny text-conditioned checkpoint with random (non-zero) weights and the vocabulary, as train writes it."""
    cfg = text_cfg()
    path = tmp_path_factory.mktemp("text") / "ckpt.safetensors"
    meta = dict(step=3, data="captions", schedule="linear", T=1000, seed=0, batch=2, vocab=vocab_to_json(VOCAB),
                run=dict(cond="text"))
    np_weights.save_weights(path, random_params(cfg, seed=1), cfg, meta, ema=random_params(cfg, seed=2))
    return path


@pytest.fixture(scope="module")
def class_ckpt(tmp_path_factory):
    cfg = get_config("tokenfree-tiny", img_size=8, num_classes=6)
    path = tmp_path_factory.mktemp("class") / "ckpt.safetensors"
    np_weights.save_weights(path, random_params(cfg, seed=1), cfg, dict(class_names=["circle"] * 6))
    return path


def flags(ckpt, out, *extra):
    return ["--ckpt", str(ckpt), "--steps", "3", "--n", "4", "--seed", "5", "--guidance", "2.0", "--out", str(out),
            "--npy", str(out.with_suffix(".npy")), *extra]


def test_a_tiny_text_run_trains_and_saves_its_vocabulary(tmp_path):
    out = tmp_path / "run"
    summary = train.main(["--data", "captions", *TINY, "--batch", "2", "--steps", "3", "--sample-steps", "2",
                          "--sample-n", "2", "--sample-every", "0", "--ckpt-every", "0", "--out", str(out),
                          "--device", "CPU"])
    assert summary["step"] == 3 and np.isfinite(summary["loss"]) and (out / "samples_000003.png").exists()
    tensors, cfg, meta = np_weights.read_file(out / "ckpt.safetensors")
    assert cfg.text_vocab == len(VOCAB) and cfg.num_classes == 0 and cfg.text_len == MAX_LEN
    assert meta["run"]["cond"] == "text" and json.loads(meta["vocab"]) == list(VOCAB)
    assert any(k.startswith("text.") for k in tensors) and any(k.startswith("ema/text.") for k in tensors)
    assert any(k.startswith("opt/m/text.") for k in tensors), "AdamW must cover the text encoder"


def test_batches_of_a_text_model_are_token_ids_with_dropped_prompts_empty():
    ds = load_dataset("captions", "train", size=8)
    cfg, sched = text_cfg(), make_schedule("linear", 1000)
    ids = train.caption_ids(ds, cfg)
    assert ids.shape == (len(ds), MAX_LEN)
    xt, t, target, y = train.batch_at(3, 0, ds, 64, sched, 0.5, cfg, text_ids=ids)
    assert y.shape == (64, MAX_LEN) and y.dtype == np.int64
    dropped = (y == 0).all(1)
    assert 0 < dropped.sum() < 64, "about half of the prompts are dropped to the empty one"
    # the draws are those of a class model: the same x_t, t, target; y the labels of the same images
    cxt, ct, ctarget, cy = train.batch_at(3, 0, ds, 64, sched, 0.5, ds.num_classes)
    np.testing.assert_array_equal(xt, cxt), np.testing.assert_array_equal(t, ct)
    assert (cy == ds.num_classes).tolist() == dropped.tolist()
    # a class config gives what the null class id gives
    ccfg = get_config("tokenfree-tiny", img_size=8, num_classes=ds.num_classes)
    np.testing.assert_array_equal(train.batch_at(3, 0, ds, 64, sched, 0.5, ccfg)[3], cy)


def test_guidance_of_token_ids_uses_the_empty_prompt():
    seen = []

    def fn(x, t, y):
        seen.append(np.asarray(y))
        return x * (1.0 + np.asarray(y).sum(1).reshape(-1, 1, 1, 1) % 3)

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = np.array([[3, 4, 0], [5, 0, 0]])
    e = S.guided_eps(fn, x, 10, y, 2.0)
    assert (seen[0][2:] == 0).all() and (seen[0][:2] == y).all()
    yt = Tensor(y.astype(np.int32))
    tfn = lambda a, t, b: a * (1.0 + b.sum(1).reshape(-1, 1, 1, 1).float() % 3)  # noqa: E731
    et = TS.guided_eps(tfn, Tensor(x), Tensor([10.0, 10.0]), yt, 2.0)
    np.testing.assert_allclose(et.numpy(), e, atol=1e-5)


def test_numpy_and_tinygrad_draw_the_same_images_for_prompts(text_ckpt, tmp_path, capsys):
    np_sample.main(flags(text_ckpt, tmp_path / "np.png", "--prompt", *PROMPTS, "--batch", "4"))
    out = capsys.readouterr().out
    assert "text prompts" in out and PROMPTS[1] in out
    tg_sample.main(flags(text_ckpt, tmp_path / "tg.png", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                         "--batch", "3", "--device", "CPU"))
    a, b = np.load(tmp_path / "np.npy"), np.load(tmp_path / "tg.npy")
    assert a.shape == (4, 3, 8, 8) and a.std() > 0.05
    np.testing.assert_allclose(b, a, atol=2e-3)
    # another prompt draws other images from the same noise
    np_sample.main(flags(text_ckpt, tmp_path / "one.png", "--prompt", PROMPTS[0]))
    c = np.load(tmp_path / "one.npy")
    np.testing.assert_allclose(c[:2], a[:2], atol=1e-5)   # row 0 (2 per row): the first prompt in both
    assert np.abs(c[2:] - a[2:]).max() > 1e-3


def test_grid_conditions_give_one_prompt_a_row():
    cfg, ids = text_cfg(), np.arange(2 * MAX_LEN).reshape(2, MAX_LEN)
    y = np_sample.grid_conditions(6, cfg, cols=2, prompt_ids=ids)
    assert y.shape == (6, MAX_LEN) and [r[0] for r in y] == [0, 0, 16, 16, 0, 0]


@pytest.mark.parametrize("mod", [np_sample, tg_sample], ids=["numpy", "tinygrad"])
def test_an_unknown_word_is_one_line_listing_the_vocabulary(text_ckpt, tmp_path, capsys, mod):
    line = cli_fails(capsys, mod.main, flags(text_ckpt, tmp_path / "x.png", "--prompt", "a small zebra"))
    assert "unknown word 'zebra'" in line and "triangle" in line and "circle" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("mod", [np_sample, tg_sample], ids=["numpy", "tinygrad"])
def test_conditions_that_do_not_fit_the_checkpoint_are_refused(text_ckpt, class_ckpt, tmp_path, capsys, mod):
    line = cli_fails(capsys, mod.main, flags(class_ckpt, tmp_path / "x.png", "--prompt", PROMPTS[0]))
    assert "--prompt: this checkpoint's model is class-conditional (6 classes)" in line
    line = cli_fails(capsys, mod.main, flags(text_ckpt, tmp_path / "x.png", "--label", "0"))
    assert "--label 0: this checkpoint's model is conditioned on text prompts" in line


def test_cond_text_needs_captions_and_evaluate_says_text_is_not_supported(text_ckpt, tmp_path, capsys):
    line = cli_fails(capsys, train.main, ["--data", "shapes", "--cond", "text", "--out", str(tmp_path / "r")])
    assert "--cond text: shapes has no captions" in line
    line = cli_fails(capsys, train.main, ["--data", "captions", "--hflip", "--out", str(tmp_path / "r")])
    assert "--hflip with --cond text" in line
    line = cli_fails(capsys, evaluate.main, ["--ckpt", str(text_ckpt), "--n", "50", "--ref-n", "50"])
    assert "not supported yet for text models" in line


def test_cond_is_a_run_setting_and_old_checkpoints_resume_as_class(text_ckpt, class_ckpt, capsys):
    parse = lambda *a: train.build_parser().parse_args(list(a))  # noqa: E731
    args, _ = train.settle_args(parse("--out", str(text_ckpt.parent), "--resume", "--steps", "5"))
    assert args.cond == "text"
    with pytest.raises(ValueError, match="--cond class differs from the checkpoint's text"):
        train.settle_args(parse("--out", str(text_ckpt.parent), "--resume", "--steps", "5", "--cond", "class"))
    args, _ = train.settle_args(parse("--out", str(class_ckpt.parent), "--resume", "--steps", "5"))
    assert args.cond == "class"    # written before --cond existed: class labels (or none)
    assert train.settle_args(parse("--data", "captions", "--out", str(text_ckpt.parent / "new")))[0].cond == "text"
    assert train.settle_args(parse("--data", "captions", "--cond", "class",
                                   "--out", str(text_ckpt.parent / "new")))[0].cond == "class"
