"""Data parallel on tinygrad's multi-device tensors, run for real on two CPU devices (CPU:0, CPU:1): the same batches
give the same loss and weights as one device, and the checkpoint resumes on one device."""
import numpy as np
import pytest

from numpy_ref import weights as W
from numpy_ref.cli import CLIError
from tinygrad_impl import parallel, train

DEVICES = ("CPU", "CPU:1")


def test_bad_device_lists_are_named():
    with pytest.raises(CLIError, match="cannot open NOSUCH.*this machine has"):
        parallel.parse_devices("NOSUCH:0,NOSUCH:1")
    with pytest.raises(CLIError, match="mixes the backends CL, CPU"):
        parallel.parse_devices("CPU:0,CL:0")
    with pytest.raises(CLIError, match="two or more"):
        parallel.parse_devices("CPU:0")
    with pytest.raises(CLIError, match="twice"):
        parallel.parse_devices("CPU:0,CPU")
    assert parallel.parse_devices("CPU:0, CPU:1") == DEVICES
    with pytest.raises(CLIError, match="--batch 5 does not split over 2 devices"):
        parallel.check_batch(5, DEVICES)


def test_train_refuses_a_bad_device_list_before_any_work(tmp_path):
    base = ["--preset", "tokenfree-tiny", "--size", "8", "--out", str(tmp_path / "run")]
    with pytest.raises(CLIError, match="--batch 5 does not split over 2 devices"):
        train.main(base + ["--devices", "CPU:0,CPU:1", "--batch", "5"])
    with pytest.raises(CLIError, match="--device or --devices"):
        train.main(base + ["--devices", "CPU:0,CPU:1", "--device", "CPU"])
    with pytest.raises(CLIError, match="cannot open NOSUCH"):
        train.main(base + ["--devices", "NOSUCH:0,NOSUCH:1"])


def test_train_cli_on_two_devices_writes_the_one_device_checkpoint_and_resumes_on_one(tmp_path, capsys):
    """`train --devices CPU:0,CPU:1`: two steps give the checkpoint two steps on one device give (to float rounding),
    and that checkpoint resumes on one device"""
    run = ["--preset", "tokenfree-tiny", "--set", "depth=1", "--size", "8", "--batch", "4", "--steps", "2",
           "--sample-every", "0", "--sample-n", "2", "--sample-steps", "1", "--warmup", "1"]
    one = train.main(run + ["--out", str(tmp_path / "one"), "--device", "CPU"])
    two = train.main(run + ["--out", str(tmp_path / "two"), "--devices", "CPU:0,CPU:1"])
    assert "device CPU,CPU:1," in capsys.readouterr().out                         # it really ran sharded
    assert one["step"] == two["step"] == 2 and two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    a, b = (W.read_file(r["ckpt"])[0] for r in (one, two))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-5, err_msg=k)
    again = train.main(["--out", str(tmp_path / "two"), "--resume", "--steps", "3", "--device", "CPU",
                        "--sample-n", "2", "--sample-steps", "1"])
    assert again["start"] == 2 and again["step"] == 3
