"""Model inputs: every forward refuses what it cannot use, with a ValueError naming the problem and the accepted
range (numpy_ref.configs.check_inputs). NumPy forwards check shapes, dtypes and values; tinygrad forwards check
shapes and dtypes only (their values live on the device, and forward runs under TinyJit in training)."""
import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref.configs import PRESETS, check_inputs
from numpy_ref.models import get_model as np_model
from numpy_ref.schedule import make_schedule, q_sample
from tinygrad_impl.models import get_model as tg_model
from util import random_inputs, random_params

TINY = [name for name in PRESETS if name.endswith("-tiny")]


def np_forward(preset):
    cfg = PRESETS[preset]
    params = random_params(cfg)
    return lambda x, t, y: np_model(cfg.arch).forward(params, x, t, y, cfg), cfg


# (what is wrong, how to break the inputs x, t, y of a batch of 2, the message); class ids out of range
# are tested in tests/test_models.py
BAD_VALUES = [
    ("t = 5000", lambda x, t, y: (x, np.array([5000, 3]), y), r"timestep t=5000 out of range: t must be in \[0, 1000\)"),
    ("t = -1", lambda x, t, y: (x, np.array([3, -1]), y), r"timestep t=-1 out of range: t must be in \[0, 1000\)"),
    ("t = 10.5", lambda x, t, y: (x, np.array([10.5, 3.0]), y), r"timesteps t must be whole numbers, got 10.5"),
    ("t is NaN", lambda x, t, y: (x, np.array([np.nan, 3.0]), y), r"timesteps t must be whole numbers, got nan"),
    ("class id 1.7", lambda x, t, y: (x, t, np.array([1.7, 0.0])), r"class ids y must be whole numbers, got 1.7"),
    ("uint8 images", lambda x, t, y: (((x + 1) * 127.5).astype(np.uint8), t, y),
     r"x has dtype uint8: images must be floats in \[-1, 1\]; scale uint8 pixels 0\.\.255 with x / 127\.5 - 1"),
    ("float images in 0..255", lambda x, t, y: ((x + 1) * 127.5, t, y),
     r"x has values up to 2\d\d(\.\d+)? in magnitude: images must be in \[-1, 1\].*pixel values 0\.\.255\? "
     r"scale them with x / 127\.5 - 1"),
    ("NaN in x", lambda x, t, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), t, y),
     r"x holds NaN or inf values"),
]

