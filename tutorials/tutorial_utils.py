"""What the tutorials share: the fast switch, where files go, and pictures drawn with pillow alone.

    TUTORIAL_FAST=1   shrink sizes and steps (the test suite runs every tutorial this way)
    TUTORIAL_OUT=dir  write PNGs and runs there instead of next to the tutorials (tests/test_tutorials.py)

Pictures: `image_table` lays out rows of images with a label per row and a title per column;
`line_plot` draws curves on axes. No matplotlib: pillow is already a dependency.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = os.environ.get("TUTORIAL_FAST", "0") not in ("", "0")
OUT = os.path.abspath(os.environ.get("TUTORIAL_OUT") or HERE)
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def out_path(name):
    """Where a tutorial writes `name` (a PNG next to the tutorials, or under TUTORIAL_OUT)."""
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def runs_dir(name):
    """A folder for training runs and checkpoints (tutorials/out/ is git-ignored)."""
    return os.path.join(OUT, "out", name)


def font(size=12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:          # pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------

def to_rgb(images):
    """(N, C, H, W) in [-1, 1] with C = 1 or 3 -> (N, H, W, 3) uint8"""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    x = x.transpose(0, 2, 3, 1)
    return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x


def heat(maps, lo=None, hi=None):
    """(N, H, W) values -> (N, 3, H, W) in [-1, 1], dark blue (lo) .. yellow (hi); one scale for all maps."""
    maps = np.asarray(maps, np.float64)
    lo = maps.min() if lo is None else lo
    hi = maps.max() if hi is None else hi
    u = np.clip((maps - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.stack([u ** 0.8, 0.15 + 0.75 * u, 0.5 * (1 - u) + 0.1], 1)      # (N, 3, H, W) in [0, 1]
    return (rgb * 2 - 1).astype(np.float32)


def image_table(path, rows, col_titles=(), upscale=4, title=None, label_width=None):
    """rows: [(label, images (N, C, H, W) in [-1, 1])] -> one PNG, a row label left of each row. Returns path."""
    f = font(12)
    h, w = rows[0][1].shape[2] * upscale, rows[0][1].shape[3] * upscale
    ncols = max(len(r[1]) for r in rows)
    pad, lw = 4, label_width or (8 + max(int(f.getlength(str(r[0]))) for r in rows))
    top = (18 if title else 0) + (16 if col_titles else 0)
    canvas = Image.new("RGB", (lw + ncols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill="black", font=f)
    for j, t in enumerate(col_titles):
        draw.text((lw + pad + j * (w + pad), top - 15), str(t), fill="black", font=f)
    for i, (label, imgs) in enumerate(rows):
        y = top + pad + i * (h + pad)
        draw.text((4, y + h // 2 - 7), str(label), fill="black", font=f)
        for j, im in enumerate(to_rgb(imgs)):
            tile = Image.fromarray(im).resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(tile, (lw + pad + j * (w + pad), y))
    path = path if os.path.isabs(path) else out_path(path)
    canvas.save(path)
    return path


# ----------------------------------------------------------------------------
# Line plots
# ----------------------------------------------------------------------------

def nice_ticks(lo, hi, n=5):
    """About n round numbers covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    return [v for v in np.arange(math.ceil(lo / step) * step, hi + step * 1e-9, step)]


