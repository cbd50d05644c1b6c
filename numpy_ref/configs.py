"""Model configuration: one dataclass for every architecture, and named presets.

Presets fix the architecture; the image size, channels and class count come
from the dataset (the training CLI fills them in with `dataclasses.replace`).
"""
import json
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

ARCHS = ("tokenfree", "uvit", "diffit", "unet", "mobile_unet", "snapgen_unet")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "tokenfree"
    img_size: int = 32            # H = W of the training images
    in_channels: int = 3
    num_classes: int = 0          # 0: unconditional; else ids 0..n-1, and id n is the "null" class for CFG
    # transformer family (tokenfree, uvit)
    width: int = 128              # D
    depth: int = 7                # number of blocks N
    heads: int = 4
    mlp_ratio: float = 4.0
    stride: int = 2               # tokenfree: stem conv stride S; uvit: patch size p
    skips: bool = True            # U-ViT long skips between in-half and out-half blocks
    pos_conv: bool = True         # tokenfree: depthwise 3x3 conv on the MLP hidden map
    pos_embed: bool = False       # tokenfree ablation: learned absolute positional embedding (1, L, D) after the stem
    stem_kernel: int = 0          # tokenfree ablation: stem kernel k (0 = S + 2, overlapping; S = non-overlapping patchify)
    stem_padding: str = "zeros"   # tokenfree ablation: stem padding "zeros" or "circular" (wrap-around: no border cue)
    share_blocks: bool = False    # tokenfree ablation: one block's weights (blocks.0.*) reused by all N blocks
    # U-Net family (unet, mobile_unet, snapgen_unet, diffit)
    channels: int = 64            # base channel count
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 2
    attn_levels: tuple = (2,)     # resolution levels (0 = full size) that have attention
    window: int = 0               # diffit: attention window w (0 = the whole map)
    groups: int = 8               # GroupNorm groups
    prediction: str = "eps"       # what the network predicts: "eps", "v" = sqrt(abar) eps - sqrt(1 - abar) x0, or "flow" = eps - x0 (rectified flow)
    # text conditioning (every architecture; DESIGN.md 3.1 item 5): y is then (B, L) token ids of a prompt, PAD = 0
    text_vocab: int = 0           # 0: no text (class ids or unconditional); else the vocabulary size (ids 0..n-1)
    text_len: int = 16            # the longest prompt, in tokens (captions.MAX_LEN); shorter ones are PAD-padded to it
    text_width: int = 64          # the text encoder's width D_txt (its transformer: text_depth layers, text_heads heads)
    text_depth: int = 2
    text_heads: int = 4
    # -- fields of one architecture only (each added under its own marker) --
    # [uvit fields]
    mlp_time_embed: bool = False  # uvit: time token = Linear(D,4D)-SiLU-Linear(4D,D) of the sinusoid (official option, off in every official config)
    final_conv: bool = True       # uvit: the 3x3 Conv2d(C, C) after unpatchify (official `conv`; off in the latent ImageNet-256/512 models)
    # [diffit fields]
    # [unet fields]
    # [mobile_unet fields]
    separable_from: int = 1       # mobile_unet: ResBlocks at levels >= this (and the middle) use depthwise-separable convs
    # [snapgen_unet fields]
    conv_expansion: int = 2       # snapgen_unet: hidden width of the ResBlocks' separable convs = conv_expansion * input channels

    def __post_init__(self):
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        for name in ("img_size", "in_channels", "width", "depth", "heads", "stride", "channels", "groups"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_classes < 0:
            problems.append(f"num_classes={self.num_classes} must be >= 0 (0 means unconditional)")
        for name in ("text_len", "text_width", "text_depth", "text_heads"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.text_vocab < 0 or self.text_vocab == 1:
            problems.append(f"text_vocab={self.text_vocab} must be 0 (no text) or the vocabulary size >= 2 (PAD and a word)")
        if self.text_vocab and self.num_classes:
            problems.append(f"text_vocab={self.text_vocab} and num_classes={self.num_classes} are exclusive: a model is "
                            f"conditioned on prompts (text_vocab > 0) or on class ids (num_classes > 0); set one to 0")
        if self.text_vocab and self.text_heads >= 1 and self.text_width % self.text_heads:
            problems.append(f"text_heads={self.text_heads} does not divide text_width={self.text_width}")
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio={self.mlp_ratio} must be > 0")
        if self.arch in ("tokenfree", "uvit"):
            if self.width % self.heads:
                problems.append(f"heads={self.heads} does not divide width={self.width}; pick heads that divide it")
            if self.img_size % self.stride:
                problems.append(f"img_size={self.img_size} is not divisible by the stem stride {self.stride}")
        if self.arch == "tokenfree":
            k, S = self.stem_kernel, self.stride
            if k != 0 and (k < S or (k - S) % 2):
                problems.append(f"stem_kernel={k} must be 0 (= stride + 2) or >= the stride {S} with stem_kernel - stride "
                                f"even (the padding (k - S) / 2 keeps the map at img_size / stride); e.g. {S} or {S + 2}")
            if self.stem_padding not in ("zeros", "circular"):
                problems.append(f"stem_padding={self.stem_padding!r} must be 'zeros' or 'circular'")
        # [uvit checks]
        # [diffit checks]
        if self.arch == "diffit":
            levels = len(self.channel_mult)
            if levels < 1 or min(self.channel_mult) < 1:
                problems.append(f"channel_mult={tuple(self.channel_mult)} needs at least one level, each >= 1")
            elif self.img_size % 2 ** (levels - 1):
                problems.append(f"img_size={self.img_size} is not divisible by 2**(levels-1)={2 ** (levels - 1)} "
                                f"({levels} levels in channel_mult); pick a multiple or fewer levels")
            else:
                for level, m in enumerate(self.channel_mult):
                    C, side = self.channels * m, self.img_size >> level
                    if C % self.heads:
                        problems.append(f"heads={self.heads} does not divide the {C} channels of level {level}")
                    if C % self.groups:
                        problems.append(f"groups={self.groups} does not divide the {C} channels of level {level}")
                    if 0 < self.window < side and side % self.window:
                        problems.append(f"window={self.window} does not divide the {side}x{side} map of level {level}")
            if self.window < 0:
                problems.append(f"window={self.window} must be >= 0 (0 = attention over the whole map)")
            if self.num_res_blocks < 1:
                problems.append(f"num_res_blocks={self.num_res_blocks} must be >= 1")
        # [unet checks]
        # the whole U-Net family (unet, mobile_unet, snapgen_unet) shares these
        if self.arch in ("unet", "mobile_unet", "snapgen_unet"):
            levels = len(self.channel_mult)
            if levels < 1 or min(self.channel_mult) < 1:
                problems.append(f"channel_mult={tuple(self.channel_mult)} needs at least one level, each >= 1")
            else:
                if self.img_size % 2 ** (levels - 1):
                    problems.append(f"img_size={self.img_size} is not divisible by 2**(levels-1)={2 ** (levels - 1)} "
                                    f"({levels} levels in channel_mult); pick a multiple or fewer levels")
                for level, m in enumerate(self.channel_mult):
                    if (self.channels * m) % self.groups:
                        problems.append(f"groups={self.groups} does not divide the {self.channels * m} channels of level {level}")
                for level in self.attn_levels:
                    if not 0 <= level < levels:
                        problems.append(f"attn_levels has level {level}, but channel_mult has levels 0..{levels - 1}")
                    elif (self.channels * self.channel_mult[level]) % self.heads:
                        problems.append(f"heads={self.heads} does not divide the "
                                        f"{self.channels * self.channel_mult[level]} channels of attention level {level}")
            if self.num_res_blocks < 1:
                problems.append(f"num_res_blocks={self.num_res_blocks} must be >= 1")
            if self.arch != "unet" and tuple(self.attn_levels) != (levels - 1,):
                problems.append(f"{self.arch} has attention only at the lowest resolution: attn_levels must be "
                                f"({levels - 1},) for {levels} levels, got {tuple(self.attn_levels)}")
            if self.arch != "unet" and levels < 2:
                problems.append(f"{self.arch} needs at least 2 levels in channel_mult (attention at the lowest, none at the top)")
        # [mobile_unet checks]
        if self.arch == "mobile_unet" and not 1 <= self.separable_from <= len(self.channel_mult) - 1:
            problems.append(f"separable_from={self.separable_from} must be in 1..{len(self.channel_mult) - 1}: "
                            "the top level keeps full convs, the lowest level and the middle are separable")
        # [snapgen_unet checks]
        if self.arch == "snapgen_unet" and self.conv_expansion < 1:
            problems.append(f"conv_expansion={self.conv_expansion} must be >= 1")
        if self.prediction not in ("eps", "v", "flow"):
            problems.append(f"prediction={self.prediction!r} must be 'eps' or 'v' (DDPM) or 'flow' (rectified flow)")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))
        # JSON gives lists; keep tuples so configs stay hashable and comparable
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_levels", tuple(self.attn_levels))

    @property
    def null_class(self):
        """The class id that means "no label" (classifier-free guidance)."""
        return self.num_classes

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}: the file was written by another version or program")
        return cls(**d)


