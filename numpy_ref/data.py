"""Datasets: the generated default ("shapes") and readers for MNIST, Fashion-MNIST, CIFAR-10 and image folders.

Every loader returns a Dataset with images (N, C, H, W) float32 in [-1, 1] and labels (N,) int64.

    ds = load_dataset("shapes")                      # always there: generated from a fixed seed
    ds = load_dataset("fashion-mnist", download=True)
    ds = load_dataset("folder:/path/to/images", size=32)

Real datasets are looked for in <root>/<name> (root defaults to data/), then where system packages put
them (/usr/share/datasets/<name>: Debian's dataset-fashion-mnist). `download=True` fetches missing files
and checks their MD5; without it a missing dataset raises FileNotFoundError saying where to put the files.
"""
import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field

import numpy as np

DATASETS = ("shapes", "captions", "mnist", "fashion-mnist", "cifar10", "folder:<path>")
SPLITS = ("train", "test")
SYSTEM_DIRS = ("/usr/share/datasets", "/usr/local/share/datasets")


@dataclass
class Dataset:
    images: np.ndarray            # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray            # (N,) int64 in 0..num_classes-1 (all 0 when num_classes == 0)
    num_classes: int              # 0: no labels to condition on
    class_names: list = field(default_factory=list)
    name: str = ""

    def __len__(self):
        return len(self.images)

    @property
    def shape(self):
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])


def to_unit_range(u8):
    """uint8 images in [0, 255] -> float32 in [-1, 1]"""
    return (u8.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


# ----------------------------------------------------------------------------
# The built-in dataset: coloured shapes, generated from a seed
# ----------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring")
SHAPES_SIZE = {"train": 6000, "test": 1200}     # 1000 / 200 per class
SHAPES_SEED = 20241109


def _hsv_to_rgb(h, s, v):
    """h, s, v (N,) in [0, 1] -> (N, 3)"""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in
                      [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], 1)   # (N, 6, 3)
    return table[np.arange(len(h)), i]


def shape_sdf(kind, dx, dy, r):
    """Signed distance (pixels, < 0 inside) of shape `kind` with radius r (N, 1, 1) at offsets dx, dy (N, H, W)."""
    if kind == "circle":
        return np.hypot(dx, dy) - r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
    if kind == "triangle":   # equilateral, apex up (image y grows downwards), circumradius 1.2 r (as heavy as the rest)
        c30, dy = np.sqrt(3) / 2, dy - 0.15 * r
        return np.maximum.reduce([dy, -c30 * dx - 0.5 * dy, c30 * dx - 0.5 * dy]) - 0.6 * r
    if kind == "diamond":
        return (np.abs(dx) + np.abs(dy) - r) / np.sqrt(2)
    if kind == "plus":
        w = 0.3 * r
        return np.minimum(np.maximum(np.abs(dx) - r, np.abs(dy) - w), np.maximum(np.abs(dx) - w, np.abs(dy) - r))
    if kind == "ring":
        return np.abs(np.hypot(dx, dy) - 0.75 * r) - 0.25 * r
    raise ValueError(f"unknown shape {kind!r}; choose one of {', '.join(SHAPES)}")


