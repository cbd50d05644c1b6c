# %% [markdown]
# # 07 Text to image: tokenizer, encoder, cross-attention, prompts
#
# The token-free model of tutorial 02 can be conditioned on a caption instead of a class id
# (DESIGN.md 3.1 item 5, the paper's Figure 2). The prompt goes through three steps, each a small pure function:
#
# 1. the tokenizer (`numpy_ref/text.py`): words -> ids of a fixed vocabulary, PAD-padded; the empty prompt is all PAD,
#    the "null condition" of classifier-free guidance;
# 2. the text encoder (same file): token + position embeddings, a few pre-LN transformer layers -> one vector a token;
# 3. in every block of the model, a cross-attention sub-layer (`numpy_ref/models/text_cond.py`): queries from the image
#    positions, keys and values from the tokens, with its own adaLN gate; the mean of the tokens also joins `c`.
#
# Then a model trained briefly with `python -m tinygrad_impl.train --data captions` draws prompts of the test split
# and prompts of colour-shape pairs it never saw. Writes `07_tokens.png` (what the encoder does with padding),
# `07_cross_attention.png` (which words each image position reads) and `07_prompts.png` (the trained model's images).

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import time

import numpy as np

from numpy_ref import text as T
from numpy_ref.captions import HELD_OUT, MAX_LEN, VOCAB, make_captioned
from numpy_ref.configs import get_config, text_config
from tutorial_utils import FAST, heat, image_table, runs_dir

# full: tokenfree-tiny with its text encoder on 16x16 captions, a few CPU minutes; fast: 8x8, a few steps, a smaller
# encoder, only to prove the code runs
RUN = (dict(size=8, batch=4, steps=6, lr=3e-3, warmup=2, sample_steps=3, set=["depth=1", "text_width=8", "text_depth=1",
                                                                                 "text_heads=2"])
       if FAST else dict(size=16, batch=32, steps=1500, lr=2e-3, warmup=100, sample_steps=25, set=[]))
print("run settings:", RUN)

# %% [markdown]
# ## 1. The tokenizer
#
# A caption of the built-in captioned shapes (`numpy_ref/captions.py`) is lower-cased and split into words; each
# word is its index in the vocabulary (id 0 is PAD), and the row is padded to MAX_LEN tokens. An unknown word is an
# error that lists the vocabulary, not a silent UNK token.

# %%
images, captions, attrs = make_captioned(4, size=16, seed=3, split="test")
print(f"vocabulary: {len(VOCAB)} tokens, id 0 = {VOCAB[0]!r}; prompts are padded to MAX_LEN = {MAX_LEN}")
for c in captions[:3]:
    ids = T.encode(c)
    print(f"  {c!r}\n    -> {T.tokenize(c)}\n    -> {ids.tolist()}\n    -> decode: {T.decode(ids)!r}")
print(f"  the empty prompt -> {T.encode('').tolist()} (all PAD: the null condition)")
try:
    T.encode("a small zebra")
except ValueError as e:
    print(f"  'a small zebra' -> ValueError: {str(e)[:90]}...")

# %% [markdown]
# ## 2. The text encoder
#
# `text_encoder(p, ids, cfg)` returns one vector per token, (B, L, D_txt), and a mask of the tokens a reader should
# attend to. Attention inside the encoder skips PAD keys (an additive -1e9 bias), so the vector of a real word does
# not depend on how much padding follows it: the same prompt padded to 16 or to 12 tokens gives the same vectors.