# The model config does not know the noise schedule: t is checked against T = 1000, the default schedule length
# (make_schedule, tinygrad_impl.train, checkpoints whose metadata has no T); a caller with another schedule passes T.
# The model forwards pass no T, so through them t must be in 0..999.
DEFAULT_T = 1000
# |x| above this is neither an image in [-1, 1] nor a noisy x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (what training
# and the samplers feed): |x_t| <= 1 + |eps|, and a standard normal eps beyond 49 has probability below 1e-500.
# Unscaled pixel values 0..255 go beyond it.
X_LIMIT = 50.0


def _is_host(a):
    """True for values on the host (NumPy arrays, Python numbers and lists); False for device tensors (tinygrad),
    whose values are not read here: forward runs under TinyJit during training."""
    return isinstance(a, (np.ndarray, np.generic, list, tuple, int, float, bool))


def _kind(dtype):
    """'float', 'int' (signed or unsigned), 'bool' or 'other' for a NumPy dtype or a tinygrad DType."""
    if isinstance(dtype, np.dtype):
        return {"f": "float", "i": "int", "u": "int", "b": "bool"}.get(dtype.kind, "other")
    from tinygrad import dtypes   # only tinygrad tensors get here
    return ("bool" if dtype == dtypes.bool else "float" if dtypes.is_float(dtype)
            else "int" if dtypes.is_int(dtype) else "other")


