"""A minimal PyTorch mirror of numpy_ref's forwards, in torch.nn.functional over numpy_ref's parameter dict: the
reference that tinygrad_impl.bench times tinygrad against (pip install -e '.[bench]' for PyTorch). This module holds
the shared pieces, tokenfree and uvit, and `torch_forward`, which picks an architecture's mirror by cfg.arch; the
U-Nets are in torch_unets.py, DiffiT in torch_diffit.py. torch is imported inside the functions, so these modules
import without it."""
import math

import numpy as np

from numpy_ref.models.tokenfree import block_kind
from numpy_ref.models.uvit import num_extras


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def torch_timestep_embedding(t, dim, max_period=10000.0):
    """[cos, sin] sinusoid, computed in float64 like numpy_ref: t (B,) -> (B, dim) float32"""
    import torch
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = t.to(torch.float64).reshape(-1, 1) * freqs.reshape(1, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1).to(torch.float32)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def torch_conditioning(p, t, y, dim, cfg):
    """c = MLP(sinusoid(t)) + label_embed(y) (the null class where y is None): t (B,), y (B,) or None -> (B, E)"""
    import torch
    import torch.nn.functional as F
    c = F.linear(F.silu(F.linear(torch_timestep_embedding(t, dim), p["time_embed.0.weight"], p["time_embed.0.bias"])),
                 p["time_embed.2.weight"], p["time_embed.2.bias"])                       # (B, E)
    if cfg.num_classes:
        ids = torch.full((len(t),), cfg.null_class) if y is None else y.long()
        c = c + p["label_embed.weight"][ids]
    return c