def make_shapes(n, size=32, seed=SHAPES_SEED):
    """n images (n, 3, size, size) in [-1, 1] of one coloured shape on a dark plain background, and labels (n,).
    Classes take turns (label i % 6); colour, size and position are random. Deterministic in (n, size, seed)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES)
    radius = rng.uniform(0.18, 0.36, n) * size                              # (n,) pixels
    margin = radius + 0.04 * size
    cx, cy = (rng.uniform(margin, size - margin) for _ in range(2))          # (n,) shape centre, pixels
    fg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.6, 1.0, n), rng.uniform(0.8, 1.0, n))     # (n, 3)
    bg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.0, 0.6, n), rng.uniform(0.05, 0.35, n))  # (n, 3)
    pix = np.arange(size) + 0.5                                              # pixel centres
    cover = np.empty((n, size, size), np.float32)
    for k, kind in enumerate(SHAPES):
        m = labels == k
        dx = pix[None, None, :] - cx[m, None, None]                           # (m, 1, W)
        dy = pix[None, :, None] - cy[m, None, None]                           # (m, H, 1)
        dx, dy = np.broadcast_arrays(dx, dy)
        # one pixel of anti-aliasing: coverage ramps from 1 inside to 0 outside across the edge
        cover[m] = np.clip(0.5 - shape_sdf(kind, dx, dy, radius[m, None, None]), 0.0, 1.0)
    img = bg[:, :, None, None] * (1 - cover[:, None]) + fg[:, :, None, None] * cover[:, None]   # (n, 3, H, W)
    return (img * 2 - 1).astype(np.float32), labels.astype(np.int64)


def load_shapes(split="train", size=32):
    n = SHAPES_SIZE[split]
    images, labels = make_shapes(n, size, seed=SHAPES_SEED + SPLITS.index(split))
    return Dataset(images, labels, len(SHAPES), list(SHAPES), "shapes")


# ----------------------------------------------------------------------------
# Finding and downloading files
# ----------------------------------------------------------------------------

# (file name, md5 of the published file); mirrors are tried in order
SOURCES = {
    "mnist": dict(
        mirrors=["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        files=[("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
               ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
               ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
               ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]),
    "fashion-mnist": dict(
        mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        files=[("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
               ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
               ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
               ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")]),
    "cifar10": dict(
        mirrors=["https://www.cs.toronto.edu/~kriz/"],
        files=[("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]),
}
# sub-folders other tools use (torchvision's MNIST/raw, the CIFAR tarball's folder)
ALIASES = {"mnist": ["MNIST/raw"], "fashion-mnist": ["fashion_mnist", "FashionMNIST/raw"], "cifar10": ["cifar-10-batches-py"]}


def candidate_dirs(name, root="data"):
    """Where `name` is looked for, in order: <root>/<name> (and aliases), then the system dataset folders."""
    dirs = [os.path.join(root, name)] + [os.path.join(root, name, a) for a in ALIASES.get(name, [])]
    dirs += [os.path.join(root, a) for a in ALIASES.get(name, [])]
    dirs += [os.path.join(d, name) for d in SYSTEM_DIRS]
    return dirs


def missing_message(name, root, wanted):
    lines = [f"dataset {name!r} not found: looked for {wanted} in " + ", ".join(candidate_dirs(name, root)) + ".",
             f"Put the files in {os.path.join(root, name)}/ (data/README.md lists them), "
             f"or download them: add --download (load_dataset(..., download=True))."]
    if name == "fashion-mnist":
        lines.append("On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (installs to /usr/share/datasets/fashion-mnist).")
    lines.append("Or train on the built-in generated set: --data shapes.")
    return "\n".join(lines)


def md5sum(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name, root="data"):
    """Fetch the published files of `name` into <root>/<name>, checking each MD5; returns that folder.
    A file is written under a temporary name and renamed once its checksum matches."""
    src = SOURCES[name]
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for fname, md5 in src["files"]:
        dest = os.path.join(folder, fname)
        if os.path.exists(dest) and md5sum(dest) == md5:
            continue
        errors = []
        for mirror in src["mirrors"]:
            tmp = dest + ".part"
            try:
                print(f"downloading {mirror}{fname}")
                with urllib.request.urlopen(mirror + fname, timeout=60) as r, open(tmp, "wb") as f:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                got = md5sum(tmp)
                if got != md5:
                    raise ValueError(f"checksum mismatch: md5 {got}, expected {md5}")
                os.replace(tmp, dest)
                break
            except (OSError, ValueError) as e:
                errors.append(f"{mirror}{fname}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise FileNotFoundError(f"could not download {fname} for {name!r}:\n  " + "\n  ".join(errors) + "\n"
                                    + missing_message(name, root, fname))
    return folder


def find_file(name, root, fnames):
    """The first existing path among candidate_dirs x fnames (each name also tried with/without .gz), or None."""
    for d in candidate_dirs(name, root):
        for fn in fnames:
            for variant in (fn, fn[:-3] if fn.endswith(".gz") else fn + ".gz"):
                p = os.path.join(d, variant)
                if os.path.isfile(p):
                    return p
    return None


# ----------------------------------------------------------------------------
# MNIST and Fashion-MNIST (IDX files)
# ----------------------------------------------------------------------------

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


def read_idx(path):
    """An IDX file (raw or .gz) -> ndarray. Header: 2 zero bytes, a type code, the number of dims, then
    each dim as a big-endian uint32."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} of {dtype} but the file holds {len(body)} bytes (truncated?)")
    return np.frombuffer(body, dtype).reshape(dims)


