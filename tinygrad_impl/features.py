"""The feature network in tinygrad: a line-by-line port of numpy_ref/features.py (training runs here)."""
import numpy as np
from tinygrad import Tensor

from numpy_ref import features as _ref
from numpy_ref.features import (GROUPS, LEVELS, FeatureConfig, check_images, features_path,  # noqa: F401  (shared)
                                param_shapes)
from .layers import conv2d, group_norm, linear, silu
from .weights import to_numpy, to_tensors

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def init_params(cfg, seed=0, device=None):
    """The same initial values as numpy_ref (drawn there), as Tensors on `device`."""
    return to_tensors(_ref.init_params(cfg, seed), device)


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def forward(params, x):
    """x (B, C, H, W) in [-1, 1] -> (features (B, 8W), logits (B, K))."""
    h = x
    for i, (_, stride) in enumerate(LEVELS):
        h = conv2d(h, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"], stride=stride, padding=1)
        h = silu(group_norm(h, GROUPS, params[f"blocks.{i}.norm.weight"], params[f"blocks.{i}.norm.bias"]))
    features = h.mean((2, 3))                                                   # (B, 8W)
    return features, linear(features, params["head.weight"], params["head.bias"])   # (B, K)


def compute_features(params, images, batch=256, progress=None, device=None):
    """(features (N, 8W), logits (N, K)) as NumPy arrays; every batch padded to `batch` rows so one kernel set serves all."""
    starts = range(0, len(images), batch)
    feats, logits = [], []
    for i in (progress(starts) if progress else starts):
        x = np.asarray(images[i:i + batch], np.float32)
        n = len(x)
        if n < batch and len(images) > batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), np.float32)])
        f, lg = forward(params, Tensor(x, device=device))
        feats.append(f.numpy()[:n])
        logits.append(lg.numpy()[:n])
    return np.concatenate(feats), np.concatenate(logits)


# ----------------------------------------------------------------------------
# Files (numpy_ref.features reads and writes them)
# ----------------------------------------------------------------------------

def save_features(path, params, cfg, dataset, test_accuracy, meta=None):
    """Write Tensors as a feature network file, atomically."""
    return _ref.save_features(path, to_numpy(params), cfg, dataset, test_accuracy, meta)


def load_features(path, device=None):
    """(params as Tensors, cfg, meta); the same checks and errors as numpy_ref.features.load_features."""
    params, cfg, meta = _ref.load_features(path)
    return to_tensors(params, device), cfg, meta
