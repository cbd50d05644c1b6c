"""tinygrad's BEAM search for the CLIs' `--beam N`: time candidate versions of each kernel, keep the fastest.

The search runs once per kernel and its result is cached on disk (tinygrad's cache.db), so only the first run of a
model and batch shape pays for it (what it gains: docs/speed.md).
"""
import os

from tinygrad.helpers import BEAM

from .fast import cpu_like


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
        # no work-groups on a CPU: PoCL candidates with large ones are slow to time and gain little
        os.environ.setdefault("BEAM_LOCAL_MAX", "1")
    os.environ["BEAM"] = str(width)
    BEAM.value = width
