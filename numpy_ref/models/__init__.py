"""One module per architecture; each has param_shapes(cfg), init_params(cfg, seed) and
forward(params, x, t, y=None, cfg=None) -> eps."""
import importlib

import numpy as np


def get_model(arch):
    """The numpy_ref module of an architecture, e.g. get_model("tokenfree").forward."""
    from ..configs import ARCHS
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return importlib.import_module(f"{__name__}.{arch}")


def count_macs(cfg, params=None):
    """(parameters, multiply-accumulates of one forward per image) of a model with config cfg: one image through the
    NumPy forward, counted by numpy_ref.layers.MACS (linear, conv and attention). params: the weights to run
    (default init_params(cfg, 0); the count does not depend on their values)."""
    from .. import layers as L
    model = get_model(cfg.arch)
    params = model.init_params(cfg, 0) if params is None else params
    C, H = cfg.in_channels, cfg.img_size
    y = np.zeros(1, np.int64) if cfg.num_classes else None
    L.MACS[0] = 0
    model.forward(params, np.zeros((1, C, H, H), np.float32), np.array([500]), y, cfg)
    return int(sum(np.asarray(v).size for v in params.values())), int(L.MACS[0])
