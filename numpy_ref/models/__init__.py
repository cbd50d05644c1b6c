"""One module per architecture; each has param_shapes(cfg), init_params(cfg, seed) and
forward(params, x, t, y=None, cfg=None) -> eps."""
import importlib


def get_model(arch):
    """The numpy_ref module of an architecture, e.g. get_model("tokenfree").forward."""
    from ..configs import ARCHS
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return importlib.import_module(f"{__name__}.{arch}")