# mismatched lengths: the same message from both backends
BAD_SHAPES = [
    ("3 timesteps for 2 images", lambda x, t, y: (x, np.array([1, 2, 3]), y),
     r"timesteps t must have shape \(B,\) = \(2,\), one per image, got shape \(3,\); .*np\.full\(2, t\)"),
    ("a scalar t", lambda x, t, y: (x, np.int64(7), y), r"timesteps t must have shape \(B,\) = \(2,\), .*got shape \(\)"),
    ("3 labels for 2 images", lambda x, t, y: (x, t, np.array([0, 1, 2])),
     r"labels y must have shape \(B,\) = \(2,\), one class id per image, got shape \(3,\)"),
    ("labels (2, 1)", lambda x, t, y: (x, t, y.reshape(2, 1)), r"labels y must have shape \(B,\) = \(2,\).*got shape \(2, 1\)"),
]


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("what, spoil, message", BAD_VALUES + BAD_SHAPES, ids=[c[0] for c in BAD_VALUES + BAD_SHAPES])
def test_numpy_forward_refuses(preset, what, spoil, message):
    fwd, cfg = np_forward(preset)
    x, t, y = random_inputs(cfg, batch=2, seed=1)
    y = np.array([3, 4]) if y is not None else None   # the last class and the null id: both valid
    fwd(x, t, y)                                       # the inputs before spoiling are accepted
    with pytest.raises(ValueError, match=message):
        fwd(*spoil(x, t, y))


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("what, spoil, message", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_tinygrad_forward_refuses_bad_shapes(preset, what, spoil, message):
    cfg = PRESETS[preset]
    params = {k: Tensor(v) for k, v in random_params(cfg).items()}
    x, t, y = random_inputs(cfg, batch=2, seed=1)
    x, t, y = spoil(x, t, y)
    with pytest.raises(ValueError, match=message):
        tg_model(cfg.arch).forward(params, Tensor(x), Tensor(np.asarray(t, np.float32)), Tensor(y.astype(np.int32)), cfg)


@pytest.mark.parametrize("preset", TINY)
def test_tinygrad_forward_refuses_bad_dtypes(preset):
    cfg = PRESETS[preset]
    params = {k: Tensor(v) for k, v in random_params(cfg).items()}
    x, t, y = random_inputs(cfg, batch=2, seed=1)
    fwd = lambda xx, tt, yy: tg_model(cfg.arch).forward(params, xx, tt, yy, cfg)  # noqa: E731
    xt, tt, yt = Tensor(x), Tensor(t.astype(np.float32)), Tensor(y.astype(np.int32))
    with pytest.raises(ValueError, match=r"x has dtype dtypes\.uchar: images must be floats in \[-1, 1\]; scale uint8"):
        fwd(Tensor(((x + 1) * 127.5).astype(np.uint8)), tt, yt)
    with pytest.raises(ValueError, match=r"class ids y must be an integer tensor, got dtype dtypes\.float"):
        fwd(xt, tt, Tensor(y.astype(np.float32)))
    with pytest.raises(ValueError, match=r"timesteps t must be numbers, got dtype dtypes\.bool"):
        fwd(xt, Tensor(np.array([True, False])), yt)


def test_device_values_are_not_read():
    """On tinygrad tensors only shapes and dtypes are checked: values out of range pass (reading them would copy
    them to the host inside TinyJit); the same values in NumPy arrays are refused."""
    cfg = PRESETS["tokenfree-tiny"]
    x = np.full((2, 3, 8, 8), 200.0, np.float32)
    t, y = np.array([5000.0, -1.0], np.float32), np.array([9, 0], np.int32)
    check_inputs(cfg, Tensor(x), Tensor(t), Tensor(y))
    with pytest.raises(ValueError, match="values up to 200"):
        check_inputs(cfg, x, t, y)


@pytest.mark.parametrize("preset", TINY)
def test_legitimate_inputs_pass(preset):
    """What the samplers and training feed: noisy x_t at every t (|x_t| well beyond 1), integer t as int64 or as
    whole floats (tinygrad's samplers use float32), t = 0 and T - 1, the null class id; and a longer schedule's t
    with T given."""
    fwd, cfg = np_forward(preset)
    sched = make_schedule()
    x0, _, y = random_inputs(cfg, batch=4, seed=2)
    t = np.array([0, 1, 500, 999])
    noise = np.random.default_rng(3).standard_normal(x0.shape).astype(np.float32)
    noise[-1].flat[0] = 8.0                              # an 8-sigma draw at t = 999: x_t ~ 8, still legitimate
    xt = q_sample(x0, t, noise, sched)
    assert np.abs(xt).max() > 7
    y = None if y is None else np.array([0, 1, cfg.num_classes - 1, cfg.null_class])
    assert fwd(xt, t, y).shape == x0.shape
    assert fwd(xt, t.astype(np.float32), y).shape == x0.shape
    check_inputs(cfg, xt, np.array([1500, 1999, 0, 7]), y, multiple=1, T=2000)
    model = np_model(cfg.arch)                           # a longer schedule through forward: T, as numpy_ref.sample passes it
    assert model.forward(random_params(cfg), xt, np.array([1500, 1999, 0, 7]), y, cfg, T=2000).shape == x0.shape
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\)"):
        model.forward(random_params(cfg), xt, np.array([1500, 1999, 0, 7]), y, cfg)
