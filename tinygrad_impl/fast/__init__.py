"""The CPU fast path: hand-scheduled kernels for tinygrad's CPU backend and for OpenCL on a CPU (PoCL).

layers.py is the port of numpy_ref/layers.py in plain tinygrad ops, the path GPUs and Metal run. On a CPU a few of
its functions hand their work to this package in one line (`if fast.applies(x.device): return fast.linear(...)`):
the same sums as the plain path, in kernels scheduled for a CPU, most with their own backward. docs/speed.md says
why each exists and what it gains.

Switch: FAST=0 in the environment turns the fast path off everywhere (tinygrad's own kernels on every device);
tests flip it with `enabled(False)`. This package never imports layers.py.
"""
import contextlib
import functools
import os

from tinygrad import Device

_ON = [os.environ.get("FAST", "1") != "0"]


@functools.lru_cache(maxsize=None)
def cpu_like(device=None):
    """True for tinygrad's CPU backend and for OpenCL on a CPU (PoCL), where a work-group runs as a loop on one core."""
    dev = (device or Device.DEFAULT).split(":")[0].upper()
    if dev == "CPU":
        return True
    if dev == "CL":
        name = getattr(Device[device or Device.DEFAULT], "device_name", "").lower()
        return "pthread" in name or "cpu" in name
    return False


def applies(device, *sizes):
    """True where the fast path runs: a CPU device (see cpu_like), the switch on, and every size given > 1 (tinygrad
    folds length-1 ranges away, and the kernels' fixed schedules name ranges by position)"""
    return _ON[0] and isinstance(device, str) and cpu_like(device) and all(n > 1 for n in sizes)


def on_opencl(device):
    """True for OpenCL on a CPU, whose matmuls are OpenCL C programs (matmul.py)"""
    return applies(device) and device.split(":")[0].upper() == "CL"


@contextlib.contextmanager
def enabled(on):
    """with fast.enabled(False): the plain path inside the block (what FAST=0 does for a whole process)"""
    before, _ON[0] = _ON[0], bool(on)
    try:
        yield
    finally:
        _ON[0] = before


from .matmul import bmm, bmm_nt, linear, matmul  # noqa: E402
from .conv import depthwise_same_conv2d, token_depthwise_conv  # noqa: E402
from .convolution import conv2d  # noqa: E402
from .elementwise import affine, gelu_erf, modulate, silu, softmax  # noqa: E402
from .norm import group_norm  # noqa: E402
from .attention import attention  # noqa: E402
from .adamw import adamw_update  # noqa: E402
