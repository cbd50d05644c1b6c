"""Weight files: config round trip, clear errors for foreign or broken files, atomic writes with the usual
permissions, NaN refused, a full disk reported in one line."""
import errno
import json
import os
import resource
import signal
import stat
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from numpy_ref import weights as W
from numpy_ref.configs import ModelConfig, PRESETS
from tinygrad_impl import weights as TW
from util import random_params

CFG = PRESETS["tokenfree-tiny"]


def test_config_json_round_trip_and_unknown_fields():
    cfg = replace(CFG, channel_mult=(1, 2, 4), skips=False)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        ModelConfig.from_json('{"arch": "tokenfree", "colour": 1}')


def test_ema_and_extra_tensors(tmp_path):
    p, e = random_params(CFG, 1), random_params(CFG, 2)
    W.save_weights(tmp_path / "c.safetensors", p, CFG, {"step": 3, "data": "shapes"}, ema=e,
                   extra={"opt/step": np.array([3], np.int64)})
    raw, cfg, meta = W.load_weights(tmp_path / "c.safetensors")
    ema, _, _ = TW.load_weights(tmp_path / "c.safetensors", ema=True)
    assert cfg == CFG and meta == {"step": 3, "data": "shapes"} and W.has_ema(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(raw["stem.weight"], p["stem.weight"])
    np.testing.assert_array_equal(ema["stem.weight"].numpy(), e["stem.weight"])
    W.save_weights(tmp_path / "plain.safetensors", p, CFG)
    with pytest.raises(ValueError, match="holds no EMA weights"):
        W.load_weights(tmp_path / "plain.safetensors", ema=True)


def test_load_for_sampling_takes_the_ema_copy_when_there_is_one(tmp_path):
    p, e = random_params(CFG, 1), random_params(CFG, 2)
    both = W.save_weights(tmp_path / "both.safetensors", p, CFG, {"step": 3}, ema=e)
    plain = W.save_weights(tmp_path / "plain.safetensors", p, CFG, {"step": 4})
    params, cfg, meta, which = W.load_for_sampling(both)
    assert (cfg, meta, which) == (CFG, {"step": 3}, "EMA") and sorted(params) == sorted(p)
    np.testing.assert_array_equal(params["stem.weight"], e["stem.weight"])
    params, _, _, which = W.load_for_sampling(both, raw=True)
    assert which == "raw"
    np.testing.assert_array_equal(params["stem.weight"], p["stem.weight"])
    params, _, meta, which = W.load_for_sampling(plain)                    # no EMA copy: the raw weights
    assert which == "raw" and meta == {"step": 4}
    np.testing.assert_array_equal(params["stem.weight"], p["stem.weight"])
    params_t, cfg_t, _, which = TW.load_for_sampling(both)               # tinygrad's twin: the same, as Tensors
    assert cfg_t == CFG and which == "EMA"
    np.testing.assert_array_equal(params_t["stem.weight"].numpy(), e["stem.weight"])
    tensors = load_file(both)
    tensors["ema/stem.weight"] = tensors["ema/stem.weight"][:1]
    save_file(tensors, tmp_path / "bad.safetensors", metadata={"format": W.FORMAT, "config": CFG.to_json(),
                                                               "meta": json.dumps({})})
    with pytest.raises(ValueError, match="'stem.weight' has shape"):      # the chosen copy is checked
        W.load_for_sampling(tmp_path / "bad.safetensors")


def test_truncated_foreign_and_missing_files_give_clear_errors(tmp_path):
    path = W.save_weights(tmp_path / "ok.safetensors", random_params(CFG), CFG)
    data = open(path, "rb").read()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    for loader in (W.load_weights, TW.load_weights, W.load_for_sampling, TW.load_for_sampling):
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            loader(tmp_path / "trunc.safetensors")
    save_file({"w": np.zeros(3, np.float32)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not written by this project"):
        W.load_weights(tmp_path / "foreign.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        W.load_weights(tmp_path / "text.safetensors")
    with pytest.raises(FileNotFoundError, match="no weight file"):
        W.load_weights(tmp_path / "nope.safetensors")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = W.save_weights(tmp_path / "ckpt.safetensors", random_params(CFG, 1), CFG, {"step": 1})
    before = open(path, "rb").read()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(W, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        W.save_weights(path, random_params(CFG, 2), CFG, {"step": 2})
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    bad = random_params(CFG)
    bad["stem.weight"] = bad["stem.weight"][:1]
    with pytest.raises(ValueError, match="'stem.weight' has shape"):   # checked before anything is written
        W.save_weights(tmp_path / "new.safetensors", bad, CFG)
    assert not (tmp_path / "new.safetensors").exists()


def test_files_get_the_usual_permissions(tmp_path):
    """0666 minus the umask, as any new file (0644 under 022), not the 0600 of a temporary file: a checkpoint can be
    read by the group that shares a run folder"""
    old = os.umask(0o022)
    try:
        a = W.save_weights(tmp_path / "a.safetensors", random_params(CFG), CFG)
        os.umask(0o027)
        b = W.save_weights(tmp_path / "b.safetensors", random_params(CFG), CFG)
        W.save_weights(a, random_params(CFG, 1), CFG)   # replacing a file: the mode of a new one again
    finally:
        os.umask(old)
    assert (stat.S_IMODE(os.stat(a).st_mode), stat.S_IMODE(os.stat(b).st_mode)) == (0o640, 0o640)
    os.umask(0o022)
    try:
        c = W.save_weights(tmp_path / "c.safetensors", random_params(CFG), CFG)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(c).st_mode) == 0o644
    os.chmod(a, 0o644)
    assert W.load_weights(a)[1] == CFG


def test_nan_and_inf_tensors_are_refused_and_named(tmp_path):
    path = W.save_weights(tmp_path / "ckpt.safetensors", random_params(CFG, 1), CFG, {"step": 1})
    before = open(path, "rb").read()
    p, e = random_params(CFG, 2), random_params(CFG, 3)
    p["stem.weight"].flat[0] = np.nan
    e["stem.bias"][:] = np.inf
    with pytest.raises(ValueError, match=r"refusing to write .*ckpt.safetensors: NaN or inf values in 'stem.weight' "
                                         r"\(1 of \d+\), 'ema/stem.bias' \(\d+ of \d+\)"):
        W.save_weights(path, p, CFG, {"step": 2}, ema=e)
    with pytest.raises(ValueError, match="'opt/m/x'"):
        TW.save_weights(path, TW.to_tensors(random_params(CFG)), CFG, extra=TW.to_tensors({"opt/m/x": np.full(3, np.nan)}))
    assert open(path, "rb").read() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_a_full_disk_leaves_the_previous_file_and_says_so_in_one_line(tmp_path):
    """A real refusal of the operating system: a file-size limit (RLIMIT_FSIZE) below the checkpoint's size makes
    the write fail as a full disk does (EFBIG instead of ENOSPC), in safetensors' own writer"""
    path = W.save_weights(tmp_path / "ckpt.safetensors", random_params(CFG, 1), CFG, {"step": 1})
    before = open(path, "rb").read()
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, limits[1]))
    try:
        with pytest.raises(OSError) as e:
            W.save_weights(path, random_params(CFG, 2), CFG, {"step": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(e.value) == f"cannot write {path}: file too large; the previous file is unchanged"
    assert e.value.errno == errno.EFBIG
    assert open(path, "rb").read() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ckpt.safetensors"]
