"""Data-parallel training over several tinygrad devices (`train --devices CUDA:0,CUDA:1`).

The batch is split along axis 0 (`Tensor.shard(devices, axis=0)`); the weights, EMA and AdamW state are replicated
(`shard(devices)`), and tinygrad's multi-device tensors sum the gradients across devices in the backward. The step
is the one-device step unchanged: same loss, gradients and update to float rounding. Multi-device tensors take the
plain path (the CPU fast path's custom kernels work on one device). A checkpoint holds one copy of each tensor, so
it resumes on one device or several and samples in numpy_ref.
"""
from tinygrad import Device

from numpy_ref.cli import CLIError
from .adamw import flat_views


def available_devices():
    """The tinygrad backends that open on this machine, e.g. ['CPU', 'CL']"""
    return list(Device.get_available_devices())


def parse_devices(text):
    """'CPU:0,CPU:1' -> ('CPU', 'CPU:1') (tinygrad's names), each opened; CLIError naming an unknown device or a mix
    of backends (one multi-device tensor lives on one backend)"""
    names = [d.strip() for d in text.split(",") if d.strip()]
    if len(names) < 2:
        raise CLIError(f"--devices {text!r} names {len(names)} device; give two or more, e.g. CPU:0,CPU:1 "
                       "(one device: --device)")
    devices = tuple(Device.canonicalize(d) for d in names)
    if len(set(devices)) < len(devices):
        raise CLIError(f"--devices {text!r} names a device twice")
    kinds = sorted({d.split(":")[0] for d in devices})
    if len(kinds) > 1:
        raise CLIError(f"--devices {text!r} mixes the backends {', '.join(kinds)}: tinygrad shards over devices of "
                       "one backend, e.g. CUDA:0,CUDA:1")
    for d in devices:
        try:
            Device[d]
        except Exception as e:
            raise CLIError(f"--devices: tinygrad cannot open {d} ({type(e).__name__}); this machine has "
                           f"{', '.join(available_devices()) or 'no device'}")
    return devices


def check_batch(batch, devices):
    if batch % len(devices):
        raise CLIError(f"--batch {batch} does not split over {len(devices)} devices; use a multiple of {len(devices)}")


def replicate_state(state, shapes, devices):
    """The training state (adamw.pack_state's) with each flat buffer copied to every device, views remade"""
    out = dict(state, flat={})
    for part, flat in state["flat"].items():
        out["flat"][part] = flat.shard(devices).realize()
        out[part] = flat_views(out["flat"][part], shapes)
    return out


def shard_batch(x, devices):
    """x (B, ...) Tensor -> the same values split along B over the devices"""
    return x.shard(devices, axis=0)


def replicate(x, devices):
    """x Tensor -> a copy on every device (the step's scalars)"""
    return x.shard(devices)
