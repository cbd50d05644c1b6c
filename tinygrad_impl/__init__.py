"""tinygrad_impl: the numpy_ref models ported to tinygrad, with training and fast sampling."""
import os

# PoCL (OpenCL on a CPU) prints "1 warning generated." for every kernel tinygrad renders with `if ((a==b))`; -w, a
# standard OpenCL build option, keeps those warnings out of the terminal. Set before PoCL builds its first program.
os.environ.setdefault("POCL_EXTRA_BUILD_FLAGS", "-w")
