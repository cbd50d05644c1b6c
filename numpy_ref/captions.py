"""The built-in captioned dataset ("captions"): the shapes of data.py, one or two per image, each with a caption.

Generated from a fixed seed like "shapes" (no download). Every object has a shape (data.SHAPES), a named colour
(COLOURS), a size (SIZES) and a place on a 3x3 grid (POSITIONS); an image holds one object, or two on the same row or
column of the grid with a relation between them (RELATIONS). Captions say the same content in several phrasings,
chosen by the seed:

    a small red circle at the top left          small red circle, top left          top left: a small red circle
    there is a big blue square to the left of a little white plus

Composition: the (colour, shape) pairs in HELD_OUT never appear in the "train" and "test" splits; the "heldout" split
is made of them only (every object of every image), to measure whether a model composes attributes it has seen
apart. The attributes are kept as integer arrays, so an attribute classifier can be trained on them.

    images, captions, attrs = make_captioned(16)                 # (16, 3, 32, 32) float32 in [-1, 1], 16 str, dict
    ds = load_captioned("heldout")                                # a Dataset with .captions and .attributes
    ds = load_dataset("captions", split="heldout")                # the same, through numpy_ref.data

Images follow the Dataset convention of data.py: (N, C, H, W) float32 in [-1, 1]. The class label of an image is the
shape id of its first object, so class-conditional code runs on this set unchanged.
"""
import re
from dataclasses import dataclass, field

import numpy as np

from .data import SHAPES, Dataset, _hsv_to_rgb, shape_sdf

# ----------------------------------------------------------------------------
# Attributes, their words, and the held-out combinations
# ----------------------------------------------------------------------------

# named colours (RGB in [0, 1]), hues far apart and bright: distinct on the dark backgrounds below
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white")
COLOUR_RGB = np.array([[0.95, 0.15, 0.15], [1.00, 0.55, 0.05], [0.95, 0.92, 0.15], [0.15, 0.85, 0.20],
                       [0.20, 0.40, 1.00], [0.70, 0.25, 0.95], [0.95, 0.95, 0.95]])
SIZES = ("small", "large")
SIZE_RADIUS = ((0.10, 0.14), (0.20, 0.24))      # radius range, a fraction of the image side, of each size
# a 3x3 grid, row-major: position id = 3 * row + column
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")   # object 0 <relation> object 1

# synonyms (the first is the attribute's name); which one a caption uses is drawn from the seed
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
                  "above": ("above", "over"), "below": ("below", "under")}

# phrasings of one object at a place, and of two objects and their relation
ONE_OBJECT = ("a {size} {colour} {shape} at the {pos}",
              "{size} {colour} {shape}, {pos}",
              "{pos}: a {size} {colour} {shape}",
              "there is a {size} {colour} {shape} at the {pos}",
              "a {colour} {shape}, {size}, at the {pos}")
TWO_OBJECTS = ("a {size} {colour} {shape} {rel} a {size2} {colour2} {shape2}",
               "{size} {colour} {shape} {rel} {size2} {colour2} {shape2}",
               "there is a {size} {colour} {shape} {rel} a {size2} {colour2} {shape2}")

# (colour, shape) pairs that never appear in "train" or "test"; each colour and shape still appears with others
HELD_OUT = (("green", "triangle"), ("blue", "ring"), ("yellow", "plus"), ("purple", "diamond"))

PAD = "<pad>"   # id 0 of the vocabulary: padding, and the whole of the empty prompt (the null condition)


def _words(phrases):
    return {w for p in phrases for w in p.replace(",", " ").replace(":", " ").split() if not w.startswith("{")}


# the vocabulary: PAD, then every word a caption can use, sorted (a plain list of str: JSON in a checkpoint)
VOCAB = [PAD] + sorted(_words(ONE_OBJECT + TWO_OBJECTS + COLOURS + SHAPES + POSITIONS + ("an",))
                       | _words(w for ws in SIZE_WORDS.values() for w in ws)
                       | _words(w for ws in RELATION_WORDS.values() for w in ws))
MAX_LEN = 16    # tokens: the longest caption has 14

CAPTION_SPLITS = ("train", "test", "heldout")
CAPTION_SIZES = {"train": 6000, "test": 1200, "heldout": 600}
CAPTIONS_SEED = 20250123
TWO_OBJECT_FRACTION = 0.3