# %%
tcfg = T.TextConfig(width=32, depth=2, heads=4)
tp = T.init_params(tcfg, seed=0)
ids16 = T.encode_batch(captions[:2] + [""], max_len=16)                    # (3, 16)
ids12 = T.encode_batch(captions[:2] + [""], max_len=12)                    # (3, 12)
h16, mask16 = T.text_encoder(tp, ids16, tcfg)
h12, _ = T.text_encoder(tp, ids12, tcfg)
n_words = (ids16[0] != 0).sum()
pad_diff = float(np.abs(h16[0, :n_words] - h12[0, :n_words]).max())
print(f"encoder: {sum(v.size for v in tp.values()):,} parameters; ids {ids16.shape} -> h {h16.shape}, mask {mask16.shape}")
print(f"prompt 0 has {n_words} words; its word vectors padded to 16 vs 12 tokens differ by at most {pad_diff:.2e}")
print(f"mask of the empty prompt: all {mask16[2].sum()} positions (it attends to its own PADs: a fixed null vector)")
# prompt 0's vectors as pictures: a row per token (top to bottom), a column per feature; the 12-token version shown
# padded to 16 rows (black): its word rows are those of the 16-token one
lo, hi = float(h16[0].min()), float(h16[0].max())
shorter = np.concatenate([h12[0], np.full((4, tcfg.width), lo)])                 # (16, D)
path = image_table("07_tokens.png", [("padded to 16", heat(h16[0][None], lo, hi)),
                                     ("padded to 12", heat(shorter[None], lo, hi))], upscale=8,
                   title="prompt 0 encoded: a row per token, a column per feature")
print(f"wrote {path}")

# %% [markdown]
# ## 3. Cross-attention in the token-free block
#
# A text model (`cfg.text_vocab > 0`) gets token ids as its `y`. `text_cond.encode` runs the encoder; `c` gets
# `text_pool(mean of the real tokens)` where a class model adds its label embedding; and every block, after its
# self-attention, does
#
#     x = x + g3 * CrossAttn(modulate(LN(x), shift3, scale3), txt)
#
# with (shift3, scale3, g3) from its own adaLN projection of `c`. The gate starts at zero (adaLN-Zero), so a fresh
# model ignores the prompt there; as in tutorial 02 we give the adaLN biases random values to wake the blocks up.
# Below: for one image and one prompt, the attention weight every position of the (H/S, W/S) map gives to each token
# of block 0 -- the PAD tokens get exactly zero.

# %%
from numpy_ref.layers import layer_norm, linear, modulate, multi_head_attention, silu, softmax, split, split_heads
from numpy_ref.models import text_cond, tokenfree

SIZE = 16
cfg = get_config("tokenfree-tiny", img_size=SIZE, num_classes=0, text_vocab=len(VOCAB), text_len=MAX_LEN)
print(cfg.arch, f"width {cfg.width}, depth {cfg.depth}, heads {cfg.heads}, stride {cfg.stride}; text encoder",
      text_config(cfg))
p = tokenfree.init_params(cfg, seed=0)
rng = np.random.default_rng(0)
for name in p:   # every zero-initialised tensor (adaLN, the final linear) random, as after some training
    if ".ada.bias" in name:
        p[name] = rng.normal(0.0, 0.5, p[name].shape).astype(np.float32)
    elif name.endswith(".weight") and not p[name].any():
        p[name] = rng.normal(0.0, 0.3 / np.sqrt(p[name].shape[-1]), p[name].shape).astype(np.float32)
print("the block's cross-attention parameters:")
for name in sorted(k for k in p if k.startswith("blocks.0.cross")):
    print(f"  {name:28s} {p[name].shape}")