def torch_attention(x, p, prefix, heads):
    """Fused-qkv self-attention with PyTorch's own SDPA kernel: x (B, L, D) -> (B, L, D)"""
    import torch.nn.functional as F
    B, L, D = x.shape
    qkv = F.linear(x, p[f"{prefix}.qkv.weight"], p.get(f"{prefix}.qkv.bias"))             # (B, L, 3D)
    q, k, v = qkv.reshape(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)             # 3 x (B, h, L, d)
    o = F.scaled_dot_product_attention(q, k, v)                                          # (B, h, L, d)
    return F.linear(o.transpose(1, 2).reshape(B, L, D), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def torch_tokenfree_stem(p, x, cfg):
    """The initial convolution, kernel k = stem_kernel (0: S + 2), padding (k - S) // 2 of zeros or wrapped around
    (stem_padding): x (B, C, H, W) -> (B, D, H/S, W/S)"""
    import torch.nn.functional as F
    S = cfg.stride
    pad = ((getattr(cfg, "stem_kernel", 0) or S + 2) - S) // 2
    if getattr(cfg, "stem_padding", "zeros") == "circular":
        x, pad = F.pad(x, (pad, pad, pad, pad), mode="circular"), 0
    return F.conv2d(x, p["stem.weight"], p["stem.bias"], stride=S, padding=pad)


def torch_tokenfree(p, x, t, y, cfg):
    """numpy_ref.models.tokenfree.forward in PyTorch: x (B, C, H, W), t (B,), y (B,) or None -> eps"""
    import torch
    import torch.nn.functional as F
    S, D, B = cfg.stride, cfg.width, x.shape[0]
    C = x.shape[1]
    h = torch_tokenfree_stem(p, x, cfg)                                                  # (B, D, H/S, W/S)
    hw = h.shape[2:]
    h = h.flatten(2).transpose(1, 2)                                                     # (B, L, D)
    if getattr(cfg, "pos_embed", False):
        h = h + p["pos_embed"]
    c = torch_conditioning(p, t, y, D, cfg)                                              # (B, D)
    skips = []
    for i in range(cfg.depth):
        kind = block_kind(i, cfg)
        if kind == "out":
            h = F.linear(torch.cat([h, skips.pop()], -1), p[f"blocks.{i}.skip_linear.weight"],
                         p[f"blocks.{i}.skip_linear.bias"])
        b = "blocks.0" if getattr(cfg, "share_blocks", False) else f"blocks.{i}"      # share_blocks: one block's weights
        sh1, sc1, g1, sh2, sc2, g2 = F.linear(F.silu(c), p[f"{b}.ada.weight"], p[f"{b}.ada.bias"]).unsqueeze(1).chunk(6, -1)
        h = h + g1 * torch_attention(F.layer_norm(h, (D,), eps=1e-6) * (1 + sc1) + sh1, p, f"{b}.attn", cfg.heads)
        z = F.linear(F.layer_norm(h, (D,), eps=1e-6) * (1 + sc2) + sh2, p[f"{b}.mlp.fc1.weight"], p[f"{b}.mlp.fc1.bias"])
        if cfg.pos_conv:
            hid = z.shape[-1]
            z = F.conv2d(z.transpose(1, 2).reshape(B, hid, *hw), p[f"{b}.mlp.pos_conv.weight"],
                         p[f"{b}.mlp.pos_conv.bias"], padding=1, groups=hid).flatten(2).transpose(1, 2)
        h = h + g2 * F.linear(F.gelu(z), p[f"{b}.mlp.fc2.weight"], p[f"{b}.mlp.fc2.bias"])
        if kind == "in":
            skips.append(h)
    shift, scale = F.linear(F.silu(c), p["final.ada.weight"], p["final.ada.bias"]).unsqueeze(1).chunk(2, -1)
    h = F.linear(F.layer_norm(h, (D,), eps=1e-6) * (1 + scale) + shift, p["final.linear.weight"], p["final.linear.bias"])
    h = F.pixel_shuffle(h.transpose(1, 2).reshape(B, S * S * C, *hw), S)                 # (B, C, H, W)
    return F.conv2d(h, p["final_conv.weight"], p["final_conv.bias"], padding=1)


def torch_uvit(p, x, t, y, cfg):
    """numpy_ref.models.uvit.forward in PyTorch (the official U-ViT's computation)"""
    import torch
    import torch.nn.functional as F
    P, D, (B, C) = cfg.stride, cfg.width, x.shape[:2]
    ln = lambda h, name: F.layer_norm(h, (D,), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)
    h = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=P)  # (B, D, H/p, W/p)
    hw = h.shape[2:]
    time_token = torch_timestep_embedding(t, D)
    if cfg.mlp_time_embed:
        time_token = F.linear(F.silu(F.linear(time_token, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                              p["time_embed.2.weight"], p["time_embed.2.bias"])
    tokens = [time_token[:, None]]
    if cfg.num_classes:
        ids = torch.full((B,), cfg.null_class) if y is None else y.long()
        tokens.insert(0, p["label_emb.weight"][ids][:, None])
    h = torch.cat(tokens + [h.flatten(2).transpose(1, 2)], 1) + p["pos_embed"]           # (B, extras + L, D)

    def block(name, h, skip=None):
        if skip is not None:
            h = F.linear(torch.cat([h, skip], -1), p[f"{name}.skip_linear.weight"], p[f"{name}.skip_linear.bias"])
        h = h + torch_attention(ln(h, f"{name}.norm1"), p, f"{name}.attn", cfg.heads)
        m = F.gelu(F.linear(ln(h, f"{name}.norm2"), p[f"{name}.mlp.fc1.weight"], p[f"{name}.mlp.fc1.bias"]))
        return h + F.linear(m, p[f"{name}.mlp.fc2.weight"], p[f"{name}.mlp.fc2.bias"])

    half, skips = cfg.depth // 2, []
    for i in range(half):
        h = block(f"in_blocks.{i}", h)
        skips.append(h)
    h = block("mid_block", h)
    for i in range(half):
        skip = skips.pop()
        h = block(f"out_blocks.{i}", h, skip if cfg.skips else None)
    h = F.linear(ln(h, "norm"), p["decoder_pred.weight"], p["decoder_pred.bias"])[:, num_extras(cfg):]
    (gh, gw) = hw
    h = h.reshape(B, gh, gw, P, P, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, gh * P, gw * P)   # unpatchify
    if cfg.final_conv:
        h = F.conv2d(h, p["final_layer.weight"], p["final_layer.bias"], padding=1)
    return h


def torch_forwards():
    """arch -> its PyTorch mirror, forward(p, x, t, y, cfg) -> eps; every architecture of numpy_ref has one."""
    from .torch_diffit import torch_diffit
    from .torch_unets import torch_mobile_unet, torch_snapgen_unet, torch_unet
    return {"tokenfree": torch_tokenfree, "uvit": torch_uvit, "diffit": torch_diffit, "unet": torch_unet,
            "mobile_unet": torch_mobile_unet, "snapgen_unet": torch_snapgen_unet}


def has_mirror(cfg):
    """Whether the mirrors compute cfg's model: every architecture, class-conditional or unconditional (no text)."""
    return cfg.arch in torch_forwards() and not getattr(cfg, "text_vocab", 0)


def torch_forward(p, x, t, y, cfg):
    """The mirror of cfg.arch: p {name: torch tensor}, x (B, C, H, W), t (B,), y (B,) or None -> eps (B, C, H, W)"""
    if not has_mirror(cfg):
        raise NotImplementedError(f"no PyTorch mirror of {cfg.arch} with text conditioning (text_vocab > 0)")
    return torch_forwards()[cfg.arch](p, x, t, y, cfg)


def torch_params(params, requires_grad=False, device="cpu"):
    """numpy params -> torch float32 tensors (copies, so training one side leaves the other alone)"""
    import torch
    return {k: torch.tensor(np.asarray(v, np.float32), requires_grad=requires_grad, device=device) for k, v in params.items()}


def torch_forward_numpy(params, x, t, y, cfg):
    """The PyTorch mirror on NumPy in and out (for tests and sampling)."""
    import torch
    with torch.inference_mode():
        out = torch_forward(params, torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                            torch.from_numpy(np.asarray(t, np.float32).reshape(-1)),
                            None if y is None else torch.from_numpy(np.asarray(y, np.int64)), cfg)
    return out.numpy()
