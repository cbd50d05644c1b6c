"""The architecture report: its MAC count against the closed form, its kernel counts, its table."""
import numpy as np

from numpy_ref.configs import get_config
from tinygrad_impl import report


def tokenfree_macs(cfg):
    """Closed form of the token-free forward's multiply-accumulates for one image."""
    D, S, C, H = cfg.width, cfg.stride, cfg.in_channels, cfg.img_size
    L, hid = (H // S) ** 2, int(D * cfg.mlp_ratio)
    per_block = 6 * D * D + L * (3 * D * D + D * D + 2 * D * hid) + 2 * L * L * D + (L * hid * 9 if cfg.pos_conv else 0)
    n_out = cfg.depth // 2 if cfg.skips else 0
    return (L * D * C * (S + 2) ** 2 + 2 * D * D + cfg.depth * per_block + n_out * L * 2 * D * D
            + 2 * D * D + L * D * S * S * C + H * H * C * C * 9)


def test_report_measures_one_preset():
    r = report.measure("tokenfree-tiny", img_size=8, channels=3, num_classes=4, batch=2)
    cfg = get_config("tokenfree-tiny")
    assert r["macs"] == tokenfree_macs(cfg)
    from numpy_ref.models import tokenfree
    assert r["params"] == sum(int(np.prod(s)) for s in tokenfree.param_shapes(cfg).values())
    assert 0 < r["fwd_kernels"] <= r["fwd_launches"] and 0 < r["step_kernels"] <= r["step_launches"]
    assert r["fwd_launches"] < r["step_launches"] and r["step_s"] > 0
    table = report.format_table([r], 2)
    assert "| tokenfree-tiny | 0.07M |" in table and table.count("\n") == 2


def test_count_macs_is_the_closed_form_and_counts_every_parameter():
    from numpy_ref.models import count_macs, get_model
    for cfg in (get_config("tokenfree-tiny"), get_config("tokenfree-tiny", pos_conv=False, skips=False, depth=2)):
        n_params, macs = count_macs(cfg)
        assert macs == tokenfree_macs(cfg)
        assert n_params == sum(int(np.prod(s)) for s in get_model(cfg.arch).param_shapes(cfg).values())
    cfg = get_config("unet-tiny")
    assert count_macs(cfg, get_model("unet").init_params(cfg, 7)) == count_macs(cfg)   # the values do not matter