x = images[:1]                                                             # (1, 3, 16, 16): captions[0]
prompt_ids = T.encode_batch([captions[0]])                                 # (1, 16)
t = np.array([500])
txt = text_cond.encode(p, prompt_ids, cfg, 1)                              # Text(h (1, 16, Dt), bias, pooled)
c = tokenfree.conditioning(p, t, prompt_ids, cfg, np.float32, txt)         # (1, D)
h = tokenfree.stem(p, x, cfg)                                              # (1, D, H/S, W/S)
hw = h.shape[2:]
h = h.reshape(1, cfg.width, -1).transpose(0, 2, 1)                         # (1, L, D)
shift1, scale1, gate1, *_ = split(linear(silu(c), p["blocks.0.ada.weight"], p["blocks.0.ada.bias"]), 6)
h = h + gate1[:, None] * multi_head_attention(modulate(layer_norm(h), shift1, scale1), p, "blocks.0.attn", cfg.heads)
shift, scale, gate = split(linear(silu(c), p["blocks.0.cross.ada.weight"], p["blocks.0.cross.ada.bias"]), 3)
q_in = modulate(layer_norm(h), shift, scale)                               # (1, L, D)
q = split_heads(linear(q_in, p["blocks.0.cross.q.weight"], p["blocks.0.cross.q.bias"]), cfg.heads)     # (1, h, L, d)
k, _ = split(linear(txt.h, p["blocks.0.cross.kv.weight"], p["blocks.0.cross.kv.bias"]), 2)             # (1, Lt, D)
k = split_heads(k, cfg.heads)                                              # (1, h, Lt, d)
weights = softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + txt.bias)                     # (1, h, L, Lt)
attn = weights.mean(1)[0]                                                  # (L, Lt): mean over the heads
words = T.tokenize(captions[0])
pad_attention = float(attn[:, len(words):].max())
print(f"cross-attention weights {weights.shape} (B, heads, L image positions, Lt tokens); each row sums to 1; "
      f"largest weight on a PAD token: {pad_attention:.1e}")
