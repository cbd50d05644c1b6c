"""U-ViT (arXiv 2209.12152), as published in libs/uvit.py of the official code (baofff/U-ViT).

Everything is a token: the time, the class label and the image patches go
through pre-LN transformer blocks with long skips between the in-half and the
out-half, and a learnable positional embedding tells the patches apart. The
parameter names are the official ones, so an official PyTorch state dict
(converted to NumPy) loads with `load_official_state_dict` and gives the same
output.

Config mapping: cfg.width = embed_dim, cfg.depth = the official `depth` (depth//2
in_blocks, one mid_block, depth//2 out_blocks: 12 -> 13 blocks), cfg.heads =
num_heads, cfg.stride = patch_size, cfg.skips = `skip`, cfg.mlp_time_embed,
cfg.final_conv = `conv`; the official num_classes is cfg.num_classes + 1 (the
last label_emb row is the null class).

Text conditioning (cfg.text_vocab > 0; y = token ids (B, L)) as the official text-to-image model (libs/uvit_t2i.py):
the prompt's text_len encoder states (text_cond.py; a jointly trained encoder here, CLIP there), projected to the
width by `context_embed`, are extra tokens after the time token, [time, text, patches], with their own rows of
pos_embed, attended without a mask (as the official 77 CLIP tokens), and dropped before the output head.
"""
import numpy as np

from ..configs import DEFAULT_T, check_inputs
from ..layers import concat, conv2d, embedding, gelu, layer_norm, linear, multi_head_attention, silu, timestep_embedding
from .text_cond import encode, init_text, text_shapes

LN_EPS = 1e-5   # nn.LayerNorm's default, which the official code uses

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def num_extras(cfg):
    """Tokens in front of the patches: the time token, and the label token when class-conditional, or the text_len
    text tokens when text-conditioned."""
    return 1 + (1 if cfg.num_classes else 0) + (cfg.text_len if cfg.text_vocab else 0)


def block_names(cfg):
    """Block prefixes in the order they run: in_blocks.0.., mid_block, out_blocks.0.."""
    half = cfg.depth // 2
    return [f"in_blocks.{i}" for i in range(half)] + ["mid_block"] + [f"out_blocks.{i}" for i in range(half)]


def param_shapes(cfg):
    """name -> shape of every parameter: the official state-dict names and shapes for this config."""
    D, p, C, hid = cfg.width, cfg.stride, cfg.in_channels, int(cfg.width * cfg.mlp_ratio)
    num_patches = (cfg.img_size // p) ** 2
    shapes = {
        "pos_embed": (1, num_extras(cfg) + num_patches, D),
        "patch_embed.proj.weight": (D, C, p, p), "patch_embed.proj.bias": (D,),
    }
    if cfg.mlp_time_embed:
        shapes.update({"time_embed.0.weight": (4 * D, D), "time_embed.0.bias": (4 * D,),
                       "time_embed.2.weight": (D, 4 * D), "time_embed.2.bias": (D,)})
    if cfg.num_classes:
        shapes["label_emb.weight"] = (cfg.num_classes + 1, D)   # last row: the null class
    if cfg.text_vocab:
        shapes.update({**text_shapes(cfg), "context_embed.weight": (D, cfg.text_width), "context_embed.bias": (D,)})
    for b in block_names(cfg):
        shapes.update({
            f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,),
            f"{b}.attn.qkv.weight": (3 * D, D),                  # qkv_bias=False in every official config
            f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
            f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,),
            f"{b}.mlp.fc1.weight": (hid, D), f"{b}.mlp.fc1.bias": (hid,),
            f"{b}.mlp.fc2.weight": (D, hid), f"{b}.mlp.fc2.bias": (D,),
        })
        if b.startswith("out_blocks") and cfg.skips:
            shapes.update({f"{b}.skip_linear.weight": (D, 2 * D), f"{b}.skip_linear.bias": (D,)})
    shapes.update({
        "norm.weight": (D,), "norm.bias": (D,),
        "decoder_pred.weight": (p * p * C, D), "decoder_pred.bias": (p * p * C,),
    })
    if cfg.final_conv:
        shapes.update({"final_layer.weight": (C, C, 3, 3), "final_layer.bias": (C,)})
    return shapes


def init_params(cfg, seed=0):
    """Fresh parameters (float32) initialised as the official code does: linear weights and pos_embed
    N(0, 0.02) (timm's trunc_normal_ cuts at +-2, i.e. 100 std: a plain normal), zero linear biases,
    LayerNorm 1/0, PyTorch's defaults for the rest: convs U(+-1/sqrt(fan_in)), label_emb N(0, 1); the text
    encoder's own initialisation for text.* (context_embed is a linear: N(0, 0.02))."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)
    params = {}
    for name, shape in shapes.items():
        if name.startswith(("patch_embed", "final_layer")):
            fan_in = int(np.prod(shapes[name.rsplit(".", 1)[0] + ".weight"][1:]))
            w = rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
        elif name == "label_emb.weight":
            w = rng.standard_normal(shape)
        elif "norm" in name:
            w = np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            w = np.zeros(shape)
        else:
            w = rng.normal(0.0, 0.02, shape)
        params[name] = w.astype(np.float32)
    return init_text(params, cfg, seed)


def load_official_state_dict(state_dict, cfg):
    """Our params from an official U-ViT state dict (name -> array, e.g. {k: v.numpy() for k, v in
    model.state_dict().items()}). Raises ValueError naming every missing, unexpected or mis-shaped key."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}   # DataParallel
    expected = param_shapes(cfg)
    problems = []
    missing = [k for k in expected if k not in sd]
    if missing:
        problems.append(f"missing keys {missing}")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for k, shape in expected.items():
        if k in sd and tuple(np.shape(sd[k])) != tuple(shape):
            problems.append(f"key {k!r} has shape {tuple(np.shape(sd[k]))}, expected {tuple(shape)}")
    if problems:
        raise ValueError(f"official U-ViT state dict does not fit {cfg.arch} config (width={cfg.width}, depth="
                         f"{cfg.depth}, stride={cfg.stride}, img_size={cfg.img_size}, num_classes={cfg.num_classes}, "
                         f"mlp_time_embed={cfg.mlp_time_embed}, final_conv={cfg.final_conv}, skips={cfg.skips}): "
                         + "; ".join(problems) + ". The official num_classes is cfg.num_classes + 1 (null class last).")
    return {k: np.array(sd[k], dtype=np.float32) for k in expected}


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def unpatchify(x, channels, patch, hw):
    """Official einops order 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)' (channel fastest, unlike pixel shuffle):
    x (B, h*w, p*p*C) -> (B, C, h*p, w*p)"""
    B = x.shape[0]
    h, w = hw
    x = x.reshape(B, h, w, patch, patch, channels).transpose(0, 5, 1, 3, 2, 4)   # (B, C, h, p1, w, p2)
    return x.reshape(B, channels, h * patch, w * patch)


