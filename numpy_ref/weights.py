"""Weight files: safetensors with the ModelConfig (JSON) and training facts in the metadata.

Layout of a file: the model's parameters under their own names ("blocks.0.attn.qkv.weight"),
optionally the EMA copy under "ema/<name>" and optimizer state under "opt/<name>".
Files are written to a temporary name, flushed to the disk and renamed, so a crash or a full disk never leaves half
a file and never harms the file it replaces; they get the usual permissions (0666 minus the umask: 0644 under 022).
A tensor holding NaN or inf is refused before anything is written.
"""
import errno
import json
import os
import re
import secrets

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
    meta: JSON-able facts (step, dataset, schedule). Returns path.
    ValueError naming the tensors that hold NaN or inf (nothing is written); OSError naming the path and the reason
    when the disk refuses (full, read-only, too large): the file at path is then unchanged."""
    check_params(params, cfg)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    if ema is not None:
        check_params(ema, cfg, "ema weights")
        tensors.update({f"ema/{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in ema.items()})
    for k, v in (extra or {}).items():
        tensors[k] = np.ascontiguousarray(v)
    check_finite(tensors, path)
    metadata = {"format": FORMAT, "config": cfg.to_json(), "meta": json.dumps(meta or {}, sort_keys=True)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def check_finite(tensors, path):
    """Raise ValueError naming the tensors with NaN or inf values: such a file would load and sample as noise."""
    bad = {k: int(np.size(v) - np.count_nonzero(np.isfinite(v))) for k, v in tensors.items()
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()}
    if bad:
        names = ", ".join(f"{k!r} ({n} of {np.size(tensors[k])})" for k, n in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise ValueError(f"refusing to write {path}: NaN or inf values in {names}{more}")


def write_atomically(path, write):
    """write(tmp) a file next to path, fsync it, give it the mode a new file gets (0666 minus the umask), rename it
    over path and fsync the folder: path holds the old file or the whole new one, also after a power cut.
    OSError naming path and the reason when the disk refuses; the temporary file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{os.path.basename(path)}")
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))   # the umask applies here
        mode = os.stat(tmp).st_mode & 0o777
        try:
            write(tmp)
        except SafetensorError as e:   # safetensors reports disk errors as its own type: make them OSErrors
            raise _os_error(e) from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)           # safetensors writes through a temporary file of its own, made 0600
        os.replace(tmp, path)
    except OSError as e:   # one line for the user, the errno kept for callers
        error = OSError(f"cannot write {path}: {(e.strerror or str(e)).lower()}"
                        f"{'; the previous file is unchanged' if os.path.exists(path) else ''}")
        error.errno = e.errno
        raise error from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_folder(folder)
    return path


def _os_error(e):
    """OSError(errno, reason) from a SafetensorError like 'I/O error: No space left on device (os error 28)'."""
    m = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(e))
    return OSError(int(m.group(2)), m.group(1)) if m else OSError(errno.EIO, str(e))


def _fsync_folder(folder):
    """Make a rename in folder durable; a file system that cannot sync a folder (some network ones) is let be."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