def _whole(a, what):
    """a (host array) as float64, after checking its values are finite whole numbers."""
    if _kind(a.dtype) not in ("int", "float"):
        raise ValueError(f"{what} must be numbers, got dtype {a.dtype}")
    v = a.astype(np.float64)
    bad = v[~np.isfinite(v) | (v != np.round(v))]
    if bad.size:
        raise ValueError(f"{what} must be whole numbers, got {bad[0]:g}")
    return v


def check_inputs(cfg, x, t, y=None, multiple=None, T=DEFAULT_T):
    """Raise ValueError naming the problem if x (B, C, H, W), the timesteps t (B,) or the labels y (B,) do not fit cfg.
    multiple: H and W must be divisible by it (default: the stem stride). T: the diffusion steps, t in 0..T-1.
    Shapes and dtypes are checked for NumPy arrays and tinygrad tensors alike; values (range, whole numbers) only
    on the host: a tinygrad tensor's values live on its device and are not read."""
    x_shape = tuple(x.shape)
    if len(x_shape) != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {x_shape}")
    B, C, H, W = x_shape
    if C != cfg.in_channels:
        raise ValueError(f"x has {C} channels but the model was built for in_channels={cfg.in_channels}")
    m = cfg.stride if multiple is None else multiple
    if H % m or W % m:
        raise ValueError(f"image size {H}x{W} is not divisible by {m} (the stem stride / downsampling factor); "
                         f"resize or crop to a multiple of {m}")
    if _kind(x.dtype) != "float":
        raise ValueError(f"x has dtype {x.dtype}: images must be floats in [-1, 1]"
                         + ("; scale uint8 pixels 0..255 with x / 127.5 - 1" if _kind(x.dtype) == "int" else ""))
    if _is_host(x) and x.size:
        peak = float(np.max(np.abs(x)))
        if not np.isfinite(peak):
            raise ValueError("x holds NaN or inf values: images must be finite floats in [-1, 1]")
        if peak > X_LIMIT:
            raise ValueError(f"x has values up to {peak:g} in magnitude: images must be in [-1, 1] (noisy x_t within "
                             f"a few units); pixel values 0..255? scale them with x / 127.5 - 1")
    # timesteps: integers in 0..T-1 (every sampler, DPM-Solver++ included, and training use whole steps)
    t_shape = tuple(np.shape(t)) if _is_host(t) else tuple(t.shape)
    if t_shape != (B,):
        raise ValueError(f"timesteps t must have shape (B,) = ({B},), one per image, got shape {t_shape}"
                         + (f"; for one t for the whole batch repeat it {B} times (np.full({B}, t))"
                            if len(t_shape) < 2 else ""))
    if _is_host(t):
        tv = _whole(np.asarray(t), "timesteps t")
        out = tv[(tv < 0) | (tv >= T)]
        if out.size:
            raise ValueError(f"timestep t={out[0]:g} out of range: t must be in [0, {T}) (integers 0..{T - 1}, "
                             f"one per diffusion step, T={T})")
    elif _kind(t.dtype) not in ("int", "float"):
        raise ValueError(f"timesteps t must be numbers, got dtype {t.dtype}")
    if y is None:
        return
    if cfg.text_vocab:
        return check_token_ids(cfg, y, B)
    if cfg.num_classes == 0:
        raise ValueError("labels y were given but the model is unconditional (num_classes=0)")
    y_shape = tuple(np.shape(y)) if _is_host(y) else tuple(y.shape)
    if y_shape != (B,):
        raise ValueError(f"labels y must have shape (B,) = ({B},), one class id per image, got shape {y_shape}"
                         + (f" ({y_shape[0]} labels for a batch of {B})" if len(y_shape) == 1 else ""))
    if _is_host(y):
        yv = _whole(np.asarray(y), "class ids y")
        out = yv[(yv < 0) | (yv > cfg.num_classes)]
        if out.size:
            raise ValueError(f"class id out of range: ids must be in 0..{cfg.num_classes - 1} "
                             f"(or {cfg.num_classes} for the null class), got {out[0]:g}")
    elif _kind(y.dtype) != "int":
        raise ValueError(f"class ids y must be an integer tensor, got dtype {y.dtype}")