def extra_tokens(p, t, y, cfg, dtype, txt=None):
    """The tokens in front of the patches: [label, time], [time, text] (txt: text_cond.Text) or [time]
    -> (B, extras, D)"""
    time_token = timestep_embedding(t, cfg.width).astype(dtype)                     # (B, D)
    if cfg.mlp_time_embed:
        time_token = linear(silu(linear(time_token, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                            p["time_embed.2.weight"], p["time_embed.2.bias"])       # (B, D)
    tokens = [time_token[:, None]]
    if cfg.num_classes:
        ids = np.full(len(time_token), cfg.null_class) if y is None else np.asarray(y).reshape(-1)
        # the official code prepends time, then prepends the label: the order is [label, time, patches]
        tokens.insert(0, embedding(ids, p["label_emb.weight"])[:, None])
    if txt is not None:
        # uvit_t2i: x = cat((time_token, context_token, x)); every text position, PAD ones too, is a token
        tokens.append(linear(txt.h, p["context_embed.weight"], p["context_embed.bias"]))   # (B, Lt, D)
    return concat(tokens, 1)


def block(p, prefix, h, cfg, skip=None):
    """Pre-LN transformer block; an out block first mixes in its skip: h (B, N, D) [, skip (B, N, D)] -> (B, N, D)"""
    if skip is not None:
        h = linear(concat([h, skip], -1), p[f"{prefix}.skip_linear.weight"], p[f"{prefix}.skip_linear.bias"])
    a = layer_norm(h, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"], LN_EPS)
    h = h + multi_head_attention(a, p, f"{prefix}.attn", cfg.heads)
    m = layer_norm(h, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"], LN_EPS)
    m = linear(gelu(linear(m, p[f"{prefix}.mlp.fc1.weight"], p[f"{prefix}.mlp.fc1.bias"]), "erf"),
               p[f"{prefix}.mlp.fc2.weight"], p[f"{prefix}.mlp.fc2.bias"])
    return h + m


def check_image_size(cfg, x_shape):
    """pos_embed holds one row per patch of an img_size x img_size image, so only that size works."""
    H, W = x_shape[2:]
    if H != cfg.img_size or W != cfg.img_size:
        raise ValueError(f"image size {H}x{W} does not match img_size={cfg.img_size}: U-ViT's learned pos_embed "
                         f"fixes the token count; resize to {cfg.img_size}x{cfg.img_size} or use a config with "
                         f"img_size={H}" + ("" if H == W else " (and square images)"))


def forward(params, x, t, y=None, cfg=None, T=DEFAULT_T):
    """Predict the noise: x (B, C, H, W) in [-1, 1] with H = W = cfg.img_size, t (B,) timesteps in [0, T), y (B,) class ids,
    (B, L) token ids (text_vocab > 0, L <= text_len) or None (the null condition) -> eps (B, C, H, W)."""
    check_inputs(cfg, x, t, y, T=T)
    check_image_size(cfg, x.shape)
    p, P = params, cfg.stride
    B, C, H, W = x.shape
    h = conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=P)   # (B, D, H/p, W/p)
    hw = h.shape[2:]
    h = h.reshape(B, cfg.width, -1).transpose(0, 2, 1)                                 # (B, L, D)
    txt = encode(p, y, cfg, B) if cfg.text_vocab else None                             # Text: (B, Lt, Dt), ...
    h = concat([extra_tokens(p, t, y, cfg, x.dtype, txt), h], 1)                       # (B, extras + L, D)
    h = h + p["pos_embed"]
    half = cfg.depth // 2
    skips = []
    for i in range(half):
        h = block(p, f"in_blocks.{i}", h, cfg)
        skips.append(h)
    h = block(p, "mid_block", h, cfg)
    for i in range(half):
        skip = skips.pop()                                                             # LIFO: the last in_block first
        h = block(p, f"out_blocks.{i}", h, cfg, skip if cfg.skips else None)
    h = layer_norm(h, p["norm.weight"], p["norm.bias"], LN_EPS)
    h = linear(h, p["decoder_pred.weight"], p["decoder_pred.bias"])                    # (B, extras + L, p*p*C)
    h = unpatchify(h[:, num_extras(cfg):], C, P, hw)                                   # (B, C, H, W)
    if cfg.final_conv:
        h = conv2d(h, p["final_layer.weight"], p["final_layer.bias"], padding=1)
    return h
