"""Weight files: safetensors with the ModelConfig (JSON) and training facts in the metadata.

Layout of a file: the model's parameters under their own names ("blocks.0.attn.qkv.weight"),
optionally the EMA copy under "ema/<name>" and optimizer state under "opt/<name>".
Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""
import json
import os
import tempfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .configs import ModelConfig

FORMAT = "tokenfree-diffusion/1"


def check_params(params, cfg, what="weights"):
    """Raise ValueError naming the first missing, unexpected or mis-shaped tensor."""
    from .models import get_model
    expected = get_model(cfg.arch).param_shapes(cfg)
    missing = [k for k in expected if k not in params]
    if missing:
        raise ValueError(f"{what}: missing tensor {missing[0]!r} ({len(missing)} missing) for a {cfg.arch} model")
    extra = [k for k in params if k not in expected]
    if extra:
        raise ValueError(f"{what}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected) for a {cfg.arch} model")
    for k, shape in expected.items():
        if tuple(params[k].shape) != tuple(shape):
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(params[k].shape)}, expected {tuple(shape)}")


def save_weights(path, params, cfg, meta=None, ema=None, extra=None):
    """Write params (name -> array) atomically; ema: an EMA copy; extra: more tensors (e.g. "opt/..."),
    meta: JSON-able facts (step, dataset, schedule). Returns path."""
    check_params(params, cfg)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    if ema is not None:
        check_params(ema, cfg, "ema weights")
        tensors.update({f"ema/{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in ema.items()})
    for k, v in (extra or {}).items():
        tensors[k] = np.ascontiguousarray(v)
    metadata = {"format": FORMAT, "config": cfg.to_json(), "meta": json.dumps(meta or {}, sort_keys=True)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_file(path):
    """(tensors, cfg, meta) of a file this project wrote; a clear ValueError for anything else."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        from safetensors import safe_open
        with safe_open(path, "np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or another format?): {e}") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path} has no tokenfree-diffusion config in its metadata: it was not written by this "
                         "project (save it with numpy_ref.weights.save_weights)")
    cfg = ModelConfig.from_json(metadata["config"])
    return tensors, cfg, json.loads(metadata.get("meta", "{}"))


def _part(tensors, prefix=""):
    """{name: tensor} of one part of a file: prefix "ema/" or "opt/m/" etc.; "" is the model's own parameters."""
    if not prefix:
        return {k: v for k, v in tensors.items() if "/" not in k}
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(path, ema=False):
    """(params, cfg, meta) of one named copy: the raw parameters, or with ema=True the EMA copy (ValueError if the
    file has none). Parameters are checked against the config: a missing or mis-shaped tensor is named in the error."""
    tensors, cfg, meta = read_file(path)
    params = _part(tensors, "ema/" if ema else "")
    if ema and not params:
        raise ValueError(f"{path} holds no EMA weights; load it with ema=False")
    check_params(params, cfg, path)
    return params, cfg, meta


def load_for_sampling(path, raw=False):
    """(params, cfg, meta, which): the weights to sample with, which = "EMA" or "raw". The EMA copy when the file
    has one and raw is False, else the raw parameters. Same checks and errors as load_weights."""
    tensors, cfg, meta = read_file(path)
    params = {} if raw else _part(tensors, "ema/")
    which = "EMA" if params else "raw"
    params = params or _part(tensors)
    check_params(params, cfg, path)
    return params, cfg, meta, which


def has_ema(path):
    return bool(_part(read_file(path)[0], "ema/"))
