"""Weight files for tinygrad: the numpy_ref.weights format (read and written there), as Tensors."""
import numpy as np
from tinygrad import Tensor

from numpy_ref import weights as _ref


def to_tensors(params, device=None):
    """name -> np.ndarray  ->  name -> float32 Tensor (realized, a trainable parameter)."""
    return {k: Tensor(np.ascontiguousarray(v, dtype=np.float32), device=device).realize() for k, v in params.items()}


def to_numpy(params):
    """name -> Tensor  ->  name -> np.ndarray"""
    return {k: v.numpy() for k, v in params.items()}


def save_weights(path, params, cfg, meta=None, ema=None, extra=None):
    """Write Tensors (params, optional ema copy, extra state) to a safetensors file, atomically."""
    return _ref.save_weights(path, to_numpy(params), cfg, meta, None if ema is None else to_numpy(ema),
                             None if extra is None else to_numpy(extra))


def load_weights(path, ema=False, device=None):
    """(params as Tensors, cfg, meta); the same checks and errors as numpy_ref.weights.load_weights."""
    params, cfg, meta = _ref.load_weights(path, ema)
    return to_tensors(params, device), cfg, meta


def load_for_sampling(path, raw=False, device=None):
    """(params as Tensors, cfg, meta, "EMA" or "raw"): numpy_ref.weights.load_for_sampling, on `device`."""
    params, cfg, meta, which = _ref.load_for_sampling(path, raw)
    return to_tensors(params, device), cfg, meta, which