def check_token_ids(cfg, y, B):
    """Raise ValueError unless y fits a text-conditioned cfg: (B, L) token ids, 1 <= L <= cfg.text_len, PAD (0)-padded,
    integers in 0..text_vocab-1 (values checked on the host only, like check_inputs)."""
    y_shape = tuple(np.shape(y)) if _is_host(y) else tuple(y.shape)
    if len(y_shape) != 2 or y_shape[0] != B:
        raise ValueError(f"y must be token ids of shape (B, L) = ({B}, L), one PAD-padded prompt per image "
                         f"(L <= text_len={cfg.text_len}), got shape {y_shape}"
                         + ("; the model is conditioned on text (text_vocab > 0), not class ids: encode the prompts "
                            "with numpy_ref.text.encode_batch" if len(y_shape) == 1 else ""))
    if not 1 <= y_shape[1] <= cfg.text_len:
        raise ValueError(f"y has {y_shape[1]} tokens per prompt: it must have 1..text_len={cfg.text_len} "
                         f"(the model's longest prompt; pad shorter prompts with PAD = 0)")
    kind = _kind(np.asarray(y).dtype) if _is_host(y) else _kind(y.dtype)
    if kind != "int":
        raise ValueError(f"token ids y must be integers, got dtype {np.asarray(y).dtype if _is_host(y) else y.dtype}")
    if _is_host(y):
        yv = np.asarray(y)
        out = yv[(yv < 0) | (yv >= cfg.text_vocab)]
        if out.size:
            raise ValueError(f"token id out of range: ids must be in 0..{cfg.text_vocab - 1} (text_vocab="
                             f"{cfg.text_vocab}, 0 = PAD), got {out[0]}")


