"""The benchmark: it runs without PyTorch and reports what it measured (tests/test_torch_mirror.py checks that its
PyTorch mirror computes what numpy_ref computes, which is what makes the comparison fair)."""
import math
import os

import numpy as np
import pytest

from numpy_ref.configs import get_config
from numpy_ref.models import get_model as np_model
from tinygrad_impl import bench

TORCH = bench.have_torch()


def test_benchmark_runs_without_torch_and_reports_tinygrad_and_numpy():
    lines = []
    # a 2-block tokenfree (one skip) keeps the compile short; the code path is the one of the real presets
    res = bench.run_benchmark(["tokenfree-tiny"], batch=2, warmup=3, steps=2, sample_batch=2, sample_steps=3,
                              img_size=8, use_torch=False, print_fn=lines.append, depth=2)
    out = "\n".join(lines)
    r = res["tokenfree-tiny"]
    assert set(r["train"]) == {"tinygrad"} and set(r["sample"]) == {"numpy", "tinygrad"}
    tg = r["train"]["tinygrad"]
    assert len(tg["times"]) == 2 and 0 < tg["median_s"] < tg["warmup_s"]   # the warm-up holds the compile
    assert all(math.isfinite(v) for v in tg["losses"]) and len(tg["losses"]) == 5
    # the training ran in a process of its own, with tinygrad's own (warm) kernel cache
    assert tg["peak_mib"] > 10 and tg["first_step_s"] > 0 and not tg["cold_start"]
    from tinygrad.helpers import CACHEDB
    assert tg["kernel_cache"] == CACHEDB and "compiled_kernels" not in tg
    for backend, s in r["sample"].items():
        assert s["images"].shape == (2, 3, 8, 8) and s["samples_per_s"] > 0 and s["peak_mib"] > 10, backend
    # the same seed and weights give the same images in both backends
    assert r["sample"]["tinygrad"]["max_diff_vs_numpy"] < 1e-3
    assert "tinygrad" in out and "numpy" in out and "PyTorch not installed" in out and "ratio" not in out
    assert "peak RSS of each training process: tinygrad " in out and "(tinygrad with its warm kernel cache)" in out
    assert out.splitlines()[-1].startswith("tokenfree-tiny ") and "tinygrad 1st s" in out


def test_cold_start_compiles_into_an_empty_kernel_cache_and_reports_both_processes(capsys):
    """--cold-start: tinygrad's training process gets a fresh CACHEDB; each framework's process reports its peak
    RSS and its time to the first step; the same weights and batches give the same first loss in both"""
    from tinygrad.helpers import CACHEDB
    res = bench.main(["--presets", "tokenfree-tiny", "--set", "depth=1", "width=16", "--batch", "2", "--steps", "1",
                      "--no-sample", "--cold-start"] + ([] if TORCH else ["--no-torch"]))
    out = capsys.readouterr().out
    train = res["tokenfree-tiny"]["train"]
    tg = train["tinygrad"]
    assert tg["cold_start"] and tg["compiled_kernels"] > 10 and tg["kernel_cache"] != CACHEDB
    assert not os.path.exists(tg["kernel_cache"])   # the temporary cache is gone
    assert f"cold kernel cache: {tg['compiled_kernels']} kernels compiled" in out and "kernel cache cold)" in out
    assert set(train) == ({"tinygrad", "torch"} if TORCH else {"tinygrad"})
    for r in train.values():
        assert r["peak_mib"] > 10 and r["first_step_s"] > 0 and len(r["times"]) == 1
    if TORCH:
        assert abs(train["torch"]["losses"][0] - tg["losses"][0]) < 1e-5 * max(1.0, tg["losses"][0])
        assert "ratio" in out and "PyTorch " in out.split("peak RSS of each training process:")[1].splitlines()[0]
        row = out.splitlines()[-1].split()
        assert row[0] == "tokenfree-tiny" and len(row) == 8 and row[3].endswith("x")


def test_first_loss_is_the_numpy_loss():
    """Step 0 of the tinygrad trainer sees the initial weights: its loss is the NumPy forward's MSE."""
    cfg = get_config("tokenfree-tiny", depth=2, num_classes=bench.NUM_CLASSES)
    params = bench.randomize_output_layers(np_model(cfg.arch).init_params(cfg, 0), cfg)
    b = bench.bench_batches(cfg, 2, 1)[0]
    xt, t, noise, y = b
    ref = float(np.mean((np_model(cfg.arch).forward(params, xt, t, y, cfg) - noise) ** 2))
    assert abs(bench.tinygrad_trainer(cfg, params)(b) - ref) < 1e-5 * max(1.0, ref)
    if TORCH:
        assert abs(bench.torch_trainer(cfg, params)(b) - ref) < 1e-5 * max(1.0, ref)