def line_plot(path, series, title="", xlabel="", ylabel="", size=(560, 360), hlines=(), vlines=(), ylim=None,
              legend_y=0):
    """series: {name: (x, y)} -> PNG with axes, ticks and a legend (legend_y pixels below the top); hlines/vlines:
    [(value, label)]. Returns path."""
    f = font(12)
    W, H = size
    left, right, top, bottom = 62, 24, 28, 44
    xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys = np.concatenate([np.asarray(y, float) for _, y in series.values()])
    ys = ys[np.isfinite(ys)]
    x0, x1 = xs.min(), xs.max()
    y0, y1 = ylim if ylim else (ys.min(), ys.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1
    margin = 0.05 * (y1 - y0)
    y0, y1 = (y0, y1) if ylim else (y0 - margin, y1 + margin)
    px = lambda x: left + (x - x0) / max(x1 - x0, 1e-12) * (W - left - right)
    py = lambda y: H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for v in nice_ticks(y0, y1, 8):
        d.line([left - 4, py(v), left, py(v)], fill="black")
        d.line([left, py(v), W - right, py(v)], fill=(235, 235, 235))
        d.text((4, py(v) - 7), f"{v:.4g}", fill="black", font=f)
    for v in nice_ticks(x0, x1, 6):
        d.line([px(v), H - bottom, px(v), H - bottom + 4], fill="black")
        d.text((px(v) - 10, H - bottom + 6), f"{v:.4g}", fill="black", font=f)
    for v, label in hlines:
        d.line([left, py(v), W - right, py(v)], fill=(120, 120, 120))
        d.text((W - right - 8 - f.getlength(label), py(v) - 15), label, fill=(90, 90, 90), font=f)
    for v, label in vlines:
        d.line([px(v), top, px(v), H - bottom], fill=(120, 120, 120))
        d.text((px(v) + 3, top + 3), label, fill=(90, 90, 90), font=f)
    for k, (name, (x, y)) in enumerate(series.items()):
        pts = [(px(a), py(np.clip(b, y0, y1))) for a, b in zip(np.asarray(x, float), np.asarray(y, float)) if np.isfinite(b)]
        color = COLORS[k % len(COLORS)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for p in pts if len(pts) < 30 else []:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
    legend_w = 45 + max(f.getlength(name) for name in series)   # legend last, in a box, so no curve hides it
    ly = top + legend_y
    d.rectangle([left + 5, ly + 3, left + legend_w, ly + 4 + 16 * len(series)], fill="white", outline=(200, 200, 200))
    for k, name in enumerate(series):
        d.line([left + 10, ly + 10 + 16 * k, left + 30, ly + 10 + 16 * k], fill=COLORS[k % len(COLORS)], width=3)
        d.text((left + 35, ly + 3 + 16 * k), name, fill="black", font=f)
    d.text((left, 6), title, fill="black", font=f)
    d.text(((W - f.getlength(xlabel)) / 2, H - 18), xlabel, fill="black", font=f)
    if ylabel:   # the y label goes top right, above the plot
        d.text((W - right - f.getlength(ylabel), 6), ylabel, fill=(90, 90, 90), font=f)
    path = path if os.path.isabs(path) else out_path(path)
    img.save(path)
    return path


# ----------------------------------------------------------------------------
# The training run of tutorial 04, which 03 and 05 sample from
# ----------------------------------------------------------------------------

# full: tokenfree-tiny (0.07M parameters) on 16x16 shapes, a few minutes on a 2-core CPU;
# fast: 8x8 images and a handful of steps, only to prove the code runs
# loss_weight none: the textbook loss, the plain mean of |eps - eps_hat|^2 (the main job weights it by min-SNR)
RUN = (dict(preset="tokenfree-tiny", prediction="eps", loss_weight="none", size=8, batch=8, steps=12, lr=3e-3, warmup=5, sample_n=36, sample_steps=3)
       if FAST else
       dict(preset="tokenfree-tiny", prediction="eps", loss_weight="none", size=16, batch=32, steps=1500, lr=2e-3, warmup=100, sample_n=36, sample_steps=25))


def run_folder():
    return runs_dir(f"04_shapes_{RUN['preset']}_{RUN['size']}")


def checkpoint_path():
    return os.path.join(run_folder(), "ckpt.safetensors")


def train_args():
    """The command line of tinygrad_impl.train for tutorial 04's run, as a list of flags."""
    flags = ["--data", "shapes", "--out", run_folder(), "--sample-every", "0", "--ckpt-every", "250"]
    for k, v in RUN.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def train_run(callback=None):
    """Train (or finish) tutorial 04's run with the project's trainer; returns its summary dict.
    An earlier run in the same folder is resumed (nothing to do when it already reached its steps)."""
    from tinygrad_impl import train
    flags = train_args()
    if os.path.exists(checkpoint_path()):
        flags = ["--out", run_folder(), "--resume", "--steps", str(RUN["steps"]), "--sample-every", "0",
                 "--sample-n", str(RUN["sample_n"]), "--sample-steps", str(RUN["sample_steps"])]
    print("python -m tinygrad_impl.train " + " ".join(flags))
    return train.train(train.build_parser().parse_args(flags), callback=callback)


def ensure_checkpoint():
    """Tutorial 04's checkpoint; trains it first (the same run as 04) when it is missing."""
    if not os.path.exists(checkpoint_path()):
        print(f"no checkpoint at {checkpoint_path()}: training it now, as tutorial 04 does "
              f"(run 04_train_tinygrad.py first to watch that)")
        train_run()
    return checkpoint_path()
