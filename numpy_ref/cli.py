"""What every command-line entry point shares: flag checks that name the flag, the value and the range, and
expected failures (bad files, full disk, permissions, unknown devices) as one line and exit code 2.

    if __name__ == "__main__":
        cli.run(main)               # DEBUG=1 in the environment shows the traceback too

A check is an argparse `type=`: `p.add_argument("--lr", type=cli.positive(float))`. argparse turns its error
into `prog: error: argument --lr: must be a finite number > 0, got nan` and exit code 2, before anything runs.
"""
import argparse
import math
import os
import sys
import tempfile


class CLIError(Exception):
    """An expected failure of a command, already phrased for the user: printed as one line, exit code 2."""


# failures a user can fix without reading a traceback: bad values and files, the disk, permissions, missing devices
EXPECTED = (CLIError, ValueError, OSError, KeyError, ModuleNotFoundError)


def run(main, argv=None):
    """main(argv), with expected failures printed as `error: ...` on stderr and exit code 2 (a traceback too under
    DEBUG=1); Ctrl-C exits with 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except EXPECTED as e:
        if os.environ.get("DEBUG", "0") not in ("", "0"):
            raise
        message = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
        print(f"error: {message or type(e).__name__}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------
# Flag checks (argparse types)
# ----------------------------------------------------------------------------

def _number(kind, text):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def in_range(kind, low=None, high=None, low_open=False):
    """An argparse type: a finite int or float in [low, high] ((low, high] with low_open); None: unbounded."""
    def check(text):
        value = _number(kind, text)
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"<= {high}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (lo, hi) if x)}, got {text}")
        return value
    check.__name__ = kind.__name__   # argparse names the type in its messages
    return check


def positive(kind):
    """An argparse type: a finite number > 0"""
    return in_range(kind, 0, low_open=True)


def non_negative(kind):
    """An argparse type: a finite number >= 0"""
    return in_range(kind, 0)


def writable_file(path):
    """Raise CLIError unless a file can be written at path: its folder exists or can be made, and path is not a
    folder. Checked before the work that would fill it, so nothing is computed for nothing."""
    if os.path.isdir(path):
        raise CLIError(f"--out {path} is a folder; give a file name, e.g. {os.path.join(path, 'grid.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the folder of --out {path}: {e.strerror}")
    _try_write(folder, f"--out {path}")


def writable_folder(path):
    """Raise CLIError unless files can be written inside the folder path (made if missing)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {path} is a file; give a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the folder --out {path}: {e.strerror}")
    _try_write(path, f"--out {path}")


def _try_write(folder, what):
    """Create and remove a scratch file in folder: the one test that also catches read-only disks and root-owned
    folders"""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CLIError(f"cannot write {what}: {e.strerror.lower()}; choose another path")