def test_randomize_output_layers_fills_only_zero_matrices():
    cfg = get_config("tokenfree-tiny")
    p0 = np_model(cfg.arch).init_params(cfg, 0)
    p1 = bench.randomize_output_layers(p0, cfg)
    assert p1["final.linear.weight"].any() and not p0["final.linear.weight"].any()
    assert (p1["stem.weight"] == p0["stem.weight"]).all() and not p1["stem.bias"].any()


def test_sampling_line_states_the_numpy_target_with_pass_or_fail():
    smp = lambda numpy_s: {"numpy": {"seconds": numpy_s}, "tinygrad": {"seconds": 2.0}, "torch": {"seconds": 1.0}}
    assert bench.NUMPY_SAMPLING_TARGET == 3.0
    line = bench.sampling_ratios(smp(2.5))
    assert "NumPy / PyTorch time: 2.50x (target: within 3x of PyTorch: pass)" in line and "tinygrad / PyTorch: 2.00x" in line
    assert "3.50x (target: within 3x of PyTorch: FAIL)" in bench.sampling_ratios(smp(3.5))


def test_cli_rejects_a_warmup_shorter_than_the_jit_capture():
    with pytest.raises(SystemExit):
        bench.main(["--warmup", "2"])


def test_cli_set_names_a_bad_field(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--set", "widht=128"])
    assert "--set 'widht=128': expected FIELD=VALUE with FIELD one of" in capsys.readouterr().err


def test_peak_rss_is_measured():
    assert bench.peak_rss_mib() > 10


def test_matmul_benchmark_checks_and_times_the_cpu_kernels(capsys):
    shapes = ((16, 8, 24, False), (24, 16, 8, True))
    out = bench.time_matmuls(shapes, device="CPU", use_torch=bench.have_torch(), reps=1, per_call=2)
    assert set(out) == set(shapes)
    for r in out.values():
        assert r["tinygrad"] > 0 and math.isfinite(r["tinygrad"]) and ("torch" in r) == bench.have_torch()
    bench.main(["--matmul", "--device", "CPU", "--no-torch"])
    assert "matmul A^T B, 512x2048 @ 2048x128: tinygrad" in capsys.readouterr().out


def test_data_parallel_trainer_starts_at_the_numpy_loss_and_bad_devices_are_refused(capsys):
    """bench --devices times train --devices' step: on CPU:0,CPU:1 its first loss is the NumPy forward's MSE"""
    cfg = get_config("tokenfree-tiny", depth=1, img_size=8, num_classes=bench.NUM_CLASSES)
    params = bench.randomize_output_layers(np_model(cfg.arch).init_params(cfg, 0), cfg)
    b = bench.bench_batches(cfg, 2, 1)[0]
    ref = float(np.mean((np_model(cfg.arch).forward(params, *b[:2], b[3], cfg) - b[2]) ** 2))
    assert abs(bench.tinygrad_trainer(cfg, params, devices=("CPU", "CPU:1"))(b) - ref) < 1e-5 * max(1.0, ref)
    with pytest.raises(SystemExit):
        bench.main(["--devices", "CPU:0,CPU:1", "--batch", "5"])
    assert "--batch 5 does not split over 2 devices" in capsys.readouterr().err


def test_training_lines_and_summary_state_ratio_peak_rss_and_first_step():
    run = lambda s, mib, first, **kw: dict(median_s=s, warmup_s=9.0, peak_mib=mib, first_step_s=first, **kw)
    train = {"tinygrad": run(0.3, 900, 42.0, cold_start=True, compiled_kernels=321), "torch": run(0.1, 400, 2.5)}
    lines = bench.training_lines(train, batch=32, steps=10)
    assert "tinygrad 0.300 s, PyTorch (cpu) 0.100 s, ratio 3.00x" in lines[0]
    assert lines[1] == "  peak RSS of each training process: tinygrad 900 MiB, PyTorch 400 MiB"
    assert lines[2] == ("  process start to the end of the first training step: tinygrad 42.0 s (cold kernel cache: "
                        "321 kernels compiled), PyTorch 2.5 s")
    results = {"unet-xs": dict(train=train), "uvit-xs": dict(train={"tinygrad": run(0.2, 500, 7.0)})}
    table = bench.training_summary(results, 32, cold_start=True)
    assert "kernel cache cold" in table[0] and table[1].split()[:4] == ["preset", "tinygrad", "s", "PyTorch"]
    assert table[2].split() == ["unet-xs", "0.300", "0.100", "3.00x", "900", "400", "42.0", "2.5"]
    assert table[3].split() == ["uvit-xs", "0.200", "-", "-", "500", "-", "7.0", "-"]
    without_torch = bench.training_summary({"uvit-xs": dict(train={"tinygrad": run(0.2, 500, 7.0)})}, 32)
    assert "kernel cache warm" in without_torch[0] and "PyTorch" not in without_torch[1] and "ratio" not in without_torch[1]
    assert without_torch[2].split() == ["uvit-xs", "0.200", "500", "7.0"]
