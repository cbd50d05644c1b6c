"""The sample CLIs: NumPy and tinygrad draw the same grid from one checkpoint; EMA vs raw; grid layout; errors."""
import numpy as np
import pytest
from PIL import Image

from numpy_ref import cli
from numpy_ref import samplers
from numpy_ref import sample as np_sample
from numpy_ref import weights as np_weights
from numpy_ref.configs import get_config
from tinygrad_impl import sample as tg_sample
from util import cli_fails, random_params


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
    # 5 images: NumPy in one batch, tinygrad in batches of 2 (the last one filled up to 2 and cut)
    np_sample.main(flags(ckpt, tmp_path / "np.png", "--n", "5", "--batch", "5"))
    assert "using the EMA weights" in capsys.readouterr().out
    tg_sample.main(flags(ckpt, tmp_path / "tg.png", "--n", "5", "--batch", "2"))
    assert "using the EMA weights" in capsys.readouterr().out
    a, b = np.load(tmp_path / "np.npy"), np.load(tmp_path / "tg.npy")
    assert a.shape == (5, 3, 8, 8) and a.std() > 0.05, "the samples must not be constant"
    np.testing.assert_allclose(b, a, atol=2e-3)
    pa = np.asarray(Image.open(tmp_path / "np.png"), np.int16)
    pb = np.asarray(Image.open(tmp_path / "tg.png"), np.int16)
    assert pa.shape == (2 * 19, 2 * 28, 3) and np.abs(pa - pb).max() <= 1   # 2 rows x 3 cells of 8 + 1 px
    # the grid holds every batch's images in their cells
    np.testing.assert_array_equal(pb[::2, ::2], np_sample.make_grid(b))
    # --raw picks the other weights, and a different seed other images
    np_sample.main(flags(ckpt, tmp_path / "raw.png", "--n", "5", "--raw"))
    assert "using the raw weights" in capsys.readouterr().out
    assert np.abs(np.load(tmp_path / "raw.npy") - a).max() > 0.1
    np_sample.main(flags(ckpt, tmp_path / "s.png", "--n", "5", "--seed", "4"))
    assert np.abs(np.load(tmp_path / "s.npy") - a).max() > 0.1


def test_spacing_trailing_samples_one_step_from_pure_noise_on_both_sides(ckpt, tmp_path, capsys):
    """--spacing overrides the checkpoint's grid: 1 even step samples at t = 0 (the noise comes back nearly as it
    went in), 1 trailing step at t = T - 1; NumPy and tinygrad draw the same images either way."""
    assert [int(t) for t in samplers.timesteps(np_sample.schedule_of({}, "trailing"), 1)] == [999]
    assert [int(t) for t in samplers.timesteps(np_sample.schedule_of({}), 1)] == [0]
    one = ["--steps", "1", "--n", "3", "--batch", "3"]
    np_sample.main(flags(ckpt, tmp_path / "np.png", *one, "--spacing", "trailing"))
    assert "ddim 1 steps (trailing spacing)" in capsys.readouterr().out
    tg_sample.main(flags(ckpt, tmp_path / "tg.png", *one, "--spacing", "trailing"))
    np_sample.main(flags(ckpt, tmp_path / "even.png", *one))
    trailing, even = np.load(tmp_path / "np.npy"), np.load(tmp_path / "even.npy")
    np.testing.assert_allclose(np.load(tmp_path / "tg.npy"), trailing, atol=2e-3)
    assert np.abs(trailing - even).max() > 0.1


def test_the_images_do_not_depend_on_the_batch_size(ckpt, tmp_path):
    """Image i's noise comes from its own generator, so cutting the run into batches of 1, 3 or 7 draws the same 7
    images (up to the float rounding of batched matmuls, magnified by the first step's division by sqrt(abar))."""
    runs = []
    for batch in (7, 3, 1):
        out = tmp_path / f"b{batch}.png"
        np_sample.main(flags(ckpt, out, "--n", "7", "--batch", str(batch)))
        runs.append(np.load(out.with_suffix(".npy")))
    assert runs[0].shape == (7, 3, 8, 8) and np.abs(runs[0][1:] - runs[0][:1]).max() > 0.1
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-3)
    # and image i is image i of a shorter run (the first two cells show class 0 in a grid of 3 and of 7 images)
    np_sample.main(flags(ckpt, tmp_path / "n3.png", "--n", "3", "--batch", "2"))
    np.testing.assert_allclose(np.load(tmp_path / "n3.npy")[:2], runs[0][:2], atol=1e-3)


