"""The attribute classifier in tinygrad: a line-by-line port of numpy_ref/attributes.py (training runs here)."""
import numpy as np
from tinygrad import Tensor

from numpy_ref import attributes as _ref
from numpy_ref.attributes import (ATTRIBUTES, CELLS, GROUPS, HEADS, LEVELS, AttributeConfig,  # noqa: F401  (shared)
                                  accuracies, attributes_path, cell_pool, cell_targets, check_images, judge,
                                  param_shapes, read_objects)
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
    """x (B, C, H, W) in [-1, 1] -> logits {"object": (B, 9), "shape": (B, 9, 6), "colour": (B, 9, 7),
    "size": (B, 9, 2)}; cell i is POSITIONS[i]."""
    h = x
    for i, (_, stride) in enumerate(LEVELS):
        h = conv2d(h, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"], stride=stride, padding=1)
        h = silu(group_norm(h, GROUPS, params[f"blocks.{i}.norm.weight"], params[f"blocks.{i}.norm.bias"]))
    B, D, mh, mw = h.shape
    pool = Tensor(np.ascontiguousarray(cell_pool(mh, mw).T), device=h.device)          # (h * w, 9), a constant
    cells = (h.reshape(B, D, mh * mw) @ pool).transpose(1, 2)                            # (B, 9, 8W)
    z = silu(linear(cells, params["cells.fc.weight"], params["cells.fc.bias"]))         # (B, 9, hidden)
    out = {"object": linear(z, params["heads.object.weight"], params["heads.object.bias"])[..., 0]}   # (B, 9)
    for name, _ in HEADS:
        out[name] = linear(z, params[f"heads.{name}.weight"], params[f"heads.{name}.bias"])           # (B, 9, K)
    return out


def loss_and_accuracy(logits, targets):
    """The training loss of logits (forward) against cell_targets as Tensors: binary cross-entropy of the 9 object
    logits + the cross-entropy of shape, colour and size at the occupied cells (-1 elsewhere is ignored) -> (loss,
    fraction of occupied cells whose shape, colour and size are all right), scalar Tensors."""
    loss = logits["object"].binary_crossentropy_logits(targets["object"])
    occupied = targets["shape"] >= 0                                                     # (B, 9)
    right = occupied
    for name, k in HEADS:
        lg = logits[name].reshape(-1, k)                                                 # (B * 9, K)
        loss = loss + lg.sparse_categorical_crossentropy(targets[name].reshape(-1), ignore_index=-1)
        right = right & (logits[name].argmax(-1) == targets[name])
    return loss, right.float().sum() / occupied.float().sum()


# ----------------------------------------------------------------------------
# Files (numpy_ref.attributes reads and writes them)
# ----------------------------------------------------------------------------

def save_attributes(path, params, cfg, test_accuracy, meta=None):
    """Write Tensors as an attribute classifier file, atomically."""
    return _ref.save_attributes(path, to_numpy(params), cfg, test_accuracy, meta)


def load_attributes(path, device=None):
    """(params as Tensors, cfg, meta); the same checks and errors as numpy_ref.attributes.load_attributes."""
    params, cfg, meta = _ref.load_attributes(path)
    return to_tensors(params, device), cfg, meta
