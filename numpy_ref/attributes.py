"""The attribute classifier: a small CNN that reads what a captioned image shows (numpy_ref/captions.py): where the
objects are, and each one's shape, colour and size. tinygrad_impl.evaluate_text judges text-to-image samples with it.

Design (one line): one head set per cell of the captions' 3x3 grid, shared by all cells -- "is an object centred
here", and its shape, colour and size -- instead of per-object heads, so two objects need no order (the image does
not say which one the caption names first) and count and position fall out of the 9 objectness logits.

    x (B, C, H, W) -> the feature network's trunk (numpy_ref/features.py: [conv3x3 -> GroupNorm -> SiLU] x 4,
      channels W, 2W, 4W, 8W, strides 1, 2, 2, 2) -> map (B, 8W, h, w), h = H/8
      -> sampled bilinearly at the 9 grid-cell centres (cell_pool) -> cells (B, 9, 8W)
      -> linear -> SiLU -> (B, 9, hidden) -> heads: object (B, 9), shape (B, 9, 6), colour (B, 9, 7), size (B, 9, 2)

Reading the logits (read_objects, judge): the occupied cells are those whose object logit is > 0 (at least the
most object-like one); the count is how many; an object's shape, colour and size are the argmaxes at its cell.
The cell centres sit at 1/4, 1/2 and 3/4 of the image side, where captions.draw_images puts the objects; the map
needs 2x2 positions or more (images of 16x16 and up). A file records the image size it was trained on.
"""
import json
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .captions import COLOURS, SIZES
from .data import SHAPES
from .features import GROUPS, LEVELS
from .layers import conv2d, group_norm, linear, silu
from .weights import write_atomically

FORMAT = "tokenfree-diffusion/attributes/1"
GRID = 3                                           # the captions' grid: cell id = 3 * row + column (POSITIONS)
CELLS = GRID * GRID
CENTRES = (0.25, 0.5, 0.75)                        # cell centres, a fraction of the image side (captions.draw_images)
# the per-cell heads and their classes; "object" is one logit (sigmoid: an object is centred in this cell)
HEADS = (("shape", len(SHAPES)), ("colour", len(COLOURS)), ("size", len(SIZES)))
ATTRIBUTES = ("count", "shape", "colour", "size", "position")   # what judge() scores, in table order
MIN_SIZE = 16                                      # below, the stride-8 map is 1x1 and cannot tell the cells apart


@dataclass(frozen=True)
class AttributeConfig:
    img_size: int = 32            # H = W of the images it was trained on
    in_channels: int = 3
    width: int = 16               # W: the trunk ends with 8W channels
    hidden: int = 64              # the per-cell hidden layer

    def __post_init__(self):
        problems = []
        for name in ("in_channels", "width", "hidden"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.img_size < MIN_SIZE:
            problems.append(f"img_size={self.img_size} must be >= {MIN_SIZE}: the trunk's stride-8 map needs 2x2 "
                            "positions to tell the 3x3 grid's cells apart")
        if self.width % GROUPS:
            problems.append(f"width={self.width} must be a multiple of {GROUPS} (the GroupNorm groups)")
        if problems:
            raise ValueError("invalid AttributeConfig: " + "; ".join(problems))

    @property
    def feature_dim(self):
        return LEVELS[-1][0] * self.width

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"attribute config has unknown fields {unknown}: written by another version or program")
        return cls(**d)


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def param_shapes(cfg):
    """{name: shape} of an attribute classifier: the trunk named as the feature network's (blocks.i.conv/norm),
    then cells.fc and one head per attribute."""
    shapes, c_in = {}, cfg.in_channels
    for i, (mult, _) in enumerate(LEVELS):
        c = mult * cfg.width
        shapes[f"blocks.{i}.conv.weight"] = (c, c_in, 3, 3)
        shapes[f"blocks.{i}.conv.bias"] = (c,)
        shapes[f"blocks.{i}.norm.weight"] = (c,)
        shapes[f"blocks.{i}.norm.bias"] = (c,)
        c_in = c
    shapes["cells.fc.weight"] = (cfg.hidden, c_in)
    shapes["cells.fc.bias"] = (cfg.hidden,)
    for name, k in (("object", 1),) + HEADS:
        shapes[f"heads.{name}.weight"] = (k, cfg.hidden)
        shapes[f"heads.{name}.bias"] = (k,)
    return shapes


