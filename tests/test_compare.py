"""The architecture comparison CLI: trains each model with the same budget, evaluates it, tabulates; it resumes,
and re-evaluates only what changed. Tiny presets on 8x8 shapes and an untrained feature network: the plumbing,
not the quality (the real table is made by the command in the README)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from numpy_ref import cli
from numpy_ref import features as NF
from numpy_ref import weights as W
from tinygrad_impl import compare

TINY = {"tokenfree": ("tokenfree-tiny", ["width=24"]), "uvit": ("uvit-tiny", [])}   # the two fastest to compile


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "MATCHED", TINY)
    monkeypatch.setattr(compare, "ABLATIONS", {})
    fcfg = NF.FeatureConfig(img_size=8, in_channels=3, num_classes=6, width=8)
    feats = NF.save_features(tmp_path / "feat.safetensors", NF.init_params(fcfg, 0), fcfg, "shapes", 0.5)
    out = tmp_path / "cmp"
    common = ["--data", "shapes", "--size", "8", "--batch", "2", "--n", "12", "--sample-steps", "2",
              "--ckpt-every", "0", "--features", str(feats), "--out", str(out)]
    return out, common


def test_compare_trains_evaluates_tabulates_and_resumes(setup, capsys):
    out, common = setup
    compare.main(common + ["--steps", "3"])
    text = capsys.readouterr().out
    rows = {r["entry"]: r for r in json.load(open(out / "compare.json"))}
    assert set(rows) == set(TINY)
    for arch, r in rows.items():
        params, cfg, meta = W.load_weights(out / arch / "ckpt.safetensors")
        assert meta["step"] == 3 and r["steps"] == 3 and r["info"]["step"] == 3
        assert r["params"] == sum(v.size for v in params.values()) and r["macs"] > 0
        assert (r["info"]["n"], r["info"]["sampler"], r["info"]["steps"]) == (12, "ddim", 2)
        assert np.isfinite(r["samples"]["fd"]) and r["ceiling"]["fd"] > r["floor"]["fd"]
        assert r["kernels"] > 0 and r["launches"] >= r["kernels"] and r["sample_s_per_image"] > 0
    assert W.load_weights(out / "tokenfree" / "ckpt.safetensors")[1].width == 24   # the --set of MATCHED
    for line in ("| tokenfree (width=24) | 1 | 3 |", "| uvit | 1 | 3 |", "| real test images (floor) |", "| Gaussian noise (ceiling) |"):
        assert line in text, f"{line!r} missing from:\n{text}"
    assert text.rstrip().endswith((out / "compare.md").read_text().rstrip())

    # a larger budget continues each model from its checkpoint and evaluates it again; the rest is kept; a second
    # seed is one more run, and the table gives the mean ± sd over the seeds
    uvit_eval = (out / "uvit" / "eval.json").read_text()
    compare.main(common + ["--steps", "5", "--archs", "tokenfree", "--seeds", "0", "1"])
    record = json.load(open(out / "tokenfree" / "train.json"))
    assert record["step"] == 5 and [s["steps"] for s in record["sessions"]] == [3, 2]
    assert json.load(open(out / "tokenfree" / "eval.json"))["info"]["step"] == 5
    assert json.load(open(out / "tokenfree-seed1" / "train.json"))["step"] == 5
    assert (out / "uvit" / "eval.json").read_text() == uvit_eval
    # --table only rebuilds the table; both budgets are stated
    capsys.readouterr()
    compare.main(["--table"] + common)
    text = capsys.readouterr().out
    assert "| tokenfree (width=24) | 2 | 5 ± 0 |" in text and "| uvit | 1 | 3 |" in text
    assert "3 steps / 5 steps of training each" in text
    fds = [r["samples"]["fd"] for r in json.load(open(out / "compare.json")) if r["entry"] == "tokenfree"]
    assert len(fds) == 2 and fds[0] != fds[1]   # the seeds are different runs


def test_compare_without_results_says_what_to_run(setup, capsys):
    out, common = setup
    with pytest.raises(SystemExit) as e:   # as `python -m tinygrad_impl.compare` runs it: one line, exit code 2
        cli.run(compare.main, ["--table"] + common)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "no finished models under" in err and "run without --table first" in err


def test_compare_checks_its_flags_and_device_before_training(setup, capsys):
    out, common = setup
    with pytest.raises(SystemExit) as e:
        compare.main(common + ["--lr", "nan"])
    assert e.value.code == 2 and "argument --lr: must be a finite number, got nan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.run(compare.main, common + ["--device", "NOSUCH"])
    assert e.value.code == 2 and "--device NOSUCH: tinygrad has no such backend" in capsys.readouterr().err
    assert not out.exists()


def test_every_matched_entry_builds_for_fashion_mnist_at_about_the_same_size():
    """MATCHED is sized for MNIST-likes (1x32x32 after padding, 10 classes): every entry is a valid config there,
    within 10% of 1.5M parameters."""
    sizes = {arch: compare.size_of(arch, (1, 32, 32), 10) for arch in compare.MATCHED}
    for arch, (params, macs) in sizes.items():
        assert 1.35e6 < params < 1.65e6 and macs > 1e8, (arch, params, macs)


def test_every_ablation_is_one_change_to_tokenfree_at_about_its_macs():
    """ABLATIONS: valid configs on MNIST-likes; each differs from MATCHED["tokenfree"] in one design choice and keeps
    its MACs within 5% (the stride-4 entry is widened to get there)."""
    base_params, base_macs = compare.size_of("tokenfree", (1, 32, 32), 10)
    for entry, (preset, sets) in compare.ABLATIONS.items():
        params, macs = compare.size_of(entry, (1, 32, 32), 10)
        assert preset == "tokenfree-xs" and abs(macs / base_macs - 1) < 0.05, (entry, macs, base_macs)
        changed = set(sets) - set(compare.MATCHED["tokenfree"][1])
        assert len(changed) == 1 or entry == "tokenfree_stride4", (entry, changed)
    assert compare.size_of("tokenfree_shared", (1, 32, 32), 10)[0] < base_params / 3   # one block's weights


def test_compute_matched_minutes_stop_each_model_by_its_time_and_are_not_trained_again(setup, capsys):
    out, common = setup
    args = common + ["--archs", "tokenfree", "--minutes", "0.0005", "--steps", "50"]   # 30 ms: the first step is longer
    compare.main(args)
    record = json.load(open(out / "tokenfree" / "train.json"))
    assert record["done"] and record["step"] == 1 and record["budget"] == "0.0005 minutes"
    compare.main(args)   # the budget is spent: nothing is trained again
    assert json.load(open(out / "tokenfree" / "train.json"))["sessions"] == record["sessions"]
    assert "0.0005 minutes of training each" in capsys.readouterr().out


def test_a_killed_compare_resumes_from_the_checkpoints_on_disk(setup):
    """SIGKILL (no chance to save) in the middle of a model's training: the same command continues that model from
    its last checkpoint and finishes the table."""
    out, common = setup
    args = common[:common.index("--ckpt-every")] + common[common.index("--ckpt-every") + 2:] + \
        ["--ckpt-every", "1", "--steps", "8", "--archs", "tokenfree"]
    driver = (f"from tinygrad_impl import compare; compare.MATCHED = {dict(TINY)!r}; compare.ABLATIONS = {{}}; "
              f"compare.cli.run(compare.main, {args!r})")
    ckpt = out / "tokenfree" / "ckpt.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.time() + 600
        while not (ckpt.exists() and W.read_file(ckpt)[2]["step"] >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = W.read_file(ckpt)[2]["step"]
    assert 2 <= killed_at < 8 and not (out / "tokenfree" / "eval.json").exists()
    compare.main(args)
    record = json.load(open(out / "tokenfree" / "train.json"))
    assert record["step"] == 8 and record["sessions"][-1]["steps"] == 8 - killed_at   # continued, not restarted
    assert json.load(open(out / "tokenfree" / "eval.json"))["info"]["step"] == 8
