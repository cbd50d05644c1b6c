"""The feature network: a small CNN classifier whose pooled penultimate layer stands in for Inception features.

tinygrad_impl.train_features trains it on the real training set of a dataset; NumPy alone reads it here,
so evaluation (numpy_ref.metrics) needs no framework. Layout (W = cfg.width, GroupNorm of 8 groups):

    x (B, C, H, W) -> [conv3x3 -> GroupNorm -> SiLU] x 4 with channels W, 2W, 4W, 8W and strides 1, 2, 2, 2
      -> global average pool -> features (B, 8W) -> linear head -> logits (B, K)

Nothing depends on the image size (8x8 .. 32x32 and up work), but a net is only meaningful on the size and
dataset it was trained on: the file records both, and load_features / check_images hold them to it.
"""
import json
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .layers import conv2d, group_norm, linear, silu
from .weights import write_atomically

FORMAT = "tokenfree-diffusion/features/1"
# (channel multiplier of W, stride) of each conv block. Downsampling at every block after the first learns
# Fashion-MNIST faster than the plan (1,1),(2,2),(2,1),(4,2), and costs less
LEVELS = ((1, 1), (2, 2), (4, 2), (8, 2))
GROUPS = 8                                    # GroupNorm groups: no batch statistics, so features of a sample never depend on its batch


@dataclass(frozen=True)
class FeatureConfig:
    img_size: int = 32            # H = W of the images it was trained on
    in_channels: int = 3
    num_classes: int = 10
    width: int = 16               # W: features have 8W dimensions

    def __post_init__(self):
        problems = []
        for name in ("img_size", "in_channels", "width"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_classes < 2:
            problems.append(f"num_classes={self.num_classes}: a classifier needs at least 2 classes "
                            "(a dataset without labels cannot train the feature network)")
        if self.width % GROUPS:
            problems.append(f"width={self.width} must be a multiple of {GROUPS} (the GroupNorm groups)")
        if problems:
            raise ValueError("invalid FeatureConfig: " + "; ".join(problems))

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
            raise ValueError(f"feature config has unknown fields {unknown}: written by another version or program")
        return cls(**d)


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def param_shapes(cfg):
    """{name: shape} of a feature network."""
    shapes, c_in = {}, cfg.in_channels
    for i, (mult, _) in enumerate(LEVELS):
        c = mult * cfg.width
        shapes[f"blocks.{i}.conv.weight"] = (c, c_in, 3, 3)
        shapes[f"blocks.{i}.conv.bias"] = (c,)
        shapes[f"blocks.{i}.norm.weight"] = (c,)
        shapes[f"blocks.{i}.norm.bias"] = (c,)
        c_in = c
    shapes["head.weight"] = (cfg.num_classes, c_in)
    shapes["head.bias"] = (cfg.num_classes,)
    return shapes


def init_params(cfg, seed=0):
    """He-normal conv kernels (SiLU is ReLU-like), unit GroupNorm scales, zero biases, a small head (float32)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w = np.ones(shape)
        elif name.endswith(".bias"):
            w = np.zeros(shape)
        elif name == "head.weight":
            w = rng.normal(0.0, 0.01, shape)
        else:
            w = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        params[name] = w.astype(np.float32)
    return params


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


def check_images(cfg, shape, what="images"):
    """ValueError unless images of `shape` (N, C, H, W) are what the network was trained on."""
    if len(shape) != 4 or tuple(shape[1:]) != (cfg.in_channels, cfg.img_size, cfg.img_size):
        raise ValueError(f"{what} have shape {tuple(shape)[1:]}, but the feature network was trained on "
                         f"{(cfg.in_channels, cfg.img_size, cfg.img_size)} images: train one for this data with "
                         f"python -m tinygrad_impl.train_features --data <name> --size {shape[-1] if len(shape) == 4 else '<size>'}")


def compute_features(params, images, batch=256, progress=None):
    """(features (N, 8W), logits (N, K)) of images (N, C, H, W), in batches; progress: optional tqdm-like wrapper."""
    starts = range(0, len(images), batch)
    parts = [forward(params, np.asarray(images[i:i + batch], np.float32)) for i in (progress(starts) if progress else starts)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ----------------------------------------------------------------------------
# Files: safetensors, written atomically like numpy_ref.weights, with their own metadata
# ----------------------------------------------------------------------------

def features_path(data, size=None, root="data"):
    """Default file of the feature network of a dataset: <root>/features/<name>.safetensors (-<size> when not 32)."""
    from .data import data_tag
    tag = data_tag(data) + ("" if size in (None, 32) else f"-{size}")
    return os.path.join(root, "features", f"{tag}.safetensors")


def check_params(params, cfg, what="feature network"):
    expected = param_shapes(cfg)
    for k, shape in expected.items():
        if k not in params:
            raise ValueError(f"{what}: missing tensor {k!r}")
        if tuple(params[k].shape) != tuple(shape):
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(params[k].shape)}, expected {tuple(shape)}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"{what}: unexpected tensor {extra[0]!r}")


def save_features(path, params, cfg, dataset, test_accuracy, meta=None):
    """Write a feature network atomically (weights.write_atomically: fsynced, the umask's permissions); the metadata
    holds kind "features", the dataset, the test accuracy, the arch spec (FeatureConfig JSON) and `meta` (JSON-able
    training facts). Returns path."""
    check_params(params, cfg)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    metadata = {"format": FORMAT, "kind": "features", "dataset": str(dataset), "test_accuracy": repr(float(test_accuracy)),
                "config": cfg.to_json(), "meta": json.dumps(meta or {}, sort_keys=True)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def load_features(path):
    """(params, cfg, meta) of a feature network file; meta has dataset and test_accuracy plus the training facts."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no feature network at {path}: make one with "
                                "python -m tinygrad_impl.train_features --data <name> (--out to put it elsewhere)")
    try:
        from safetensors import safe_open
        with safe_open(path, "np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or another format?): {e}") from None
    if metadata.get("format") != FORMAT or metadata.get("kind") != "features":
        hint = (" It is a diffusion model checkpoint; give it as --ckpt, and the classifier as --features."
                if "config" in metadata and metadata.get("format", "").startswith("tokenfree-diffusion") else "")
        raise ValueError(f"{path} is not a feature network (no kind 'features' in its metadata).{hint} Make one with "
                         "python -m tinygrad_impl.train_features --data <name>")
    cfg = FeatureConfig.from_json(metadata["config"])
    check_params(tensors, cfg, path)
    meta = dict(json.loads(metadata.get("meta", "{}")), dataset=metadata["dataset"],
                test_accuracy=float(metadata["test_accuracy"]))
    return tensors, cfg, meta
