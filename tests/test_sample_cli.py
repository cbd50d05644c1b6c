"""The sample CLIs: NumPy and tinygrad draw the same grid from one checkpoint; EMA vs raw; grid layout; errors."""
import numpy as np
import pytest
from PIL import Image

from numpy_ref import sample as np_sample
from numpy_ref import weights as np_weights
from numpy_ref.configs import get_config
from tinygrad_impl import sample as tg_sample
from util import random_params


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny class-conditional checkpoint with random (non-zero) raw and EMA weights, as train writes it."""
    cfg = get_config("tokenfree-tiny", img_size=8, num_classes=6)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.safetensors"
    meta = dict(step=7, data="shapes", schedule="linear", T=1000, seed=0, batch=2,
                class_names=["circle", "square", "triangle", "diamond", "plus", "ring"])
    np_weights.save_weights(path, random_params(cfg, seed=1), cfg, meta, ema=random_params(cfg, seed=2))
    return path


def flags(ckpt, out, *extra):
    return ["--ckpt", str(ckpt), "--sampler", "ddim", "--steps", "6", "--n", "4", "--seed", "3",
            "--guidance", "2.0", "--out", str(out), "--npy", str(out.with_suffix(".npy")), *extra]


def test_numpy_and_tinygrad_clis_draw_the_same_grid(ckpt, tmp_path, capsys):
    a = np_sample.main(flags(ckpt, tmp_path / "np.png"))
    assert "using the EMA weights" in capsys.readouterr().out
    b = tg_sample.main(flags(ckpt, tmp_path / "tg.png"))
    assert "using the EMA weights" in capsys.readouterr().out
    assert a.shape == (4, 3, 8, 8) and a.std() > 0.05, "the samples must not be constant"
    np.testing.assert_allclose(b, a, atol=2e-3)
    np.testing.assert_allclose(np.load(tmp_path / "tg.npy"), np.load(tmp_path / "np.npy"), atol=2e-3)
    pa = np.asarray(Image.open(tmp_path / "np.png"), np.int16)
    pb = np.asarray(Image.open(tmp_path / "tg.png"), np.int16)
    assert pa.shape == (2 * 19, 2 * 19, 3) and np.abs(pa - pb).max() <= 1
    # --raw picks the other weights, and a different seed other images
    raw = np_sample.main(flags(ckpt, tmp_path / "raw.png", "--raw"))
    assert "using the raw weights" in capsys.readouterr().out and np.abs(raw - a).max() > 0.1
    other = np_sample.main(flags(ckpt, tmp_path / "s.png", "--seed", "4"))
    assert np.abs(other - a).max() > 0.1


def test_grid_layout_and_labels():
    imgs = np.stack([np.full((3, 2, 2), v, np.float32) for v in (-1.0, 0.0, 1.0)])   # 3 images -> 2x2 grid
    g = np_sample.make_grid(imgs, pad=1)
    assert g.shape == (7, 7, 3) and g.dtype == np.uint8
    assert (g[1:3, 1:3] == 0).all() and (g[1:3, 4:6] == 128).all() and (g[4:6, 1:3] == 255).all()
    assert (g[4:6, 4:6] == 128).all() and (g[0] == 128).all(), "empty cells and gaps are grey"
    assert np_sample.grid_labels(6, 4, cols=3).tolist() == [0, 0, 0, 1, 1, 1]
    assert np_sample.grid_labels(64, 6).tolist()[::8] == [0, 1, 2, 3, 4, 5, 0, 1]
    assert np_sample.grid_labels(5, 0) is None and np_sample.grid_labels(3, 6, label=2).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="out of range"):
        np_sample.grid_labels(3, 6, label=6)
    assert np_sample.resolve_label("triangle", {"class_names": ["circle", "square", "triangle"]}) == 2
    with pytest.raises(ValueError, match="not a class"):
        np_sample.resolve_label("hexagon", {"class_names": ["circle"]})


def test_grey_images_and_upscale(tmp_path):
    imgs = np.random.default_rng(0).uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32)
    np_sample.save_grid(imgs, tmp_path / "g.png", upscale=3)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (3 * (2 * 5 + 1), 3 * (1 * 5 + 1))


def test_bad_checkpoints_give_a_clear_error(ckpt, tmp_path):
    blob = ckpt.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:200])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    for mod in (np_sample, tg_sample):
        with pytest.raises(SystemExit, match="truncated or another format"):
            mod.main(flags(tmp_path / "cut.safetensors", tmp_path / "x.png"))
        with pytest.raises(SystemExit, match="truncated or another format"):
            mod.main(flags(tmp_path / "junk.safetensors", tmp_path / "x.png"))
        with pytest.raises(SystemExit, match="no weight file"):
            mod.main(flags(tmp_path / "missing.safetensors", tmp_path / "x.png"))
        with pytest.raises(SystemExit, match="--n must be >= 1"):
            mod.main(flags(ckpt, tmp_path / "x.png", "--n", "0"))
