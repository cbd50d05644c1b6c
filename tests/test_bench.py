"""The benchmark: it runs without PyTorch and reports what it measured (tests/test_torch_mirror.py checks that its
PyTorch mirror computes what numpy_ref computes, which is what makes the comparison fair)."""
import math

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
    for backend, s in r["sample"].items():
        assert s["images"].shape == (2, 3, 8, 8) and s["samples_per_s"] > 0 and s["peak_mib"] > 10, backend
    # the same seed and weights give the same images in both backends
    assert r["sample"]["tinygrad"]["max_diff_vs_numpy"] < 1e-3
    assert "tinygrad" in out and "numpy" in out and "PyTorch not installed" in out and "ratio" not in out


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