def test_a_grid_of_more_images_than_a_batch(ckpt, tmp_path):
    out = tmp_path / "g.png"
    np_sample.main(flags(ckpt, out, "--n", "11", "--batch", "4", "--upscale", "1", "--steps", "2"))
    images = np.load(out.with_suffix(".npy"))
    assert images.shape == (11, 3, 8, 8)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 9 + 1, 4 * 9 + 1, 3)          # 11 images: 4 per row, 3 rows
    np.testing.assert_array_equal(grid, np_sample.make_grid(images))
    assert (grid[19:27, 28:36] == 128).all(), "the 12th cell is empty (grey)"


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
    with pytest.raises(cli.CLIError, match="not a class"):
        np_sample.resolve_label("hexagon", {"class_names": ["circle"]})
    with pytest.raises(cli.CLIError, match=r"--label 6 is not a class of this checkpoint; classes: 0\.\.5"):
        np_sample.resolve_label("6", {}, num_classes=6)
    assert np_sample.resolve_label("5", {}, num_classes=6) == 5 and np_sample.resolve_label(None, {}, 6) is None
    # a grid filled batch by batch is the grid made at once
    imgs = np.random.default_rng(1).uniform(-1, 1, (7, 3, 4, 4)).astype(np.float32)
    canvas = np_sample.grid_canvas(7, (3, 4, 4), cols=3)
    for first in (0, 4):
        np_sample.paste(canvas, imgs[first:first + 4], first, cols=3)
    np.testing.assert_array_equal(canvas, np_sample.make_grid(imgs, cols=3))


def test_grey_images_and_upscale(tmp_path):
    imgs = np.random.default_rng(0).uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32)
    np_sample.save_grid(imgs, tmp_path / "g.png", upscale=3)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (3 * (2 * 5 + 1), 3 * (1 * 5 + 1))


def test_bad_checkpoints_give_a_clear_error(ckpt, tmp_path, capsys):
    blob = ckpt.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:200])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    for mod in (np_sample, tg_sample):
        for bad in ("cut", "junk"):
            line = cli_fails(capsys, mod.main, flags(tmp_path / f"{bad}.safetensors", tmp_path / "x.png"))
            assert "truncated or another format" in line
        assert "no weight file" in cli_fails(capsys, mod.main, flags(tmp_path / "missing.safetensors", tmp_path / "x.png"))
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.npy"))