def allowed_pairs(split):
    """The (colour id, shape id) pairs objects of `split` are drawn from -> (K, 2) int64: every pair but HELD_OUT
    for "train" and "test", only HELD_OUT for "heldout"."""
    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown split {split!r} of the captions set; choose one of {', '.join(CAPTION_SPLITS)}")
    held = [(COLOURS.index(c), SHAPES.index(s)) for c, s in HELD_OUT]
    if split == "heldout":
        return np.array(held, np.int64)
    return np.array([(c, s) for s in range(len(SHAPES)) for c in range(len(COLOURS)) if (c, s) not in held], np.int64)


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------

def draw_attributes(rng, n, split):
    """The attributes of n images -> dict of int64 arrays: count (n,) 1 or 2; shape, colour, size, position (n, 2),
    -1 in column 1 where there is one object; relation (n,) index into RELATIONS, -1 where there is one object.
    Two objects sit two grid cells apart on a row or column (no overlap), at most one of them large."""
    pairs = allowed_pairs(split)
    count = np.where(rng.uniform(size=n) < TWO_OBJECT_FRACTION, 2, 1)
    pick = pairs[rng.integers(0, len(pairs), (n, 2))]                        # (n, 2, 2): (colour, shape) per object
    colour, shape = pick[..., 0].copy(), pick[..., 1].copy()
    size = rng.integers(0, len(SIZES), (n, 2))
    both_large = (count == 2) & (size == 1).all(1)
    size[both_large, rng.integers(0, 2, n)[both_large]] = 0
    relation = rng.integers(0, len(RELATIONS), n)
    line = rng.integers(0, 3, n)                                              # the shared row (or column)
    first, second = np.where(relation % 2 == 0, 0, 2), np.where(relation % 2 == 0, 2, 0)   # left of / above: 0 then 2
    horizontal = relation < 2
    position = np.stack([np.where(horizontal, 3 * line + first, 3 * first + line),
                         np.where(horizontal, 3 * line + second, 3 * second + line)], 1)
    position[count == 1, 0] = rng.integers(0, len(POSITIONS), n)[count == 1]
    one = count == 1
    for a in (shape, colour, size, position):
        a[one, 1] = -1
    relation[one] = -1
    return {"count": count.astype(np.int64), "shape": shape.astype(np.int64), "colour": colour.astype(np.int64),
            "size": size.astype(np.int64), "position": position.astype(np.int64), "relation": relation.astype(np.int64)}