def text_config(cfg):
    """The TextConfig of a text-conditioned model's encoder (its parameters text.* live in the model's dict)."""
    from .text import TextConfig   # here, not at the top: text imports the captions data
    if not cfg.text_vocab:
        raise ValueError(f"{cfg.arch} config has no text conditioning (text_vocab=0)")
    return TextConfig(vocab_size=cfg.text_vocab, max_len=cfg.text_len, width=cfg.text_width, depth=cfg.text_depth,
                      heads=cfg.text_heads)


def null_condition(cfg, batch):
    """The "no condition" y of a batch (classifier-free guidance, condition dropout in training): the empty prompt,
    (batch, text_len) int64 all PAD, for a text model; (batch,) int64 of cfg.null_class for a class-conditional one;
    None for an unconditional one. A model given y=None uses exactly this."""
    if cfg.text_vocab:
        return np.zeros((batch, cfg.text_len), np.int64)
    return np.full(batch, cfg.null_class, np.int64) if cfg.num_classes else None


def drop_condition(cfg, y, drop):
    """y with the rows where drop (B,) bool is True replaced by the null condition: class ids (B,) or token ids
    (B, text_len). y None (unconditional) stays None."""
    if y is None:
        return None
    y = np.asarray(y)
    null = null_condition(cfg, len(y))
    if null.shape != y.shape:
        raise ValueError(f"y has shape {y.shape}, the null condition {null.shape}: pad prompts to text_len={cfg.text_len}")
    return np.where(np.asarray(drop, bool).reshape(-1, *[1] * (y.ndim - 1)), null, y)


# ----------------------------------------------------------------------------
# Presets: <arch>-tiny for tests, <arch>-xs for laptops, <arch>-s for a GPU
# ----------------------------------------------------------------------------

_TINY = dict(img_size=8, in_channels=3, num_classes=4)

