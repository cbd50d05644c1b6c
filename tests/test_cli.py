"""The shared CLI pieces: flag checks name flag, value and range; expected failures are one line and exit code 2."""
import argparse
import os
import stat

import pytest

from numpy_ref import cli


def parse(flag_type, value):
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--x", type=flag_type)
    return p.parse_args(["--x", value]).x


@pytest.mark.parametrize("flag_type, value, message", [
    (cli.positive(float), "nan", "must be a finite number, got nan"),
    (cli.positive(float), "inf", "must be a finite number, got inf"),
    (cli.positive(float), "-1", "must be > 0, got -1"),
    (cli.positive(float), "0", "must be > 0, got 0"),
    (cli.non_negative(int), "-1", "must be >= 0, got -1"),
    (cli.non_negative(int), "1.5", "must be an integer, got '1.5'"),
    (cli.in_range(int, 1, 1000), "5000", "must be >= 1 and <= 1000, got 5000"),
])
def test_bad_flags_name_flag_value_and_range(capsys, flag_type, value, message):
    with pytest.raises(SystemExit) as e:
        parse(flag_type, value)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --x: " + message in err


def test_good_flags_pass():
    assert parse(cli.positive(float), "1e-3") == 1e-3 and parse(cli.non_negative(int), "0") == 0
    assert parse(cli.in_range(float, 0, 1), "1") == 1.0


def test_run_prints_expected_failures_as_one_line_with_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    def main(argv):
        raise FileNotFoundError(2, "No such file or directory", "ckpt.safetensors")
    with pytest.raises(SystemExit) as e:
        cli.run(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "ckpt.safetensors" in err
    monkeypatch.setenv("DEBUG", "1")                      # the traceback, for a bug report
    with pytest.raises(FileNotFoundError):
        cli.run(main)


def test_run_lets_bugs_through():
    def main(argv):
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        cli.run(main)


def test_output_paths_are_checked_before_any_work(tmp_path):
    cli.writable_file(str(tmp_path / "new" / "grid.png"))                  # a missing folder is made
    with pytest.raises(cli.CLIError, match="is a folder"):
        cli.writable_file(str(tmp_path))
    cli.writable_folder(str(tmp_path / "run"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(cli.CLIError, match="is a file"):
        cli.writable_folder(str(tmp_path / "f"))
    ro = "/proc" if os.geteuid() == 0 else str(tmp_path / "ro")            # root may write anywhere but /proc
    if ro != "/proc":
        os.mkdir(ro)
        os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(cli.CLIError, match="cannot write --out"):
        cli.writable_file(os.path.join(ro, "grid.png"))


def test_an_unknown_DEV_is_named_before_any_work(monkeypatch):
    from tinygrad_impl.sample import check_device
    monkeypatch.setenv("DEV", "NOSUCH")
    with pytest.raises(cli.CLIError, match=r"^DEV=NOSUCH: tinygrad has no such backend; devices tinygrad finds here: .*CPU"):
        check_device(None)
    monkeypatch.setenv("DEV", "CPU")
    assert check_device(None) is None   # a good DEV stays tinygrad's pick