def init_params(cfg, seed=0):
    """He-normal conv and fc weights (SiLU is ReLU-like), unit GroupNorm scales, zero biases, small heads (float32)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w = np.ones(shape)
        elif name.endswith(".bias"):
            w = np.zeros(shape)
        elif name.startswith("heads."):
            w = rng.normal(0.0, 0.01, shape)
        else:
            w = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        params[name] = w.astype(np.float32)
    return params


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def axis_weights(n):
    """(GRID, n) float32: linear-interpolation weights of the CENTRES on an axis of n map positions (position i
    covers [i, i + 1) / n of the side)."""
    w = np.zeros((GRID, n), np.float32)
    for r, f in enumerate(CENTRES):
        c = min(max(f * n - 0.5, 0.0), n - 1.0)                               # in map coordinates
        i0 = int(np.floor(c))
        i1, a = min(i0 + 1, n - 1), c - i0
        w[r, i0] += 1 - a
        w[r, i1] += a
    return w


def cell_pool(h, w):
    """(CELLS, h * w) float32: row 3 * r + c samples a (h, w) map, flattened row-major, bilinearly at cell (r, c)."""
    rows, cols = axis_weights(h), axis_weights(w)                              # (3, h), (3, w)
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(CELLS, h * w)


def forward(params, x):
    """x (B, C, H, W) in [-1, 1] -> logits {"object": (B, 9), "shape": (B, 9, 6), "colour": (B, 9, 7),
    "size": (B, 9, 2)}; cell i is POSITIONS[i]."""
    h = x
    for i, (_, stride) in enumerate(LEVELS):
        h = conv2d(h, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"], stride=stride, padding=1)
        h = silu(group_norm(h, GROUPS, params[f"blocks.{i}.norm.weight"], params[f"blocks.{i}.norm.bias"]))
    B, D, mh, mw = h.shape
    cells = (h.reshape(B, D, mh * mw) @ cell_pool(mh, mw).T).transpose(0, 2, 1)      # (B, 9, 8W)
    z = silu(linear(cells, params["cells.fc.weight"], params["cells.fc.bias"]))     # (B, 9, hidden)
    out = {"object": linear(z, params["heads.object.weight"], params["heads.object.bias"])[..., 0]}   # (B, 9)
    for name, _ in HEADS:
        out[name] = linear(z, params[f"heads.{name}.weight"], params[f"heads.{name}.bias"])           # (B, 9, K)
    return out


def check_images(cfg, shape, what="images"):
    """ValueError unless images of `shape` (N, C, H, W) are what the classifier was trained on."""
    if len(shape) != 4 or tuple(shape[1:]) != (cfg.in_channels, cfg.img_size, cfg.img_size):
        size = shape[-1] if len(shape) == 4 else "<size>"
        raise ValueError(f"{what} have shape {tuple(shape)[1:]}, but the attribute classifier was trained on "
                         f"{(cfg.in_channels, cfg.img_size, cfg.img_size)} images: train one for them with "
                         f"python -m tinygrad_impl.train_attributes --size {size}")


def compute_logits(params, images, batch=256, progress=None):
    """forward over images (N, C, H, W) in batches -> the logits dict with N rows; progress: a tqdm-like wrapper."""
    starts = range(0, len(images), batch)
    parts = [forward(params, np.asarray(images[i:i + batch], np.float32)) for i in (progress(starts) if progress else starts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------
# Targets and reading the logits
# ----------------------------------------------------------------------------

def cell_targets(attrs):
    """captions attributes (make_captioned) -> per-cell targets: object (N, 9) float32 (1 where an object is
    centred), shape / colour / size (N, 9) int64, -1 at empty cells."""
    n = len(attrs["count"])
    out = {"object": np.zeros((n, CELLS), np.float32)}
    out.update({name: np.full((n, CELLS), -1, np.int64) for name, _ in HEADS})
    for j in range(2):
        rows = np.nonzero(attrs["position"][:, j] >= 0)[0]
        cell = attrs["position"][rows, j]
        out["object"][rows, cell] = 1.0
        for name, _ in HEADS:
            out[name][rows, cell] = attrs[name][rows, j]
    return out


def read_objects(logits):
    """logits (forward) -> what the image shows: count (N,) = cells with an object logit > 0 (at least 1),
    order (N, 9) the cells from most to least object-like, and the argmax shape / colour / size of every cell
    (N, 9)."""
    obj = np.asarray(logits["object"])
    out = {"count": np.maximum((obj > 0).sum(1), 1), "order": np.argsort(-obj, 1, kind="stable")}
    out.update({name: np.asarray(logits[name]).argmax(-1) for name, _ in HEADS})
    return out


def judge(logits, attrs):
    """Per image, does it show what attrs (captions attributes, n rows) say? -> dict of bool arrays (n,):
    count: the predicted count is attrs' count; position: the count's most object-like cells are the objects'
    cells; shape / colour / size: every object has it, read where it is drawn (one object: at the most object-like
    cell, so a misplaced object is judged on its looks; two: at the caption's cells); all: everything."""
    seen = read_objects(logits)
    count, pos = np.asarray(attrs["count"]), np.asarray(attrs["position"]).reshape(-1, 2)
    rows = np.arange(len(count))
    top2 = np.sort(seen["order"][:, :2], 1)                                          # (n, 2)
    ok = {"count": seen["count"] == count,
          "position": np.where(count == 1, seen["order"][:, 0] == pos[:, 0], (top2 == np.sort(pos, 1)).all(1))}
    cell0 = np.where(count == 1, seen["order"][:, 0], pos[:, 0])                    # where object 0 is read
    cell1 = np.maximum(pos[:, 1], 0)
    for name, _ in HEADS:
        ok[name] = (seen[name][rows, cell0] == attrs[name][:, 0]) & ((count == 1) | (seen[name][rows, cell1] ==
                                                                                    attrs[name][:, 1]))
    ok["all"] = np.logical_and.reduce([ok[a] for a in ATTRIBUTES])
    return ok


def accuracies(ok, mask=None):
    """{name: fraction of the images judged correct} of judge's result, over the rows where mask (n,) is True (all
    rows when None); NaN where no row is left."""
    keep = np.ones(len(ok["all"]), bool) if mask is None else np.asarray(mask, bool)
    return {k: float(v[keep].mean()) if keep.any() else float("nan") for k, v in ok.items()}


# ----------------------------------------------------------------------------
# Files: safetensors, written atomically like numpy_ref.weights, with their own metadata
# ----------------------------------------------------------------------------

def attributes_path(size=None, root="data"):
    """Default file of the attribute classifier: <root>/attributes-captions.safetensors (-<size> when not 32)."""
    return os.path.join(root, f"attributes-captions{'' if size in (None, 32) else f'-{size}'}.safetensors")


def check_params(params, cfg, what="attribute classifier"):
    expected = param_shapes(cfg)
    for k, shape in expected.items():
        if k not in params:
            raise ValueError(f"{what}: missing tensor {k!r}")
        if tuple(params[k].shape) != tuple(shape):
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(params[k].shape)}, expected {tuple(shape)}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"{what}: unexpected tensor {extra[0]!r}")


