"""Shared test set-up: tinygrad on its CPU backend unless DEV says otherwise, hypothesis without deadlines."""
import os
import sys

os.environ.setdefault("DEV", "CPU")   # Debian's PoCL would otherwise make CL the default device
sys.path.insert(0, os.path.dirname(__file__))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=10, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

from tinygrad_impl import fast  # noqa: E402


@pytest.fixture(scope="module", params=["fast", "plain"])
def both_paths(request):
    """A test run twice: on the CPU fast path, then with it switched off (the plain path GPUs and Metal take)"""
    with fast.enabled(request.param == "fast"):
        yield request.param
