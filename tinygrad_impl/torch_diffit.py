"""PyTorch mirror of numpy_ref's DiffiT (numpy_ref/models/diffit.py), in torch.nn.functional over numpy_ref's
parameter dict. torch is imported inside the functions, so this module imports without it."""
from numpy_ref.models.diffit import relative_position_index, table_window, window_size
from .torch_mirror import torch_conditioning
from .torch_unets import conv, layer_norm, merge_heads, norm, split_heads


def window_partition(x, wh, ww):
    """(B, H, W, C) -> (B*nW, wh*ww, C): non-overlapping windows, row-major, each flattened row-major."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)      # (B, H/wh, W/ww, wh, ww, C)
    return x.reshape(-1, wh * ww, C)


def window_reverse(xw, wh, ww, H, W):
    """(B*nW, wh*ww, C) -> (B, H, W, C): the inverse of window_partition."""
    C = xw.shape[-1]
    x = xw.reshape(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)     # (B, H/wh, wh, W/ww, ww, C)
    return x.reshape(-1, H, W, C)


def relative_bias(table, wh, ww, w_table):
    """The learned table ((2w-1)^2, heads) gathered into the bias of one window: (heads, N, N)"""
    import torch
    N = wh * ww
    idx = torch.from_numpy(relative_position_index(wh, ww, w_table).reshape(-1)).to(table.device)   # (N*N,)
    return table[idx].reshape(N, N, -1).permute(2, 0, 1)                            # (heads, N, N)


def tmsa(p, prefix, x, xt, window, w_table, heads, level=0):
    """Time-dependent multi-head self-attention in windows: x (B, H, W, C) (normalised), xt (B, T) -> (B, H, W, C)"""
    import torch.nn.functional as F
    B, H, W, C = x.shape
    wh, ww = window_size(H, window, level), window_size(W, window, level)
    qkv = F.linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])              # (B, H, W, 3C)
    qkv = qkv + F.linear(xt, p[f"{prefix}.qkv_t.weight"])[:, None, None, :]            # + the time token's share
    q, k, v = (split_heads(window_partition(z, wh, ww), heads) for z in qkv.chunk(3, -1))   # (B*nW, h, N, d)
    bias = relative_bias(p[f"{prefix}.rel_bias"], wh, ww, w_table)                    # (h, N, N)
    o = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None]))    # (B*nW, N, C)
    return F.linear(window_reverse(o, wh, ww, H, W), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def diffit_block(p, prefix, h, xt, level, cfg):
    """x = x + TMSA(LN(x), x_t); x = x + MLP(LN(x)): h (B, H, W, C), xt (B, T) -> (B, H, W, C)"""
    import torch.nn.functional as F
    h = h + tmsa(p, f"{prefix}.attn", layer_norm(p, f"{prefix}.ln1", h), xt, cfg.window, table_window(cfg, level),
                 cfg.heads, level)
    z = F.gelu(F.linear(layer_norm(p, f"{prefix}.ln2", h), p[f"{prefix}.mlp.fc1.weight"], p[f"{prefix}.mlp.fc1.bias"]))
    return h + F.linear(z, p[f"{prefix}.mlp.fc2.weight"], p[f"{prefix}.mlp.fc2.bias"])


def res_block(p, prefix, x, xt, level, cfg):
    """DiffiT ResBlock: h = Conv3x3(SiLU(GN(x))); x + DiffiTBlock(h, x_t): x (B, C, H, W) -> (B, C, H, W)"""
    import torch.nn.functional as F
    h = conv(p, f"{prefix}.conv", F.silu(norm(p, f"{prefix}.norm", x, cfg)), padding=1)     # (B, C, H, W)
    h = diffit_block(p, prefix, h.permute(0, 2, 3, 1), xt, level, cfg)                  # (B, H, W, C)
    return x + h.permute(0, 3, 1, 2)


def torch_diffit(p, x, t, y, cfg):
    """numpy_ref.models.diffit.forward in PyTorch: x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    import torch
    import torch.nn.functional as F
    levels = len(cfg.channel_mult)
    xt = F.silu(torch_conditioning(p, t, y, cfg.channels, cfg))                        # (B, T): the time token
    h = conv(p, "stem", x, padding=1)                                                   # (B, C0, H, W)
    skips = []
    for level in range(levels):                                                         # encoder
        for j in range(cfg.num_res_blocks):
            h = res_block(p, f"enc.{level}.{j}", h, xt, level, cfg)
        if level < levels - 1:
            skips.append(h)                                                             # (B, C_l, H/2^l, W/2^l)
            h = conv(p, f"down.{level}", h, stride=2, padding=1)
    for level in reversed(range(levels)):                                               # decoder
        if level < levels - 1:
            h = conv(p, f"up.{level}", F.interpolate(h, scale_factor=2, mode="nearest"), padding=1)
            h = conv(p, f"skip.{level}", torch.cat([h, skips.pop()], 1))               # (B, C_l, H/2^l, W/2^l)
        for j in range(cfg.num_res_blocks):
            h = res_block(p, f"dec.{level}.{j}", h, xt, level, cfg)
    return conv(p, "out.conv", F.silu(norm(p, "out.norm", h, cfg)), padding=1)         # (B, C, H, W)
