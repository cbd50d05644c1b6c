"""Weight files: config round trip, clear errors for foreign or broken files, atomic writes."""
import json
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