# every flag checked before sampling: (flags, what the one-line error must say)
BAD_FLAGS = [
    (["--guidance", "nan"], "argument --guidance: must be a finite number, got nan"),
    (["--guidance", "-1"], "argument --guidance: must be >= 0, got -1"),
    (["--eta", "-1"], "argument --eta: must be >= 0 and <= 1, got -1"),
    (["--eta", "1.5"], "argument --eta: must be >= 0 and <= 1, got 1.5"),
    (["--steps", "0"], "argument --steps: must be > 0, got 0"),
    (["--steps", "5000"], "--steps must be in 1..1000 (the checkpoint's schedule has T = 1000), got 5000"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--n", "0"], "argument --n: must be > 0, got 0"),
    (["--batch", "0"], "argument --batch: must be > 0, got 0"),
    (["--upscale", "0"], "argument --upscale: must be > 0, got 0"),
    (["--n", "two"], "argument --n: must be an integer, got 'two'"),
    (["--label", "99"], "--label 99 is not a class of this checkpoint; classes: 0 circle, 1 square, 2 triangle, "
                        "3 diamond, 4 plus, 5 ring"),
    (["--label", "-1"], "--label -1 is not a class"),
    (["--label", "hexagon"], "--label 'hexagon' is not a class of this checkpoint; classes: 0 circle"),
    (["--sampler", "dpmpp2m", "--eta", "0.5"], "--eta must be 0 for --sampler dpmpp2m"),
    (["--n", "100000000"], "--n 100000000 with --upscale 2 makes a 180002x180002 grid"),
]


@pytest.mark.parametrize("mod", [np_sample, tg_sample], ids=["numpy", "tinygrad"])
@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_errors_with_exit_code_2(ckpt, tmp_path, capsys, mod, extra, message):
    assert message in cli_fails(capsys, mod.main, flags(ckpt, tmp_path / "x.png", *extra))
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_device_lists_the_devices_tinygrad_finds(ckpt, tmp_path, capsys):
    line = cli_fails(capsys, tg_sample.main, flags(ckpt, tmp_path / "x.png", "--device", "NOSUCH"))
    assert line.startswith("error: --device NOSUCH: tinygrad has no such backend; devices tinygrad finds here: ")
    assert "CPU" in line.split("finds here: ")[1]
    assert tg_sample.check_device("cpu") == "CPU"


def test_a_label_for_an_unconditional_model_is_refused(tmp_path, capsys):
    cfg = get_config("tokenfree-tiny", img_size=8, num_classes=0)
    path = np_weights.save_weights(tmp_path / "u.safetensors", random_params(cfg, seed=1), cfg, {})
    assert "unconditional (no classes); drop --label" in cli_fails(capsys, np_sample.main,
                                                               flags(path, tmp_path / "x.png", "--label", "0"))


def nan_checkpoint(ckpt, folder, value=np.nan):
    """ckpt's raw weights with one value of two tensors replaced, and no EMA copy, as a diverged run leaves them
    (written with safetensors itself: save_weights refuses such tensors)"""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(str(ckpt), "np") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if "/" not in k}
    names = sorted(tensors)[2:4]
    for k in names:
        tensors[k].flat[1] = value
    path = folder / "nan.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path, names


@pytest.mark.parametrize("mod", [np_sample, tg_sample], ids=["numpy", "tinygrad"])
def test_weights_with_nan_or_inf_are_refused_naming_the_tensors(ckpt, tmp_path, capsys, mod):
    for value in (np.nan, np.inf):
        path, names = nan_checkpoint(ckpt, tmp_path, value)
        line = cli_fails(capsys, mod.main, flags(path, tmp_path / "x.png"))
        assert f"the raw weights hold NaN or inf in 2 tensors ({names[0]}, {names[1]})" in line, line
        assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("mod", [np_sample, tg_sample], ids=["numpy", "tinygrad"])
def test_outputs_are_tried_before_the_checkpoint_is_read(ckpt, tmp_path, capsys, mod):
    """--out a folder or unwritable fails first: with a checkpoint that would fail too, the error is about --out."""
    bad_ckpt, _ = nan_checkpoint(ckpt, tmp_path)
    (tmp_path / "a_file").write_text("")
    assert f"--out {tmp_path} is a folder; give a file name" in cli_fails(capsys, mod.main, flags(bad_ckpt, tmp_path))
    line = cli_fails(capsys, mod.main, flags(bad_ckpt, tmp_path / "a_file" / "x.png"))
    assert line.startswith(f"error: cannot create the folder of --out {tmp_path / 'a_file' / 'x.png'}")
    line = cli_fails(capsys, mod.main, flags(bad_ckpt, tmp_path / "x.png")[:-1] + [str(tmp_path)])
    assert f"--npy {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'samples.npy'}" in line


def test_nan_images_from_finite_weights_are_an_error_not_a_black_grid():
    calls = []

    def overflowing(rows, noise, y):   # the second batch (images 2 and 3) holds an inf
        calls.append(rows)
        images = noise.standard_normal((rows, 1, 2, 2)).astype(np.float32)
        images[-1, 0, 0, 0] = np.inf if len(calls) == 2 else 0.0
        return images
    batches = np_sample.sample_batches(overflowing, n=5, batch=2, seed=0)
    assert next(batches)[0] == 0
    with pytest.raises(cli.CLIError, match=r"images 2..3 came out NaN or inf .* try a smaller --guidance"):
        next(batches)
