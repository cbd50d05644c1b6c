"""Text to image, data and text side: the captioned shapes set (numpy_ref/captions.py) and the text encoder
(numpy_ref/text.py, tinygrad_impl/text.py): captions agree with the drawn attributes, held-out combinations stay out
of training, the tokenizer, and the encoder on both backends (values, gradients, padding)."""
import json

import numpy as np
import pytest
from tinygrad import Tensor

import numpy_ref.text as T
import tinygrad_impl.text as TT
from tinygrad_impl import fast
from numpy_ref import captions as C
from numpy_ref.data import DATASETS, SHAPES, load_dataset
from util import assert_close

SIZE_OF = {w: s for s, ws in C.SIZE_WORDS.items() for w in ws}                  # "little" -> "small"
RELATION_OF = {"left": "left of", "right": "right of", "above": "above", "over": "above", "below": "below",
               "under": "below"}
PLACE_WORDS = ("top", "bottom", "left", "right", "center")


@pytest.fixture(scope="module")
def splits():
    return {s: load_dataset("captions", split=s) for s in C.CAPTION_SPLITS}


def parse(caption):
    """What a caption says, read from its words alone: colours, shapes, sizes (in order), the place words, the
    relation (or None)."""
    words = T.tokenize(caption)
    rel = [RELATION_OF[w] for w, nxt in zip(words, words[1:] + [""])
           if w in ("above", "over", "below", "under") or (w in ("left", "right") and nxt == "of")]
    return dict(colours=[w for w in words if w in C.COLOURS], shapes=[w for w in words if w in SHAPES],
                sizes=[SIZE_OF[w] for w in words if w in SIZE_OF], place=" ".join(w for w in words if w in PLACE_WORDS),
                relation=rel[0] if len(rel) == 1 else (None if not rel else rel))


# ----------------------------------------------------------------------------
# The captioned data
# ----------------------------------------------------------------------------

def test_captions_are_deterministic_in_the_seed():
    a, b, c = C.make_captioned(40, seed=5), C.make_captioned(40, seed=5), C.make_captioned(40, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])
    assert a[1] != c[1] and not np.array_equal(a[0], c[0])
    assert C.make_captioned(40, split="test")[1] != C.make_captioned(40, split="train")[1], "splits have their own seed"


def test_captions_say_what_the_attributes_hold(splits):
    for name, ds in splits.items():
        at = ds.attributes
        assert ds.images.shape == (C.CAPTION_SIZES[name], 3, 32, 32) and ds.images.dtype == np.float32
        assert -1.0 <= ds.images.min() and ds.images.max() <= 1.0
        assert len(ds.captions) == len(ds) and all(a.dtype == np.int64 for a in at.values())
        for i, cap in enumerate(ds.captions):
            n = at["count"][i]
            said = parse(cap)
            assert said["colours"] == [C.COLOURS[k] for k in at["colour"][i, :n]], cap
            assert said["shapes"] == [SHAPES[k] for k in at["shape"][i, :n]], cap
            assert said["sizes"] == [C.SIZES[k] for k in at["size"][i, :n]], cap
            if n == 1:
                assert said["relation"] is None and said["place"] == C.POSITIONS[at["position"][i, 0]], cap
                assert all(at[k][i, 1] == -1 for k in ("shape", "colour", "size", "position")), cap
                assert at["relation"][i] == -1, cap
            else:
                assert said["relation"] == C.RELATIONS[at["relation"][i]], cap
        np.testing.assert_array_equal(ds.labels, at["shape"][:, 0])
    # both kinds of image, and several phrasings of each
    train = splits["train"]
    assert 0.2 < (train.attributes["count"] == 2).mean() < 0.4
    attribute_words = set(C.COLOURS) | set(SHAPES) | set(SIZE_OF) | set(PLACE_WORDS) | set(RELATION_OF)
    frames = {" ".join(w if w not in attribute_words else "_" for w in T.tokenize(c)) for c in train.captions}
    assert len(frames) >= len(C.ONE_OBJECT) + len(C.TWO_OBJECTS), sorted(frames)