def draw_images(rng, attrs, size):
    """Images of the objects in attrs -> (n, 3, size, size) float32 in [-1, 1]: a dark plain background, each object
    its named colour (+-0.04 per channel), radius in its size's range, centred in its grid cell (+-3% jitter; none
    along the line joining two objects)."""
    n = len(attrs["count"])
    present = attrs["shape"] >= 0                                              # (n, 2)
    lo, hi = np.array(SIZE_RADIUS).T                                           # (2,), (2,)
    sz = np.maximum(attrs["size"], 0)
    radius = (lo[sz] + (hi[sz] - lo[sz]) * rng.uniform(size=(n, 2))) * size   # (n, 2) pixels
    pos = np.maximum(attrs["position"], 0)
    anchor = np.stack([0.25 + 0.25 * (pos % 3), 0.25 + 0.25 * (pos // 3)], -1)  # (n, 2, 2): x, y as fractions
    anchor = np.where((sz == 1)[..., None], 0.5 + (anchor - 0.5) * 0.9, anchor)   # large objects a little inwards
    jitter = rng.uniform(-0.03, 0.03, (n, 2, 2))
    two = attrs["count"] == 2
    jitter[two & (attrs["relation"] < 2), :, 0] = 0                            # side by side: keep the x gap
    jitter[two & (attrs["relation"] >= 2), :, 1] = 0                           # one above the other: keep the y gap
    margin = radius[..., None] + 0.04 * size
    centre = np.clip((anchor + jitter) * size, margin, size - margin)         # (n, 2, 2) pixels
    fg = np.clip(COLOUR_RGB[np.maximum(attrs["colour"], 0)] + rng.uniform(-0.04, 0.04, (n, 2, 3)), 0, 1)   # (n, 2, 3)
    bg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.0, 0.5, n), rng.uniform(0.04, 0.2, n))          # (n, 3)
    pix = np.arange(size) + 0.5                                                # pixel centres
    cover = np.zeros((n, 2, size, size), np.float32)                           # each object's share of each pixel
    for k, kind in enumerate(SHAPES):
        m = present & (attrs["shape"] == k)                                    # (n, 2)
        dx = pix[None, None, :] - centre[m][:, 0, None, None]                  # (m, 1, W)
        dy = pix[None, :, None] - centre[m][:, 1, None, None]                  # (m, H, 1)
        dx, dy = np.broadcast_arrays(dx, dy)
        # one pixel of anti-aliasing, as in data.make_shapes
        cover[m] = np.clip(0.5 - shape_sdf(kind, dx, dy, radius[m][:, None, None]), 0.0, 1.0)
    img = np.empty((n, 3, size, size), np.float32)
    for ch in range(3):                                    # one colour plane at a time: (n, 1, 1) against (n, H, W)
        plane = np.broadcast_to(bg[:, ch, None, None], (n, size, size)).astype(np.float32)
        for j in range(2):                                                     # the objects do not overlap
            plane += (fg[:, j, ch, None, None] - plane) * cover[:, j]
        img[:, ch] = plane * 2 - 1
    return img


def write_captions(rng, attrs):
    """One caption per image of attrs -> list of str, the phrasing and synonyms drawn from rng."""
    n = len(attrs["count"])
    t1, t2 = rng.integers(0, len(ONE_OBJECT), n), rng.integers(0, len(TWO_OBJECTS), n)
    syn = rng.integers(0, 2, (n, 3))                                           # size word 1, size word 2, relation
    out = []
    for i in range(n):
        sh, co, sz = attrs["shape"][i], attrs["colour"][i], attrs["size"][i]
        words = dict(shape=SHAPES[sh[0]], colour=COLOURS[co[0]], size=SIZE_WORDS[SIZES[sz[0]]][syn[i, 0]])
        if attrs["count"][i] == 1:
            out.append(ONE_OBJECT[t1[i]].format(pos=POSITIONS[attrs["position"][i, 0]], **words))
        else:
            rel = RELATION_WORDS[RELATIONS[attrs["relation"][i]]][syn[i, 2]]
            out.append(TWO_OBJECTS[t2[i]].format(rel=rel, shape2=SHAPES[sh[1]], colour2=COLOURS[co[1]],
                                                 size2=SIZE_WORDS[SIZES[sz[1]]][syn[i, 1]], **words))
    return [re.sub(r"\ba(?= [aeiou])", "an", c) for c in out]     # "an orange", "an orange plus"


def make_captioned(n, size=32, seed=None, split="train"):
    """n captioned images, deterministic in (n, size, seed, split).

    split: which (colour, shape) pairs objects are drawn from (allowed_pairs); seed defaults to one per split.
    Returns (images (n, 3, size, size) float32 in [-1, 1], captions: n str, attributes: dict of int64 arrays
    count (n,), shape/colour/size/position (n, 2) with -1 for a missing second object, relation (n,) or -1)."""
    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown split {split!r} of the captions set; choose one of {', '.join(CAPTION_SPLITS)}")
    rng = np.random.default_rng(CAPTIONS_SEED + CAPTION_SPLITS.index(split) if seed is None else seed)
    attrs = draw_attributes(rng, n, split)
    images = draw_images(rng, attrs, size)
    return images, write_captions(rng, attrs), attrs


# ----------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------

@dataclass
class CaptionedDataset(Dataset):
    captions: list = field(default_factory=list)          # N str
    attributes: dict = field(default_factory=dict)        # name -> (N,) or (N, 2) int64 (make_captioned)
    vocab: list = field(default_factory=lambda: list(VOCAB))


def load_captioned(split="train", size=32):
    """The "captions" Dataset of `split` (CAPTION_SPLITS; CAPTION_SIZES images): labels = the first object's shape
    id (6 classes, data.SHAPES), plus .captions, .attributes and .vocab."""
    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown split {split!r} of the captions set; choose one of {', '.join(CAPTION_SPLITS)}")
    images, captions, attrs = make_captioned(CAPTION_SIZES[split], size, split=split)
    return CaptionedDataset(images, attrs["shape"][:, 0].copy(), len(SHAPES), list(SHAPES), "captions",
                            captions=captions, attributes=attrs)
