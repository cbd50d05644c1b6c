"""Datasets: the generated shapes set, and the MNIST/Fashion-MNIST/CIFAR-10/folder readers on real files
written here in each format (no network: downloads come from a file:// mirror)."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from numpy_ref import data as D

# ----------------------------------------------------------------------------
# The built-in shapes
# ----------------------------------------------------------------------------

def test_shapes_is_deterministic_balanced_and_in_range():
    a, b = D.load_dataset("shapes"), D.load_dataset("shapes")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (6000, 3, 32, 32) and a.images.dtype == np.float32
    assert a.labels.dtype == np.int64 and a.num_classes == 6 and a.class_names == list(D.SHAPES)
    assert np.bincount(a.labels).tolist() == [1000] * 6
    assert -1.0 <= a.images.min() < -0.9 and 0.9 < a.images.max() <= 1.0
    test = D.load_dataset("shapes", split="test")
    assert len(test) == 1200 and not np.allclose(test.images[:10], a.images[:10]), "test must differ from train"


def test_shapes_size_argument_and_two_colours_per_image():
    ds = D.load_dataset("shapes", size=8)
    assert ds.images.shape == (6000, 3, 8, 8)
    big = D.load_dataset("shapes", size=32).images[:50]
    # every image is background + one shape: the corner pixel is background, and some pixel differs from it
    corner = big[:, :, :1, :1]
    assert (np.abs(big - corner).max(axis=(1, 2, 3)) > 0.3).all()


@given(st.floats(2.0, 20.0), st.floats(0.0, 2 * np.pi))
def test_shape_outlines(r, angle):
    """Each shape fits in 1.25 r, covers its centre (the ring does not), and square != diamond."""
    far = np.array([[[1.25 * r * np.cos(angle)]]]), np.array([[[1.25 * r * np.sin(angle)]]])
    R = np.array([[[r]]])
    zero = np.zeros((1, 1, 1))
    for kind in D.SHAPES:
        assert D.shape_sdf(kind, *far, R).item() > 0, f"{kind} reaches beyond 1.25 r"
        assert (D.shape_sdf(kind, zero, zero, R).item() < 0) == (kind != "ring"), kind
    corner = np.full((1, 1, 1), 0.7 * r)
    assert D.shape_sdf("square", corner, corner, R).item() < 0 < D.shape_sdf("diamond", corner, corner, R).item()
    ring_mid = np.full((1, 1, 1), 0.75 * r)
    assert D.shape_sdf("ring", ring_mid, zero, R).item() < 0


# ----------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------

def idx_bytes(arr):
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def write_mnist(folder, n=5, gz=True, seed=0, dotted=False):
    """Write train and t10k IDX files of n random 28x28 images; returns {split: (images, labels)}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte".replace("-idx", ".idx") if dotted else f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                    f.write(idx_bytes(arr))
            else:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(idx_bytes(arr))
        out[split] = (images, labels)
    return out


@pytest.fixture
def no_system_dirs(monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", ())


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (False, True)])
def test_mnist_reader_pads_to_32_and_scales(tmp_path, no_system_dirs, gz, dotted):
    truth = write_mnist(tmp_path / "mnist", gz=gz, dotted=dotted)
    for split in ("train", "test"):
        ds = D.load_dataset("mnist", split=split, root=str(tmp_path))
        images, labels = truth[split]
        assert ds.images.shape == (5, 1, 32, 32) and ds.num_classes == 10 and ds.name == "mnist"
        np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))
        np.testing.assert_allclose(ds.images[:, 0, 2:30, 2:30], images / 127.5 - 1, atol=1e-6)
        assert (ds.images[:, :, :2] == -1).all() and (ds.images[:, :, :, 30:] == -1).all(), "padding is black"
    assert ds.images[0, 0, 2, 2] == -1.0 and ds.images[0, 0, 2, 3] == 1.0


