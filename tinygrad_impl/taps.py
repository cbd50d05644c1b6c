"""Intermediate activations of a forward pass, for feature distillation (tinygrad_impl/distill.py).

A model calls tap(name, fn) at a few points; fn() is evaluated only inside `with collect() as feats:`, so a forward
outside it costs nothing extra. Every architecture taps two maps (B, C, h, w):
  "mid": the bottleneck (tokenfree, uvit: the middle block's output as a map; the U-Nets and DiffiT: the lowest level)
  "out": the last hidden map before the output head.
"""
from contextlib import contextmanager

LEVELS = ("mid", "out")
_taps = None


@contextmanager
def collect():
    """with collect() as feats: model.forward(...); feats is then {name: (B, C, h, w) Tensor} of the taps."""
    global _taps
    outer, _taps = _taps, {}
    try:
        yield _taps
    finally:
        _taps = outer


def tap(name, fn):
    """Record fn() (a (B, C, h, w) Tensor) as feature `name` while collect() is active; otherwise fn is not called."""
    if _taps is not None:
        _taps[name] = fn()
