"""A small text encoder for prompts: a word-level tokenizer over a fixed vocabulary, and a pre-LN transformer.

    ids = encode_batch(["a small red circle at the top left", ""], VOCAB, MAX_LEN)   # (2, 16) int64, PAD = 0
    cfg = TextConfig(width=64, depth=2, heads=4)
    p = init_params(cfg, seed=0)
    h, mask = text_encoder(p, ids, cfg)              # (2, 16, 64), (2, 16) bool

The tokenizer lower-cases a prompt and splits it on spaces and punctuation; every word must be in the vocabulary
(a plain list of str whose id 0 is PAD: numpy_ref.captions.VOCAB, JSON in a checkpoint via vocab_to_json). The empty
prompt encodes to all PAD: the null condition of classifier-free guidance.

The encoder: token + learned position embeddings, `depth` pre-LN layers (self-attention whose keys skip the PAD
tokens, then a GELU MLP), a final layer norm. Outputs at real positions do not depend on how much padding follows.
Parameter names start with "text." so they can live in one dict (and one weight file) with a model's.
"""
import json
import re
from dataclasses import asdict, dataclass, fields

import numpy as np

from .captions import MAX_LEN, PAD, VOCAB
from .layers import attention, embedding, gelu, layer_norm, linear, merge_heads, split, split_heads

PAD_ID = 0          # VOCAB[0] == PAD
MASK_BIAS = -1e9    # added to the attention logits of masked keys: exp underflows to exactly 0 in float32 and float64

# ----------------------------------------------------------------------------
# Vocabulary and tokenizer
# ----------------------------------------------------------------------------

def check_vocab(vocab):
    """Raise ValueError unless vocab is a list of distinct, non-empty lower-case words with PAD first; returns it."""
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(w, str) for w in vocab):
        raise ValueError(f"a vocabulary is a list of str, got {type(vocab).__name__}")
    if not vocab or vocab[0] != PAD:
        raise ValueError(f"a vocabulary starts with the padding token {PAD!r} (id {PAD_ID}), got "
                         f"{vocab[0] if vocab else 'an empty list'!r}")
    if len(set(vocab)) != len(vocab):
        dup = sorted({w for w in vocab if list(vocab).count(w) > 1})
        raise ValueError(f"the vocabulary repeats {', '.join(map(repr, dup))}")
    bad = [w for w in vocab[1:] if tokenize(w) != [w]]
    if bad:
        raise ValueError(f"vocabulary entries {bad} are not single lower-case words (the tokenizer could never "
                         f"produce them)")
    return list(vocab)


def vocab_to_json(vocab):
    """vocab (list of str) -> a JSON string (for a checkpoint's metadata)."""
    return json.dumps(check_vocab(vocab))


def vocab_from_json(text):
    """The inverse of vocab_to_json: a JSON string -> list of str, checked (check_vocab)."""
    return check_vocab(json.loads(text))