def save_attributes(path, params, cfg, test_accuracy, meta=None):
    """Write an attribute classifier atomically (weights.write_atomically); the metadata holds kind "attributes",
    the per-attribute test accuracy ({name: fraction}, JSON), the arch spec (AttributeConfig JSON) and `meta`
    (JSON-able training facts). Returns path."""
    check_params(params, cfg)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    metadata = {"format": FORMAT, "kind": "attributes", "dataset": "captions", "config": cfg.to_json(),
                "test_accuracy": json.dumps({k: float(v) for k, v in test_accuracy.items()}, sort_keys=True),
                "meta": json.dumps(meta or {}, sort_keys=True)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def load_attributes(path):
    """(params, cfg, meta) of an attribute classifier file; meta has test_accuracy ({name: fraction}) and the
    training facts."""
    make = "python -m tinygrad_impl.train_attributes"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no attribute classifier at {path}: make one with {make} (--size N for other image "
                                "sizes, --out to put it elsewhere)")
    try:
        from safetensors import safe_open
        with safe_open(path, "np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or another format?): {e}") from None
    if metadata.get("format") != FORMAT or metadata.get("kind") != "attributes":
        raise ValueError(f"{path} is not an attribute classifier (no kind 'attributes' in its metadata); make one "
                         f"with {make}")
    cfg = AttributeConfig.from_json(metadata["config"])
    check_params(tensors, cfg, path)
    meta = dict(json.loads(metadata.get("meta", "{}")), test_accuracy=json.loads(metadata["test_accuracy"]))
    return tensors, cfg, meta