PRESETS = {
    # --- tokenfree ---
    "tokenfree-tiny": ModelConfig("tokenfree", width=32, depth=3, heads=2, stride=2, **_TINY),
    # 2.30M parameters; width 128 rather than 96: on a CPU tinygrad's step costs about the same, and the main job
    # draws its classes better (docs/experiments.md)
    "tokenfree-xs": ModelConfig("tokenfree", width=128, depth=7, heads=4, stride=4),
    "tokenfree-s": ModelConfig("tokenfree", width=256, depth=13, heads=8, stride=2),
    # --- uvit ---
    # depth is the official `depth`: depth//2 in_blocks + mid_block + depth//2 out_blocks (12 -> 13 blocks)
    "uvit-tiny": ModelConfig("uvit", width=16, depth=3, heads=2, stride=2, **_TINY),
    # the same 8x8 token grid as tokenfree-xs (patch 4 at 32x32), 9 blocks, ~1.9M parameters
    "uvit-xs": ModelConfig("uvit", width=128, depth=8, heads=4, stride=4),
    # the official CIFAR-10 U-ViT-S (configs/cifar10_uvit.py): D=512, 13 blocks, patch 2, ~44M parameters
    "uvit-s": ModelConfig("uvit", width=512, depth=12, heads=8, stride=2),
    # --- diffit ---
    "diffit-tiny": ModelConfig("diffit", channels=8, channel_mult=(1, 2), num_res_blocks=1, heads=2, window=4,
                               groups=2, mlp_ratio=2.0, **_TINY),
    # ~2.3M parameters; 4x4 windows at every level (32x32, 16x16, 8x8); diffit-s ~27M
    "diffit-xs": ModelConfig("diffit", channels=48, channel_mult=(1, 2, 2), num_res_blocks=2, heads=4, window=4,
                             groups=8, mlp_ratio=2.0),
    "diffit-s": ModelConfig("diffit", channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, heads=4, window=8,
                            groups=32, mlp_ratio=4.0),
    # --- unet ---
    "unet-tiny": ModelConfig("unet", channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), heads=2,
                             groups=2, **_TINY),
    # ~1.6M parameters (tokenfree-xs: 2.3M); unet-s is the DDPM CIFAR-10 model (35.7M there, 35.5M here)
    "unet-xs": ModelConfig("unet", channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(2,), heads=4,
                           groups=8),
    "unet-s": ModelConfig("unet", channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(1,), heads=4,
                          groups=32),
    # --- mobile_unet ---
    "mobile_unet-tiny": ModelConfig("mobile_unet", channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                                    heads=2, groups=2, separable_from=1, **_TINY),
    # ~1.5M parameters (unet-xs ~1.6M); transformer blocks only at 8x8, separable convs at 16x16 and 8x8
    "mobile_unet-xs": ModelConfig("mobile_unet", channels=32, channel_mult=(1, 2, 3), num_res_blocks=2, attn_levels=(2,),
                                  heads=4, groups=8, separable_from=1),
    "mobile_unet-s": ModelConfig("mobile_unet", channels=128, channel_mult=(1, 2, 2, 3), num_res_blocks=2,
                                 attn_levels=(3,), heads=8, groups=32, separable_from=2),
    # --- snapgen_unet ---
    "snapgen_unet-tiny": ModelConfig("snapgen_unet", channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                                     heads=2, groups=2, mlp_ratio=3.0, conv_expansion=2, **_TINY),
    # ~2.1M parameters; the same level plan as mobile_unet-xs
    "snapgen_unet-xs": ModelConfig("snapgen_unet", channels=32, channel_mult=(1, 2, 3), num_res_blocks=2,
                                   attn_levels=(2,), heads=4, groups=8, mlp_ratio=3.0, conv_expansion=2),
    "snapgen_unet-s": ModelConfig("snapgen_unet", channels=128, channel_mult=(1, 2, 2, 3), num_res_blocks=2,
                                  attn_levels=(3,), heads=8, groups=32, mlp_ratio=3.0, conv_expansion=2),
}


# fields a user may set with `--set` (the data decides img_size, in_channels, num_classes and text_vocab; arch is the
# preset's; prediction has its own flag)
SETTABLE = tuple(f.name for f in fields(ModelConfig)
                 if f.name not in ("arch", "img_size", "in_channels", "num_classes", "text_vocab", "prediction"))


def parse_overrides(items):
    """["width=112", "channel_mult=1,2,2", "skips=false"] -> {"width": 112, ...}, typed like ModelConfig's fields."""
    out, kinds = {}, {f.name: type(f.default) for f in fields(ModelConfig)}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or key not in SETTABLE:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(SETTABLE)}")
        kind = kinds[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1")
            elif kind is tuple:
                out[key] = tuple(int(v) for v in text.split(",") if v.strip())
            else:
                out[key] = kind(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} takes {'true/false' if kind is bool else 'comma-separated ints' if kind is tuple else kind.__name__}, not {text!r}") from None
    return out


def get_config(name, **overrides):
    """A preset by name, with fields replaced (e.g. img_size, in_channels, num_classes from the dataset)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides)
