"""Helpers shared by the tests: random parameters, tolerance checks, both backends side by side."""
import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref.models import get_model as np_model
from tinygrad_impl.models import get_model as tg_model
from tinygrad_impl.weights import to_tensors

ATOL, RTOL = 1e-4, 1e-3   # DESIGN.md section 2


def random_params(cfg, seed=0, dtype=np.float32):
    """Parameters with every tensor random (init_params zeroes the adaLN and output layers, which would
    make most of the network invisible to a comparison): N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in np_model(cfg.arch).param_shapes(cfg).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
        out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
    return out


def random_inputs(cfg, batch=2, seed=0, size=None, dtype=np.float32):
    """(x, t, y): x (B, C, H, W) in [-1, 1]-ish, t (B,) ints in [0, 1000), y (B,) ints or None."""
    rng = np.random.default_rng(seed)
    s = size or cfg.img_size
    x = rng.uniform(-1, 1, (batch, cfg.in_channels, s, s)).astype(dtype)
    t = rng.integers(0, 1000, batch)
    y = rng.integers(0, cfg.num_classes + 1, batch) if cfg.num_classes else None   # includes the null id
    return x, t, y


def both_forwards(cfg, params, x, t, y, device=None):
    """(numpy_ref output, tinygrad output) as NumPy arrays."""
    ref = np_model(cfg.arch).forward(params, x, t, y, cfg)
    yt = None if y is None else Tensor(np.asarray(y, np.int32), device=device)
    out = tg_model(cfg.arch).forward(to_tensors(params, device), Tensor(x, device=device),
                                     Tensor(np.asarray(t, np.float32), device=device), yt, cfg)
    return ref, out.numpy()


def opencl_available():
    """True where tinygrad finds an OpenCL device (Debian's pocl-opencl-icd gives one on the CPU)."""
    try:
        from tinygrad import Device
        Device["CL"]
        return True
    except Exception:
        return False


def assert_close(a, b, atol=ATOL, rtol=RTOL, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = np.abs(a - b)
    bad = err > atol + rtol * np.abs(a)
    assert not bad.any(), f"{what}: max abs diff {err.max():.3g} (at {np.argwhere(bad)[0]}), tolerance {atol} + {rtol}*|ref|"


def cli_fails(capsys, main, argv):
    """Run a CLI as `python -m` does (cli.run): it must exit with code 2 and say why on one stderr line; returns
    that line."""
    from numpy_ref import cli
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]