maps = attn.T.reshape(MAX_LEN, *hw)[:len(words) + 1]                       # (words + 1 PAD, H/S, W/S)
maps = heat(maps, 0, maps.max())                                           # (words + 1, 3, H/S, W/S)
up = lambda a: a.repeat(SIZE // hw[0], 2).repeat(SIZE // hw[1], 3)        # noqa: E731  (map -> image size)
path = image_table("07_cross_attention.png", [("block 0", np.concatenate([x, up(maps)]))],
                   col_titles=["image"] + words + ["<pad>"], upscale=4,
                   title=f"the weight each position gives to each token of {captions[0]!r}")
print(f"wrote {path}")

# where the prompt enters: two prompts, the same x_t; then with the cross-attention gate and text_pool at zero
x_t = rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
two = T.encode_batch(["a small red circle at the top left", "a large blue square at the bottom right"])
eps = tokenfree.forward(p, x_t, np.array([500, 500]), two, cfg)
prompt_effect = float(np.abs(eps[0] - tokenfree.forward(p, x_t[:1], np.array([500]), two[1:], cfg)[0]).max())
closed = dict(p)
for name in p:
    if ".cross.ada." in name or name.startswith("text_pool."):
        closed[name] = np.zeros_like(p[name])
eps_a = tokenfree.forward(closed, x_t[:1], np.array([500]), two[:1], cfg)
eps_b = tokenfree.forward(closed, x_t[:1], np.array([500]), two[1:], cfg)
closed_effect = float(np.abs(eps_a - eps_b).max())
print(f"another prompt, the same x_t: eps changes by up to {prompt_effect:.3f}; with every cross-attention adaLN and "
      f"text_pool zeroed: {closed_effect:.1e} (the prompt has no other way in)")

# %% [markdown]
# ## 4. A briefly trained text model
#
# The project's trainer on the captions (`--data captions` makes `--cond text` the default): the same loop as
# tutorial 04, with each batch's captions encoded to ids and about 10% of them dropped to the empty prompt, which
# teaches the unconditional model that classifier-free guidance needs. Running this again continues the run.

# %%
from numpy_ref.sample import schedule_of
from tinygrad_impl import train
from tinygrad_impl.sample import image_batches
from tinygrad_impl.weights import load_for_sampling

out = runs_dir(f"07_captions_tokenfree-tiny_{RUN['size']}")
ckpt = os.path.join(out, "ckpt.safetensors")
flags = (["--out", out, "--resume", "--steps", str(RUN["steps"])] if os.path.exists(ckpt) else
         ["--data", "captions", "--preset", "tokenfree-tiny", "--size", str(RUN["size"]), "--batch", str(RUN["batch"]),
          "--steps", str(RUN["steps"]), "--lr", str(RUN["lr"]), "--warmup", str(RUN["warmup"]), "--out", out,
          *(["--set", *RUN["set"]] if RUN["set"] else [])])
# the trainer's final grid: 4 images a batch, DDIM, guidance 3, as the grid below (whose kernels it compiles first)
flags += ["--sample-every", "0", "--ckpt-every", "250", "--sample-n", "4", "--sample-steps", str(RUN["sample_steps"]),
          "--guidance", "3"]
print("python -m tinygrad_impl.train " + " ".join(flags))
t0 = time.perf_counter()
report_every = max(1, RUN["steps"] // 10)


def progress(step, loss):
    if step % report_every == 0:
        print(f"  step {step:5d}  loss {loss:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


summary = train.train(train.build_parser().parse_args(flags), callback=progress)
print(f"trained to step {summary['step']} in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## 5. Prompts
#
# Row r draws prompt r, four seeds each, DDIM with guidance 3 (the sampler's `y` is now token ids; guidance mixes the
# prompt's eps with the empty prompt's). The last two rows name colour-shape pairs held out of training
# (`captions.HELD_OUT`): can the model compose a colour and a shape it saw only apart?

# %%
held = [f"a large {c} {s} at the center" for c, s in HELD_OUT[:2]]
prompts = ["a large red circle at the center", "a small yellow square at the top left",
           "a large white triangle at the bottom right", "a big blue square left of a little green circle"] + held
params, mcfg, meta, which = load_for_sampling(ckpt)
per_row, n = 4, 4 * len(prompts)
y = np.repeat(T.encode_batch(prompts, max_len=mcfg.text_len), per_row, 0)   # (n, text_len): image i draws prompt i // 4
t0 = time.perf_counter()
images = np.concatenate([b for _, b in image_batches(params, mcfg, schedule_of(meta), n, y, "ddim",
                                                     RUN["sample_steps"], 0.0, 0, 3.0, batch=per_row)])
print(f"{n} images in {time.perf_counter() - t0:.0f} s ({which} weights, step {meta['step']})")
path = image_table("07_prompts.png", [(pr if len(pr) < 40 else pr[:37] + "...", images[i * per_row:(i + 1) * per_row])
                                      for i, pr in enumerate(prompts)],
                   upscale=max(1, 64 // mcfg.img_size), title=f"{which} samples after {meta['step']} steps, CFG 3; "
                   f"last {len(held)} rows: held-out pairs")
print(f"wrote {path}")

# %% [markdown]
# ## What to look at
#
# - `07_tokens.png`: the rows of the real words are the same whatever the padding: PAD keys are masked.
# - `07_cross_attention.png`: each word's weight over the image positions; the `<pad>` column is black (weight 0).
# - `07_prompts.png`: after the full run the rows take their prompt's colour and roughly its size and place; shapes
#   come last (as in tutorial 04). Measure it rather than squint: train the attribute classifier once, then judge
#   samples of the test and held-out captions per attribute, at several guidance weights:
#
#       python -m tinygrad_impl.train_attributes --size 16
#       python -m tinygrad_impl.evaluate_text --ckpt tutorials/out/07_captions_tokenfree-tiny_16/ckpt.safetensors \
#           --n 200 --guidance 1 3 5 --split test heldout
#
#   (In fast mode the samples are noise: a few steps teach nothing.)

# %%
print("\nlook at: 07_tokens.png, 07_cross_attention.png, 07_prompts.png")
print(f"KEY pad_diff={pad_diff:.3e} pad_attention={pad_attention:.3e} prompt_effect={prompt_effect:.4f} "
      f"closed_effect={closed_effect:.3e} step={summary['step']} loss={summary['loss']:.4f}")