def test_fashion_mnist_from_the_system_folder(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist puts the .gz files in /usr/share/datasets/fashion-mnist."""
    truth = write_mnist(tmp_path / "system" / "fashion-mnist", seed=1)
    monkeypatch.setattr(D, "SYSTEM_DIRS", (str(tmp_path / "system"),))
    ds = D.load_dataset("fashion-mnist", root=str(tmp_path / "empty"))
    np.testing.assert_array_equal(ds.labels, truth["train"][1])
    assert ds.class_names[0] == "T-shirt/top" and ds.name == "fashion-mnist"


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_if_installed():
    ds = D.load_dataset("fashion-mnist", split="test")
    assert ds.images.shape == (10000, 1, 32, 32) and np.bincount(ds.labels).tolist() == [1000] * 10


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(str(path))
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(str(path))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_dataset_says_where_to_put_it(tmp_path, no_system_dirs, name):
    with pytest.raises(FileNotFoundError) as e:
        D.load_dataset(name, root=str(tmp_path))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), name) in msg and "--download" in msg and "data/README.md" in msg
    assert ("apt-get install dataset-fashion-mnist" in msg) == (name == "fashion-mnist")


def test_download_checks_the_md5(tmp_path, no_system_dirs, monkeypatch):
    mirror = tmp_path / "mirror"
    truth = write_mnist(mirror, seed=2)
    files = [(f, hashlib.md5((mirror / f).read_bytes()).hexdigest()) for f in sorted(os.listdir(mirror))]
    monkeypatch.setitem(D.SOURCES, "mnist", dict(mirrors=[mirror.as_uri() + "/"], files=files))
    ds = D.load_dataset("mnist", root=str(tmp_path / "data"), download=True)
    np.testing.assert_array_equal(ds.labels, truth["train"][1])
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(f for f, _ in files)
    # a corrupted mirror: the file is refused and nothing is left behind
    bad = [(f, "0" * 32) for f, _ in files]
    monkeypatch.setitem(D.SOURCES, "mnist", dict(mirrors=[mirror.as_uri() + "/"], files=bad))
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        D.load_dataset("mnist", root=str(tmp_path / "other"), download=True)
    assert os.listdir(tmp_path / "other" / "mnist") == []


# ----------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------

def cifar_batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n).tolist()}
    return out


def test_cifar10_from_pickles_and_from_the_tarball(tmp_path, no_system_dirs):
    batches = cifar_batches()
    folder = tmp_path / "a" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d))
    ds = D.load_dataset("cifar10", root=str(tmp_path / "a"))
    assert ds.images.shape == (15, 3, 32, 32) and ds.num_classes == 10 and ds.class_names[0] == "airplane"
    row = batches["data_batch_1"][b"data"][0]
    np.testing.assert_allclose(ds.images[0, 1, 0, :4], row[1024:1028] / 127.5 - 1, atol=1e-6)   # G plane
    test = D.load_dataset("cifar10", split="test", root=str(tmp_path / "a"))
    assert test.labels.tolist() == batches["test_batch"][b"labels"]

    (tmp_path / "b" / "cifar10").mkdir(parents=True)
    with tarfile.open(tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, d in batches.items():
            blob = pickle.dumps(d)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    from_tar = D.load_dataset("cifar10", root=str(tmp_path / "b"))
    np.testing.assert_array_equal(from_tar.images, ds.images)


# ----------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------

def stripes(w, h):
    """An RGB picture: left quarter red, middle half green, right quarter blue."""
    from PIL import Image
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 4, 0] = 255
    a[:, w // 4: 3 * w // 4, 1] = 255
    a[:, 3 * w // 4:, 2] = 255
    return Image.fromarray(a)


def test_folder_of_images_resizes_crops_and_labels_by_subfolder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    stripes(64, 32).save(tmp_path / "cats" / "a.png")
    stripes(100, 50).convert("L").save(tmp_path / "dogs" / "b.jpg")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = D.load_dataset(f"folder:{tmp_path}", size=16)
    assert ds.images.shape == (2, 3, 16, 16) and ds.labels.tolist() == [0, 1]
    assert ds.num_classes == 2 and ds.class_names == ["cats", "dogs"]
    # the 2:1 picture is scaled to 32x16 and its centre 16x16 kept: only the green middle half remains
    np.testing.assert_allclose(ds.images[0, :, :, 2:14].mean(axis=(1, 2)), [-1, 1, -1], atol=0.02)
    assert D.data_tag(ds.name) == f"folder-{tmp_path.name}"


def test_flat_folder_is_one_unconditional_class(tmp_path):
    for i in range(3):
        stripes(20, 20).save(tmp_path / f"{i}.png")
    ds = D.load_dataset(f"folder:{tmp_path}", size=8)
    assert ds.images.shape == (3, 3, 8, 8) and ds.num_classes == 0 and ds.labels.tolist() == [0, 0, 0]


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*shapes"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        D.load_dataset("shapes", split="val")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="no images"):
        D.load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="32x32 only"):
        D.load_dataset("mnist", size=16)


def png_bytes(w=24, h=24):
    buf = io.BytesIO()
    stripes(w, h).save(buf, "PNG")
    return buf.getvalue()


def test_hidden_folders_and_files_are_ignored(tmp_path):
    """Jupyter's .ipynb_checkpoints, macOS's .DS_Store and ._ resource forks are no classes and no images."""
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        stripes(20, 20).save(tmp_path / cls / "a.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "cats" / "._a.png").write_bytes(b"\0\5\26\7 AppleDouble")   # not a PNG: would fail to load
    ds = D.load_dataset(f"folder:{tmp_path}", size=8)
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2 and ds.labels.tolist() == [0, 1]


def test_hidden_folder_with_images_in_a_flat_folder_is_ignored(tmp_path):
    """A flat folder stays one unconditional class of its own images: a hidden sub-folder holding an image
    (a checkpoint copy) does not turn into the only class and drop the real images."""
    for i in range(3):
        stripes(20, 20).save(tmp_path / f"{i}.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    stripes(20, 20).save(tmp_path / ".ipynb_checkpoints" / "0-checkpoint.png")
    ds = D.load_dataset(f"folder:{tmp_path}", size=8)
    assert len(ds) == 3 and ds.num_classes == 0


def test_loose_images_beside_class_folders_are_an_error(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        stripes(20, 20).save(tmp_path / cls / "a.png")
    stripes(20, 20).save(tmp_path / "stray.png")
    (tmp_path / "README.txt").write_text("not an image: fine beside the class folders")
    with pytest.raises(ValueError, match=r"1 image\(s\) \(stray\.png\) beside its class folders \(cats, dogs\): "
                                         r"move them into a class folder, or point folder:<path> at a folder"):
        D.load_dataset(f"folder:{tmp_path}", size=8)


def test_class_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "cats").mkdir()
    stripes(20, 20).save(tmp_path / "cats" / "a.png")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "notes.txt").write_text("no pictures yet")
    with pytest.raises(ValueError, match=r"class folder\(s\) dogs in .* hold no images .*rename to \.dogs"):
        D.load_dataset(f"folder:{tmp_path}", size=8)


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_image_is_named_in_one_line(tmp_path, kind):
    """A truncated PNG (cut in its pixel data, or in its header) and a text file named .png: a ValueError
    naming the file, its reason, and the fix, on one line and without PIL's chained tracebacks."""
    stripes(20, 20).save(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    blob = png_bytes()
    reason = {"truncated": "truncated", "text": "cannot identify image file"}[kind]
    bad.write_bytes(blob[: len(blob) // 2] if kind == "truncated" else b"hello, I am text")
    with pytest.raises(ValueError, match=f"cannot read image {bad}: .*{reason}.*; delete or replace the file") as e:
        D.load_dataset(f"folder:{tmp_path}", size=8)
    assert "\n" not in str(e.value) and e.value.__suppress_context__ and e.value.__cause__ is None