def load_mnist_like(name, split, root, download_ok):
    prefix = "train" if split == "train" else "t10k"
    # some distributions write "train-images.idx3-ubyte" (a dot where the others have a dash)
    names = {"images": [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images.idx3-ubyte"],
             "labels": [f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels.idx1-ubyte"]}
    paths = {k: find_file(name, root, v) for k, v in names.items()}
    if None in paths.values():
        if not download_ok:
            raise FileNotFoundError(missing_message(name, root, f"{prefix}-images-idx3-ubyte(.gz) and "
                                                                f"{prefix}-labels-idx1-ubyte(.gz)"))
        download(name, root)
        paths = {k: find_file(name, root, v) for k, v in names.items()}
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{paths['images']}: expected (N, 28, 28) images and N labels, got {images.shape}, {labels.shape}")
    # 28x28 -> 32x32 by 2 pixels of black padding (the background colour): every preset's stride divides 32
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]                     # (N, 1, 32, 32)
    classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
    return Dataset(to_unit_range(images), labels.astype(np.int64), 10, list(classes), name)


# ----------------------------------------------------------------------------
# CIFAR-10 (python pickles, from the folder or straight from the tarball)
# ----------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cifar10(split, root, download_ok):
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    first = find_file("cifar10", root, [batches[0]])
    tarball = None if first else find_file("cifar10", root, ["cifar-10-python.tar.gz"])
    if first is None and tarball is None:
        if not download_ok:
            raise FileNotFoundError(missing_message("cifar10", root, "cifar-10-batches-py/ (data_batch_1..5, test_batch) "
                                                                     "or cifar-10-python.tar.gz"))
        tarball = os.path.join(download("cifar10", root), "cifar-10-python.tar.gz")
    parts = []
    if first:
        for b in batches:
            with open(os.path.join(os.path.dirname(first), b), "rb") as f:
                parts.append(pickle.load(f, encoding="bytes"))
    else:
        with tarfile.open(tarball, "r:gz") as tar:
            for b in batches:
                parts.append(pickle.load(tar.extractfile(f"cifar-10-batches-py/{b}"), encoding="bytes"))
    images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)     # rows are R, G, B planes
    labels = np.concatenate([np.asarray(p[b"labels"]) for p in parts])
    return Dataset(to_unit_range(images), labels.astype(np.int64), 10, list(CIFAR_CLASSES), "cifar10")


# ----------------------------------------------------------------------------
# A folder of images
# ----------------------------------------------------------------------------

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(path, size):
    """An image file -> (3, size, size) uint8: shorter side resized to `size`, then the centre square cropped.
    A file PIL cannot read (truncated, not an image) raises ValueError naming it."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, np.uint8).transpose(2, 0, 1)
    except Exception as e:   # PIL raises OSError, SyntaxError, ValueError or its own errors for broken files
        # stop rather than skip: a skipped file would silently change the class counts of the training set
        reason = " ".join(str(e).replace(f" {str(path)!r}", "").split()) or type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}; delete or replace the file, "
                         f"or move it out of the dataset folder") from None


def _visible(names):
    """Names not starting with "." (hidden: .ipynb_checkpoints, .DS_Store, macOS ._* resource forks), sorted."""
    return sorted(n for n in names if not n.startswith("."))


def load_folder(path, split, size):
    """Images under `path`; sub-folders are the classes (sorted by name). With path/train and path/test the
    split picks one; otherwise both splits are the whole folder. Hidden files and folders (names starting with
    ".") are ignored; images beside class folders, or a class folder without images, raise ValueError."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder {path!r} does not exist: give folder:<path> with a folder of images "
                                f"(one sub-folder per class, or images directly in it)")
    if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
        path = os.path.join(path, split)
    is_img = lambda f: f.lower().endswith(IMAGE_EXTS)
    entries = _visible(os.listdir(path))
    loose = [f for f in entries if is_img(f) and os.path.isfile(os.path.join(path, f))]
    subdirs = [d for d in entries if os.path.isdir(os.path.join(path, d))]
    per_class = {d: [f for f in _visible(os.listdir(os.path.join(path, d)))
                     if is_img(f) and os.path.isfile(os.path.join(path, d, f))] for d in subdirs}
    with_images = [d for d in subdirs if per_class[d]]
    if with_images:
        if loose:
            shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
            raise ValueError(f"{path} has {len(loose)} image(s) ({shown}) beside its class folders "
                             f"({', '.join(with_images)}): move them into a class folder, or point folder:<path> "
                             f"at a folder that holds only class folders")
        empty = [d for d in subdirs if not per_class[d]]
        if empty:
            raise ValueError(f"class folder(s) {', '.join(empty)} in {path} hold no images ({', '.join(IMAGE_EXTS)}) "
                             f"directly: add images, or remove or hide (rename to .{empty[0]}) the folder")
        files = [os.path.join(path, d, f) for d in subdirs for f in per_class[d]]
        labels = [k for k, d in enumerate(subdirs) for _ in per_class[d]]
    else:
        subdirs = []
        files = [os.path.join(path, f) for f in loose]
        labels = [0] * len(files)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {path!r} or its sub-folders")
    images = np.stack([load_image(f, size) for f in files])
    # a single class carries no information to condition on: the set is unconditional (num_classes 0)
    num_classes = len(subdirs) if len(subdirs) > 1 else 0
    names = subdirs if subdirs else [os.path.basename(os.path.normpath(path))]
    return Dataset(to_unit_range(images), np.asarray(labels, np.int64), num_classes, names,
                   f"folder:{os.path.normpath(path)}")


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------

def load_dataset(name="shapes", split="train", root="data", download=False, size=None):
    """A Dataset by name (see DATASETS). size: image size for "shapes" and "folder:" sets (default 32);
    MNIST-like sets and CIFAR-10 are 32x32."""
    if size is not None and int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if name == "captions":   # shapes with captions (numpy_ref/captions.py); splits train, test, heldout
        from .captions import load_captioned
        return load_captioned(split, size or 32)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "shapes":
        return load_shapes(split, size or 32)
    if name.startswith("folder:"):
        return load_folder(os.path.expanduser(name[len("folder:"):]), split, size or 32)
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if size not in (None, 32):
        raise ValueError(f"{name} comes at 32x32 only (size={size}); use shapes or folder:<path> for other sizes")
    if name == "cifar10":
        return load_cifar10(split, root, download)
    return load_mnist_like(name, split, root, download)


def data_tag(name):
    """A file-name-safe short name: "folder:/a/b/cats" -> "folder-cats"."""
    if name.startswith("folder:"):
        return "folder-" + (os.path.basename(os.path.normpath(name[7:])) or "root")
    return name
