"""One module per architecture, mirroring numpy_ref.models: param_shapes, init_params, forward."""
import importlib


def get_model(arch):
    """The tinygrad_impl module of an architecture, e.g. get_model("tokenfree").forward."""
    from numpy_ref.configs import ARCHS
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return importlib.import_module(f"{__name__}.{arch}")
