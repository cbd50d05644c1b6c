"""tinygrad's BEAM search for the CLIs' `--beam N`: time candidate versions of each kernel, keep the fastest.

The search runs once per kernel and its result is cached on disk (tinygrad's cache.db), so only the first run of a
model and batch shape pays for it. Numbers for tokenfree-xs on 2 cores: README, Speed.
"""
import os

from tinygrad import Device
from tinygrad.helpers import BEAM


def cpu_like(device=None):
    """True for tinygrad's CPU backend and for OpenCL on a CPU (PoCL), where a work-group runs as a loop on one core."""
    dev = (device or Device.DEFAULT).split(":")[0].upper()
    if dev == "CPU":
        return True
    if dev == "CL":
        name = getattr(Device[device or Device.DEFAULT], "device_name", "").lower()
        return "pthread" in name or "cpu" in name
    return False


def use_beam(width, device=None):
    """BEAM-search every kernel compiled from now on with `width` (0: tinygrad's hand-written heuristics).
    Also set in the environment, so worker processes (the benchmark's samplers) search too."""
    if width < 0:
        raise ValueError(f"--beam must be >= 0 (0: no search), got {width}")
    if width and (device or os.environ.get("DEV") or "CL").split(":")[0].upper() == "CL":
        # before PoCL starts its threads (cpu_like opens the device): unpinned, a kernel timed alone ran 1x or 2x its
        # time at random (the two workers sharing one core), so the search kept slow versions; others ignore the variable
        os.environ.setdefault("POCL_AFFINITY", "1")
    if width and cpu_like(device):
        # work-groups on a CPU: on PoCL candidates with large ones took ~10 s each to time, for at most 3% gained
        os.environ.setdefault("BEAM_LOCAL_MAX", "1")
    os.environ["BEAM"] = str(width)
    BEAM.value = width