def test_images_show_the_attributes(splits):
    """The pixels of each object's named colour sit in its grid cell (single objects), on the side its relation says
    (two objects of different colours), and large objects cover more pixels than small ones of the same shape."""
    ds = splits["train"]
    at, n = ds.attributes, 1500
    rgb = (ds.images[:n].transpose(0, 2, 3, 1) + 1) / 2                       # (n, H, W, 3) in [0, 1]
    size = rgb.shape[1]
    pix = np.arange(size) + 0.5
    areas = {}
    for i in range(n):
        masks = [np.linalg.norm(rgb[i] - C.COLOUR_RGB[at["colour"][i, j]], axis=-1) < 0.15
                 for j in range(at["count"][i])]
        centres = [(pix[np.nonzero(m)[1]].mean(), pix[np.nonzero(m)[0]].mean()) for m in masks]   # (x, y) pixels
        if at["count"][i] == 1:
            pos = at["position"][i, 0]
            nearest = [int(np.argmin(np.abs(np.array([0.25, 0.5, 0.75]) * size - c))) for c in centres[0]]
            assert nearest == [pos % 3, pos // 3], (i, ds.captions[i], centres[0])
            areas.setdefault((at["shape"][i, 0], at["size"][i, 0]), []).append(masks[0].sum())
        elif at["colour"][i, 0] != at["colour"][i, 1]:
            (x0, y0), (x1, y1) = centres
            want = {"left of": x0 < x1 - 8, "right of": x0 > x1 + 8, "above": y0 < y1 - 8, "below": y0 > y1 + 8}
            assert want[C.RELATIONS[at["relation"][i]]], (i, ds.captions[i], centres)
    for k in range(len(SHAPES)):
        assert max(areas[k, 0]) < min(areas[k, 1]), f"{SHAPES[k]}: small and large overlap in area"


def test_held_out_combinations_only_in_the_heldout_split(splits):
    held = {(C.COLOURS.index(c), SHAPES.index(s)) for c, s in C.HELD_OUT}
    assert len(held) == len(C.HELD_OUT) >= 3
    for name, ds in splits.items():
        at = ds.attributes
        two = at["count"] == 2
        pairs = [(at["colour"][i, j], at["shape"][i, j]) for i in range(len(ds)) for j in range(at["count"][i])]
        said = [pair for c in ds.captions for pair in zip(parse(c)["colours"], parse(c)["shapes"])]
        if name == "heldout":
            assert set(pairs) == held and two.any() and (~two).any()
            assert {(C.COLOURS.index(c), SHAPES.index(s)) for c, s in said} == held
        else:
            assert not set(pairs) & held, f"{name} has held-out pairs"
            assert not {(C.COLOURS.index(c), SHAPES.index(s)) for c, s in said} & held
            assert len(set(pairs)) == len(C.COLOURS) * len(SHAPES) - len(held), "every other pair appears"


def test_captions_load_through_load_dataset(splits):
    assert "captions" in DATASETS
    ds = splits["train"]
    assert isinstance(ds, C.CaptionedDataset) and ds.name == "captions" and ds.num_classes == len(SHAPES)
    assert ds.class_names == list(SHAPES) and ds.labels.dtype == np.int64 and ds.vocab == C.VOCAB
    assert load_dataset("captions", size=16).images.shape == (6000, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown split 'val'.*heldout"):
        load_dataset("captions", split="val")
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        load_dataset("shapes", split="heldout")


# ----------------------------------------------------------------------------
# Vocabulary and tokenizer
# ----------------------------------------------------------------------------

def test_vocabulary_is_a_few_dozen_words_and_every_caption_encodes(splits):
    assert 20 <= len(C.VOCAB) <= 60 and C.VOCAB[0] == C.PAD and len(set(C.VOCAB)) == len(C.VOCAB)
    used = set()
    for ds in splits.values():
        ids = T.encode_batch(ds.captions, C.VOCAB, C.MAX_LEN)
        assert ids.shape == (len(ds), C.MAX_LEN) and ids.dtype == np.int64
        used |= set(np.unique(ids).tolist())
    assert used == set(range(len(C.VOCAB))), f"unused words: {[C.VOCAB[i] for i in set(range(len(C.VOCAB))) - used]}"


def test_tokenizer_round_trip_and_phrasings():
    assert T.tokenize("Top-left: a RED circle!") == ["top", "left", "a", "red", "circle"]
    for cap in ("a small red circle at the top left", "small red circle, top left", "top left: a small red circle",
                "there is a big blue ring to the left of a little white plus"):
        ids = T.encode(cap, C.VOCAB, C.MAX_LEN)
        assert T.decode(ids, C.VOCAB) == " ".join(T.tokenize(cap)) == cap.replace(",", "").replace(":", "")
    np.testing.assert_array_equal(T.encode("Small red circle, TOP  left."), T.encode("small red circle top left"))
    empty = T.encode("", C.VOCAB, 8)
    assert empty.tolist() == [T.PAD_ID] * 8 and T.decode(empty) == ""
    np.testing.assert_array_equal(T.encode(" ,.: "), T.encode(""))
    with pytest.raises(ValueError, match="more than max_len=4"):
        T.encode("a small red circle at the top", C.VOCAB, 4)
    with pytest.raises(ValueError, match="a str"):
        T.encode(None)


def test_unknown_word_names_it_and_lists_the_vocabulary():
    with pytest.raises(ValueError, match="unknown word 'dog' in prompt 'a red Dog'") as e:
        T.encode("a red Dog", C.VOCAB, C.MAX_LEN)
    assert all(w in str(e.value) for w in C.VOCAB[1:])
    with pytest.raises(ValueError, match="unknown word 'pad'"):   # the padding token cannot be typed
        T.encode("<pad>")


def test_vocab_json_round_trip_and_checks():
    text = T.vocab_to_json(C.VOCAB)
    assert json.loads(text) == C.VOCAB and T.vocab_from_json(text) == C.VOCAB
    for bad, why in ((["red", C.PAD], "starts with the padding"), ([C.PAD, "red", "red"], "repeats 'red'"),
                     ([C.PAD, "top left"], "not single lower-case words"), ([C.PAD, "Red"], "not single"),
                     ("red", "list of str")):
        with pytest.raises(ValueError, match=why):
            T.check_vocab(bad)


# ----------------------------------------------------------------------------
# The text encoder
# ----------------------------------------------------------------------------

TINY = T.TextConfig(width=8, depth=1, heads=2, mlp_ratio=2.0)
PROMPTS = ["a small red circle at the top left", "big blue ring to the left of a little white plus", "square", ""]


def random_text_params(cfg, seed=0, dtype=np.float32):
    """Every tensor random (init_params has unit norms and zero biases): N(0, 1/fan_in), norms around 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in T.param_shapes(cfg).items():
        w = rng.standard_normal(shape) / np.sqrt(shape[1] if len(shape) > 1 else 4)
        out[name] = (1 + w if name.endswith("norm1.weight") or name.endswith("norm2.weight") else w).astype(dtype)
    return out


def test_text_config_validates_and_round_trips():
    assert T.TextConfig().vocab_size == len(C.VOCAB) and T.TextConfig().max_len == C.MAX_LEN
    with pytest.raises(ValueError, match="heads=3 does not divide width=16"):
        T.TextConfig(width=16, heads=3)
    with pytest.raises(ValueError, match="depth=0 must be an int >= 1"):
        T.TextConfig(depth=0)
    with pytest.raises(ValueError, match="vocab_size=1"):
        T.TextConfig(vocab_size=1)
    assert T.TextConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        T.TextConfig.from_json(json.dumps(dict(json.loads(TINY.to_json()), colour=1)))


def test_init_params_follow_param_shapes_on_both_sides():
    cfg = T.TextConfig()
    a, b = T.init_params(cfg, seed=3), TT.init_params(cfg, seed=3)
    shapes = T.param_shapes(cfg)
    assert list(a) == list(shapes) == list(b) and all(k.startswith("text.") for k in shapes)
    for k in a:
        assert a[k].shape == shapes[k] and a[k].dtype == np.float32, k
        np.testing.assert_array_equal(a[k], b[k].numpy(), err_msg=k)
    assert (a["text.final_norm.weight"] == 1).all() and (a["text.layers.0.attn.qkv.bias"] == 0).all()
    h, mask = T.text_encoder(a, T.encode_batch(PROMPTS), cfg)
    assert h.shape == (4, C.MAX_LEN, cfg.width) and h.dtype == np.float32 and np.isfinite(h).all()


def test_padding_does_not_change_real_positions_and_empty_prompt_is_defined():
    cfg = T.TextConfig(width=16, depth=2, heads=4)
    p = random_text_params(cfg, seed=1, dtype=np.float64)
    short, long = T.encode_batch(PROMPTS, max_len=12), T.encode_batch(PROMPTS, max_len=C.MAX_LEN)
    (hs, ms), (hl, ml) = T.text_encoder(p, short, cfg), T.text_encoder(p, long, cfg)
    real = short != T.PAD_ID
    np.testing.assert_array_equal(ms[:3], real[:3])
    assert ms[3].all() and ml[3].all(), "a prompt of PAD only attends to every position"
    np.testing.assert_allclose(hs[real], hl[:, :12][real], rtol=0, atol=1e-12)
    assert np.isfinite(hl).all() and np.abs(hl[3]).max() > 0.1
    # a different word changes the output: the encoder reads its input
    other = T.encode_batch(["a small red square at the top left"], max_len=12)
    assert np.abs(T.text_encoder(p, other, cfg)[0][0, :4] - hs[0, :4]).max() > 1e-3


def test_bad_ids_raise_a_clear_value_error():
    p = random_text_params(TINY)
    for fwd, wrap, params in ((T.text_encoder, lambda a: a, p),
                              (TT.text_encoder, lambda a: a, {k: Tensor(v) for k, v in p.items()})):
        with pytest.raises(ValueError, match="must be \\(B, L\\)"):
            fwd(params, wrap(np.zeros(5, np.int64)), TINY)
        with pytest.raises(ValueError, match="length 17, more than the encoder's max_len=16"):
            fwd(params, wrap(np.zeros((1, 17), np.int64)), TINY)
        with pytest.raises(ValueError, match="token id 35 out of range 0..34"):
            fwd(params, wrap(np.array([[1, 35]])), TINY)
        with pytest.raises(ValueError, match="integers"):
            fwd(params, wrap(np.zeros((1, 3))), TINY)


def test_tinygrad_encoder_matches_numpy_values_and_gradients():
    """Forward on both backends, and tinygrad's gradient of L = sum(h * R) w.r.t. the parameters against central
    differences of the float64 NumPy forward (on the default path: the CPU fast path here)."""
    ids = T.encode_batch(PROMPTS, max_len=C.MAX_LEN)
    p64 = random_text_params(TINY, seed=2, dtype=np.float64)
    ref, ref_mask = T.text_encoder({k: v.astype(np.float32) for k, v in p64.items()}, ids, TINY)
    R = np.random.default_rng(3).standard_normal(ref.shape)
    chosen = ["text.tok_embed.weight", "text.layers.0.attn.qkv.weight", "text.layers.0.mlp.fc1.weight"]
    pt = {k: Tensor(v.astype(np.float32)) for k, v in p64.items()}
    h, mask = TT.text_encoder(pt, ids, TINY)
    grads = (h * Tensor(R.astype(np.float32))).sum().gradient(*[pt[k] for k in chosen])
    Tensor.realize(h, mask, *grads)
    assert_close(ref, h.numpy(), what="text encoder")
    np.testing.assert_array_equal(ref_mask, mask.numpy())

    loss = lambda p: float((T.text_encoder(p, ids, TINY)[0] * R).sum())  # noqa: E731
    rng = np.random.default_rng(4)
    for name, g in zip(chosen, grads):
        g = g.numpy()
        if name == "text.tok_embed.weight":   # rows the prompts use: a word, and PAD
            idx = [(int(ids[0, 1]), int(rng.integers(TINY.width))), (T.PAD_ID, int(rng.integers(TINY.width)))]
        else:
            idx = [tuple(int(rng.integers(s)) for s in p64[name].shape) for _ in range(2)]
        for i in idx:
            step = 1e-6
            plus, minus = dict(p64), dict(p64)
            plus[name], minus[name] = p64[name].copy(), p64[name].copy()
            plus[name][i] += step
            minus[name][i] -= step
            fd = (loss(plus) - loss(minus)) / (2 * step)
            assert abs(g[i] - fd) <= 1e-3 + 1e-2 * abs(fd), f"d/d{name}{list(i)}: tinygrad {g[i]:.6g}, FD {fd:.6g}"
        assert np.abs(g).max() > 1e-3, f"d/d{name} is ~0: the check would prove nothing"


def test_tinygrad_encoder_on_the_plain_path():
    """The forward with the CPU fast path off: the plain tinygrad ops GPUs and Metal run."""
    ids = T.encode_batch(PROMPTS, max_len=C.MAX_LEN)
    p = random_text_params(TINY, seed=5)
    with fast.enabled(False):
        h, mask = TT.text_encoder({k: Tensor(v) for k, v in p.items()}, ids, TINY)
        out = h.numpy()
    ref, ref_mask = T.text_encoder(p, ids, TINY)
    assert_close(ref, out, what="text encoder, plain path")
    np.testing.assert_array_equal(ref_mask, mask.numpy())
