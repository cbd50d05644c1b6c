"""Every tutorial runs top to bottom in fast mode (TUTORIAL_FAST=1), as a plain `python tutorials/NN_*.py`,
writes its PNGs (into a temp folder via TUTORIAL_OUT, so the repo stays clean) and prints sane key numbers.

Tests run in file order: 04 trains the checkpoint that 03 and 05 then sample (each would train it
itself if it were missing, only slower)."""
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")
ORDER = ["01_forward_diffusion.py", "02_tokenfree_block.py", "03_samplers.py", "04_train_tinygrad.py",
         "05_tinygrad_to_numpy.py", "06_architectures.py", "07_text_to_image.py",
         "08_distillation.py"]   # 08 runs in test_distill.py, in-process, reusing its compiled step


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorials")


def run_tutorial(name, out_dir):
    """Run one tutorial in fast mode; returns the numbers of its KEY line {name: float}."""
    env = dict(os.environ, TUTORIAL_FAST="1", TUTORIAL_OUT=str(out_dir), DEV=os.environ.get("DEV", "CPU"))
    proc = subprocess.run([sys.executable, os.path.join(TUTORIALS, name)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    key = [line for line in proc.stdout.splitlines() if line.startswith("KEY ")]
    assert key, f"{name} printed no KEY line:\n{proc.stdout[-2000:]}"
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-+\d.e]+)", key[-1])}


def assert_pngs(out_dir, *names):
    for n in names:
        path = out_dir / n
        assert path.exists(), f"{n} was not written"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 50, f"{n} is (nearly) blank"


def test_every_tutorial_is_in_the_list():
    found = sorted(f for f in os.listdir(TUTORIALS) if re.match(r"\d\d_.*\.py$", f))
    assert found == sorted(ORDER), f"tutorials and this test's list differ: {found} vs {ORDER}"


def test_01_forward_diffusion(out_dir):
    key = run_tutorial("01_forward_diffusion.py", out_dir)
    assert_pngs(out_dir, "01_schedules.png", "01_snr.png", "01_strip.png")
    assert 3e-5 < key["abar_T"] < 5e-5                       # DDPM's linear schedule leaves ~4e-5 of the signal
    assert 240 < key["snr_crossing_linear"] < 280


def test_02_tokenfree_block(out_dir):
    key = run_tutorial("02_tokenfree_block.py", out_dir)
    assert_pngs(out_dir, "02_stem.png", "02_position.png")
    assert key["perm_diff_no_pos_conv"] < 1e-4 and key["perm_diff_pos_conv"] > 1e-2   # equivariant only without pos_conv
    assert key["distinct_edge_pad_no_pos_conv"] == 1                  # no zero padding anywhere: no position at all
    assert key["distinct_final_no_pos_conv"] < key["distinct_final"]  # pos_conv carries position inward


def test_06_architectures(out_dir):
    key = run_tutorial("06_architectures.py", out_dir)
    assert_pngs(out_dir, "06_activations.png")
    assert all(key[f"params_{a}"] > 1000 for a in ("tokenfree", "uvit", "unet"))
    assert key["reuse_tokenfree"] > 1.5 and key["reuse_uvit"] > 1.5


def test_04_train_tinygrad(out_dir):
    key = run_tutorial("04_train_tinygrad.py", out_dir)
    assert_pngs(out_dir, "04_loss.png", "04_samples.png")
    assert key["step"] == 12
    assert 0.0 < key["loss_first"] < 1.5 and 0.0 < key["loss_last"] < 1.5
    assert list((out_dir / "out").glob("04_*/ckpt.safetensors"))


def test_03_samplers(out_dir):
    key = run_tutorial("03_samplers.py", out_dir)
    assert_pngs(out_dir, "03_grid.png", "03_contrast.png", "03_quality.png")
    assert 0.0 < key["floor"] < key["ceiling"]               # real images sit closer to the training set than noise
    assert all(0.0 < v < 2.0 for k, v in key.items() if k.startswith(("ddpm_", "ddim_")))


def test_05_tinygrad_to_numpy(out_dir):
    key = run_tutorial("05_tinygrad_to_numpy.py", out_dir)
    assert_pngs(out_dir, "05_same_images.png")
    assert key["eps_max_diff"] < 1e-4
    assert key["image_max_diff"] < 1e-3


def test_07_text_to_image(out_dir):
    key = run_tutorial("07_text_to_image.py", out_dir)
    assert_pngs(out_dir, "07_tokens.png", "07_cross_attention.png", "07_prompts.png")
    assert key["pad_diff"] < 1e-5 and key["pad_attention"] < 1e-12   # PAD tokens are masked, in the encoder and the block
    assert key["prompt_effect"] > 1e-2 and key["closed_effect"] < 1e-6  # the prompt enters by cross-attention and c only
    assert key["step"] == 6 and 0.0 < key["loss"] < 2.0