def tokenize(prompt):
    """prompt (str) -> its words: lower-cased, split on spaces and punctuation ("Top-left: a RED circle" ->
    ["top", "left", "a", "red", "circle"]); "" -> []."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt is a str, got {type(prompt).__name__}")
    return re.findall(r"[^\W_]+", prompt.lower())


def _encode(prompt, index, vocab, max_len):
    words = tokenize(prompt)
    unknown = [w for w in words if w not in index]
    if unknown:
        raise ValueError(f"unknown word {unknown[0]!r} in prompt {prompt!r}; the vocabulary has "
                         f"{len(vocab) - 1} words: {', '.join(vocab[1:])}")
    if len(words) > max_len:
        raise ValueError(f"prompt {prompt!r} has {len(words)} words, more than max_len={max_len}")
    ids = np.full(max_len, PAD_ID, np.int64)
    ids[:len(words)] = [index[w] for w in words]
    return ids


def encode(prompt, vocab=VOCAB, max_len=MAX_LEN):
    """prompt (str) -> ids (max_len,) int64: one id per word (its index in vocab), then PAD_ID up to max_len.
    An unknown word raises ValueError naming it and listing the vocabulary; "" gives all PAD (the null condition)."""
    return _encode(prompt, {w: i for i, w in enumerate(vocab) if i != PAD_ID}, vocab, max_len)


def encode_batch(prompts, vocab=VOCAB, max_len=MAX_LEN):
    """prompts (B str) -> ids (B, max_len) int64 (encode of each)."""
    index = {w: i for i, w in enumerate(vocab) if i != PAD_ID}
    rows = [_encode(p, index, vocab, max_len) for p in prompts]
    return np.stack(rows) if rows else np.zeros((0, max_len), np.int64)


def decode(ids, vocab=VOCAB):
    """ids (L,) -> the words, space-separated, PAD dropped: decode(encode(p)) == " ".join(tokenize(p))."""
    return " ".join(vocab[i] for i in np.asarray(ids).reshape(-1).tolist() if i != PAD_ID)


# ----------------------------------------------------------------------------
# Configuration and parameters
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = len(VOCAB)  # ids 0..vocab_size-1, 0 = PAD
    max_len: int = MAX_LEN        # the longest id sequence (the position table's length)
    width: int = 64               # D_text
    depth: int = 2                # transformer layers
    heads: int = 4
    mlp_ratio: float = 4.0        # MLP hidden width = mlp_ratio * width

    def __post_init__(self):
        problems = []
        for name in ("max_len", "width", "depth", "heads"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                problems.append(f"{name}={v!r} must be an int >= 1")
        if not isinstance(self.vocab_size, (int, np.integer)) or self.vocab_size < 2:
            problems.append(f"vocab_size={self.vocab_size!r} must be an int >= 2 (PAD and at least one word)")
        if not problems and self.width % self.heads:
            problems.append(f"heads={self.heads} does not divide width={self.width}; pick heads that divide it")
        if not self.mlp_ratio > 0 or int(self.width * self.mlp_ratio) < 1:
            problems.append(f"mlp_ratio={self.mlp_ratio} must be > 0 (and give a hidden width >= 1)")
        if problems:
            raise ValueError("invalid TextConfig: " + "; ".join(problems))

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"text config has unknown fields {unknown}: the file was written by another version "
                             f"or program")
        return cls(**d)


def param_shapes(cfg):
    """name -> shape of every parameter of the text encoder (all names start with "text.")."""
    D, hid = cfg.width, int(cfg.width * cfg.mlp_ratio)
    shapes = {"text.tok_embed.weight": (cfg.vocab_size, D), "text.pos_embed.weight": (cfg.max_len, D)}
    for i in range(cfg.depth):
        b = f"text.layers.{i}"
        shapes.update({
            f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,),
            f"{b}.attn.qkv.weight": (3 * D, D), f"{b}.attn.qkv.bias": (3 * D,),
            f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
            f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,),
            f"{b}.mlp.fc1.weight": (hid, D), f"{b}.mlp.fc1.bias": (hid,),
            f"{b}.mlp.fc2.weight": (D, hid), f"{b}.mlp.fc2.bias": (D,),
        })
    shapes.update({"text.final_norm.weight": (D,), "text.final_norm.bias": (D,)})
    return shapes


def init_params(cfg, seed=0):
    """Fresh parameters (float32): N(0, 0.02) token and position embeddings (GPT-2), Xavier-uniform linear
    weights, zero biases, layer norms weight 1 and bias 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if "norm" in name:
            w = np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            w = np.zeros(shape)
        elif "embed" in name:
            w = 0.02 * rng.standard_normal(shape)
        else:
            a = np.sqrt(6.0 / (shape[0] + shape[1]))
            w = rng.uniform(-a, a, shape)
        params[name] = w.astype(np.float32)
    return params


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def check_ids(ids, cfg):
    """Raise ValueError unless ids is (B, L) with 1 <= L <= cfg.max_len; on the host (NumPy arrays, lists) also that
    its values are whole numbers in 0..vocab_size-1 (a device tensor's values are not read)."""
    shape = tuple(ids.shape) if hasattr(ids, "shape") else np.shape(ids)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"ids must be (B, L) token ids, got shape {shape}")
    if shape[1] > cfg.max_len:
        raise ValueError(f"ids have length {shape[1]}, more than the encoder's max_len={cfg.max_len}")
    if isinstance(ids, (np.ndarray, list, tuple)):
        a = np.asarray(ids)
        if a.dtype.kind not in "iu":
            raise ValueError(f"ids must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= cfg.vocab_size):
            bad = a[(a < 0) | (a >= cfg.vocab_size)][0]
            raise ValueError(f"token id {bad} out of range 0..{cfg.vocab_size - 1}")


def key_mask(ids):
    """ids (B, L) -> (B, L) bool: the positions attention may read. The real (non-PAD) tokens; in a row of PAD only
    (the empty prompt) every position, so its output is a fixed, well-defined null embedding (no 0/0)."""
    real = np.asarray(ids) != PAD_ID
    return real | ~real.any(-1, keepdims=True)


def self_attention(p, prefix, x, bias, heads):
    """Multi-head self-attention whose logits get `bias` (B, 1, 1, L) (0 or MASK_BIAS per key): x (B, L, D) ->
    (B, L, D). The parameters of layers.multi_head_attention: {prefix}.qkv.weight (3D, D) + .bias,
    {prefix}.proj.weight (D, D) + .bias."""
    qkv = linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])          # (B, L, 3D)
    q, k, v = split(qkv, 3)                                                        # 3 x (B, L, D)
    o = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), bias)   # (B, h, L, d)
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


def mlp(p, prefix, x):
    """fc1 -> GELU -> fc2: x (B, L, D) -> (B, L, D)"""
    return linear(gelu(linear(x, p[f"{prefix}.fc1.weight"], p[f"{prefix}.fc1.bias"])),
                  p[f"{prefix}.fc2.weight"], p[f"{prefix}.fc2.bias"])


def layer(p, prefix, h, bias, cfg):
    """One pre-LN transformer layer: h (B, L, D), bias (B, 1, 1, L) -> (B, L, D)"""
    h = h + self_attention(p, f"{prefix}.attn", layer_norm(h, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"]),
                           bias, cfg.heads)
    return h + mlp(p, f"{prefix}.mlp", layer_norm(h, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"]))


def text_encoder(p, ids, cfg):
    """ids (B, L) int, L <= cfg.max_len, PAD_ID-padded -> (h (B, L, width) in the parameters' dtype (float32 from
    init_params), mask (B, L) bool = key_mask(ids): the positions a consumer should attend to). h at a real position
    does not depend on the PAD tokens; h at a PAD position is defined but carries nothing."""
    check_ids(ids, cfg)
    ids = np.asarray(ids, np.int64)
    B, L = ids.shape
    mask = key_mask(ids)                                                            # (B, L)
    tok = p["text.tok_embed.weight"]
    bias = np.where(mask, 0.0, MASK_BIAS).astype(tok.dtype)[:, None, None, :]      # (B, 1, 1, L)
    h = embedding(ids, tok) + p["text.pos_embed.weight"][:L]                        # (B, L, D)
    for i in range(cfg.depth):
        h = layer(p, f"text.layers.{i}", h, bias, cfg)
    return layer_norm(h, p["text.final_norm.weight"], p["text.final_norm.bias"]), mask
