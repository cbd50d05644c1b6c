"""Benchmark: tinygrad training and sampling against NumPy and a minimal PyTorch mirror of the same preset.

    python -m tinygrad_impl.bench                                # tokenfree-xs and uvit-xs, batch 32, 32x32x3
    python -m tinygrad_impl.bench --presets tokenfree-xs uvit-xs unet-xs diffit-xs mobile_unet-xs snapgen_unet-xs --no-sample
    python -m tinygrad_impl.bench --presets tokenfree-xs --steps 20 --sample-steps 50 --sample-batch 64
    python -m tinygrad_impl.bench --presets unet-xs --no-sample --cold-start   # time to the first step, nothing cached
    pip install -e '.[bench]'                                    # PyTorch (CPU build) for the comparison

Training: tinygrad_impl.train's step (make_train_step: AdamW, global-norm clip, EMA, one TinyJit; here on an
unweighted MSE against eps) and the same ingredients in PyTorch eager, on the same weights and batches, each
framework in its own process (its peak RSS is its own). Each warms up in turn, then the two alternate step by step,
so load from other processes hits both alike; the medians and their ratio are printed, each process's peak RSS, and
the time from its start to the end of its first step (tinygrad with its kernel cache, or with --cold-start an empty
one), then a table of all presets.
Sampling: DDIM (eta 0) with NumPy, tinygrad and PyTorch, each in a fresh process (its peak RSS is that
backend's alone) after a short warm-up run (tinygrad compiles its kernels there); NumPy's time is printed as a
ratio to PyTorch's beside its target, within NUMPY_SAMPLING_TARGET (3x) of PyTorch, with pass or FAIL.
The PyTorch models are tinygrad_impl/torch_mirror.py (with torch_unets.py and torch_diffit.py), one for each
architecture. Without PyTorch installed, tinygrad and NumPy are measured alone.
"""
import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import numpy as np

from numpy_ref.configs import PRESETS, get_config, parse_overrides
from numpy_ref.models import get_model as np_model
from numpy_ref.samplers import sample as np_sample
from numpy_ref.schedule import make_schedule
from .torch_mirror import has_mirror, have_torch, torch_forward, torch_forward_numpy, torch_params

DEFAULT_PRESETS = ("tokenfree-xs", "uvit-xs")
NUM_CLASSES = 10   # the benchmark's class-conditional models (CIFAR-10-like)
NUMPY_SAMPLING_TARGET = 3.0   # NumPy sampling should take at most this many times PyTorch's time


# ----------------------------------------------------------------------------
# Training steps: tinygrad (the trainer's own) and PyTorch (the same ingredients)
# ----------------------------------------------------------------------------

def bench_batches(cfg, batch, n, seed=0):
    """n training batches (xt, t, noise, y) as NumPy arrays; timing does not depend on their values."""
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.in_channels, cfg.img_size, cfg.img_size)
    return [(rng.uniform(-1, 1, shape).astype(np.float32), rng.integers(0, 1000, batch).astype(np.float32),
             rng.standard_normal(shape).astype(np.float32),
             rng.integers(0, cfg.num_classes + 1, batch).astype(np.int32) if cfg.num_classes else None)
            for _ in range(n)]


def tinygrad_trainer(cfg, params, lr=3e-4, clip=1.0, ema_decay=0.999, device=None, devices=None):
    """step(batch) -> loss: one step of tinygrad_impl.train (jitted AdamW, clip, EMA), state updated in place;
    with devices, data parallel over them as `train --devices` runs it."""
    from tinygrad import Context, Tensor
    from . import parallel
    from .adamw import new_state
    from .train import make_train_step, step_scalars
    shapes = np_model(cfg.arch).param_shapes(cfg)
    state = new_state(params, shapes, devices[0] if devices else device)
    if devices:
        state = parallel.replicate_state(state, shapes, devices)
    put = (lambda a: parallel.shard_batch(Tensor(a, device=devices[0]), devices)) if devices else \
        (lambda a: Tensor(a, device=device))
    step_fn, k = make_train_step(state, cfg, 0.0, clip), [0]

    def step(b):
        xt, t, noise, y = b
        scalars = step_scalars(k[0], lr, ema_decay, devices[0] if devices else device)
        with Context(TRAINING=1):
            loss, _ = step_fn(put(xt), put(t), put(noise), None if y is None else put(y),
                              *([parallel.replicate(s, devices) for s in scalars] if devices else scalars))
        k[0] += 1
        return float(loss.item())
    return step


def torch_trainer(cfg, params, lr=3e-4, clip=1.0, ema_decay=0.999, device="cpu"):
    """step(batch) -> loss: PyTorch eager with the same ingredients (MSE on eps, AdamW, global-norm clip, EMA).
    The batch is copied to `device` inside the step, as tinygrad's is; loss.item() waits for the device.
    step.params: the trained {name: tensor}."""
    import torch
    from .adamw import ADAM_EPS, BETAS
    from .train import ema_decay_at
    p = torch_params(params, requires_grad=True, device=device)
    ema = {k: v.detach().clone() for k, v in p.items()}
    opt = torch.optim.AdamW(list(p.values()), lr=lr, betas=BETAS, eps=ADAM_EPS, weight_decay=0.0)
    k = [0]

    def step(b):
        xt, t, noise, y = (None if a is None else torch.from_numpy(a).to(device) for a in b)
        loss = (torch_forward(p, xt, t, y, cfg) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.values()), list(p.values()), 1.0 - ema_decay_at(k[0], ema_decay))
        k[0] += 1
        return float(loss.item())
    step.params = p
    return step


def _train_worker(kind, cfg_json, batch, n, seed, device, devices, torch_device, env, launched, conn):
    """Runs in a child process, one per framework (so its peak RSS is its own): builds the trainer (`kind` "torch",
    "tinygrad" or "devices") on init_params(cfg, seed), then runs step i on batch i of bench_batches for every i the
    parent sends, replying (seconds, loss), until None; then replies dict(peak_mib, first_step_s, ...). env: set
    before tinygrad is imported (CACHEDB for a cold kernel cache); launched: time.time() when the parent started it."""
    try:
        os.environ.update(env)
        from numpy_ref.configs import ModelConfig
        cfg = ModelConfig.from_json(cfg_json)
        params, batches = np_model(cfg.arch).init_params(cfg, seed), bench_batches(cfg, batch, n, seed)
        if kind == "torch":
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
            step = torch_trainer(cfg, params, device=torch_device)
        else:
            step = tinygrad_trainer(cfg, params, device=device, devices=devices if kind == "devices" else None)
        first = None
        while (i := conn.recv()) is not None:
            t0 = time.perf_counter()
            loss = step(batches[i])
            secs = time.perf_counter() - t0
            if first is None:
                first = time.time() - launched
            conn.send((secs, loss))
        conn.send(dict(peak_mib=peak_rss_mib(), first_step_s=first, **kernel_cache_info(kind, env)))
    except BaseException as e:   # report, don't hang the parent
        conn.send(dict(error=f"{type(e).__name__}: {e}"))


def kernel_cache_info(kind, env):
    """For a tinygrad worker: the kernel cache it used (tinygrad.helpers.CACHEDB, read at import from env CACHEDB)
    and, where that cache started empty (env names it), how many kernels it compiled into it."""
    if kind == "torch":
        return {}
    from tinygrad.helpers import CACHEDB, db_connection
    out = dict(kernel_cache=CACHEDB)
    if "CACHEDB" in env:
        if CACHEDB != env["CACHEDB"]:
            raise RuntimeError(f"tinygrad used the kernel cache {CACHEDB}, not the empty {env['CACHEDB']}")
        cur = db_connection().cursor()
        tables = [r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'compile%'")]
        out["compiled_kernels"] = sum(cur.execute(f"SELECT COUNT(*) FROM '{t}'").fetchone()[0] for t in tables)
    return out


def cold_cache_env(folder):
    """Environment for a tinygrad process with empty kernel caches under folder: tinygrad's (CACHEDB, an SQLite file
    read when tinygrad is imported) and PoCL's compiled programs (POCL_CACHE_DIR, for the CL device)."""
    return {"CACHEDB": os.path.join(folder, "cache.db"), "POCL_CACHE_DIR": os.path.join(folder, "pocl")}


class TrainingProcess:
    """One _train_worker in its own process; step(i) -> (seconds, loss) of step i, finish() -> its summary."""

    def __init__(self, kind, cfg, batch, n, seed, device=None, devices=None, torch_device="cpu", env=None):
        ctx = mp.get_context("spawn")
        self.kind, (self.conn, child) = kind, ctx.Pipe()
        self.proc = ctx.Process(target=_train_worker, args=(kind, cfg.to_json(), batch, n, seed, device, devices,
                                                            torch_device, env or {}, time.time(), child), daemon=True)
        self.proc.start()
        child.close()

    def _recv(self):
        try:
            r = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            r = dict(error=f"the process ended with exit code {self.proc.exitcode}")
        if isinstance(r, dict) and "error" in r:
            self.close()
            raise RuntimeError(f"training with {self.kind} failed: {r['error']}")
        return r

    def step(self, i):
        self.conn.send(i)
        return self._recv()

    def finish(self):
        self.conn.send(None)
        r = self._recv()
        self.proc.join()
        return r

    def close(self):
        """Stop the process if it still runs (after an error)."""
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def time_training(cfg, batch=32, warmup=3, steps=10, use_torch=True, device=None, seed=0, torch_device="cpu",
                  devices=None, cold_start=False):
    """Each framework's training in its own process: tinygrad, tinygrad over `devices` (if given), PyTorch. Each
    warms up in turn, then their timed steps alternate. cold_start: the tinygrad processes start with empty kernel
    caches. Returns {name: dict(times, losses, warmup_s, median_s, peak_mib, first_step_s[, kernel_cache,
    compiled_kernels])}, first_step_s counted from the process's start to the end of its first step."""
    import tempfile
    kinds = ["tinygrad"] + (["devices"] if devices else []) + (["torch"] if use_torch and has_mirror(cfg) else [])
    n, out, procs = warmup + steps, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-kernel-cache-") as folder:
        try:
            for kind in kinds:
                env = cold_cache_env(os.path.join(folder, kind)) if cold_start and kind != "torch" else {}
                procs[kind] = TrainingProcess(kind, cfg, batch, n, seed, device, devices, torch_device, env)
                warm = [procs[kind].step(i) for i in range(warmup)]
                out[kind] = dict(times=[], losses=[l for _, l in warm], warmup_s=sum(s for s, _ in warm))
            for i in range(warmup, n):
                for kind, proc in procs.items():
                    secs, loss = proc.step(i)
                    out[kind]["times"].append(secs)
                    out[kind]["losses"].append(loss)
            for kind, proc in procs.items():
                out[kind].update(proc.finish())
        finally:
            for proc in procs.values():
                proc.close()
    for r in out.values():
        r["median_s"] = statistics.median(r["times"]) if r["times"] else float("nan")
        r["cold_start"] = cold_start and "compiled_kernels" in r
    return out


# ----------------------------------------------------------------------------
# Sampling: DDIM in each backend, each in its own process (so its peak RSS is its own)
# ----------------------------------------------------------------------------

def _sample_worker(backend, cfg_json, n, steps, guidance, warmup_steps, device, queue):
    """Runs in a child process: a warm-up run, then the timed run. Puts (seconds, peak RSS MiB, images)."""
    try:
        from numpy_ref.configs import ModelConfig
        from numpy_ref.sample import grid_labels
        cfg = ModelConfig.from_json(cfg_json)
        params = np_model(cfg.arch).init_params(cfg, 0)
        params = randomize_output_layers(params, cfg)
        sched, shape, y = make_schedule("linear", 1000), (n, cfg.in_channels, cfg.img_size, cfg.img_size), None
        y = grid_labels(n, cfg.num_classes)
        if backend == "numpy":
            model = np_model(cfg.arch)
            run = lambda k: np_sample(lambda x, t, yy: model.forward(params, x, t, yy, cfg), shape, sched, "ddim", k,
                                      0.0, 0, y, guidance, cfg.null_class)
        elif backend == "torch":
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
            tp = torch_params(params)
            run = lambda k: np_sample(lambda x, t, yy: torch_forward_numpy(tp, x, t, yy, cfg), shape, sched, "ddim",
                                      k, 0.0, 0, y, guidance, cfg.null_class)
            torch.set_grad_enabled(False)
        else:
            from .models import get_model
            from .samplers import sample as tg_sample
            from .weights import to_tensors
            tg, model = to_tensors(params, device), get_model(cfg.arch)
            run = lambda k: tg_sample(lambda x, t, yy: model.forward(tg, x, t, yy, cfg), shape, sched, "ddim", k,
                                      0.0, 0, y, guidance, cfg.null_class, device=device)
        t0 = time.perf_counter()
        run(warmup_steps)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = run(steps)
        secs = time.perf_counter() - t0
        peak = peak_rss_mib()
        queue.put(dict(seconds=secs, warmup_s=warm, peak_mib=peak, images=images))
    except BaseException as e:   # report, don't hang the parent
        queue.put(dict(error=f"{type(e).__name__}: {e}"))


def peak_rss_mib():
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if platform.system() == "Darwin" else 1024)


def randomize_output_layers(params, cfg, seed=1):
    """init_params zeroes adaLN and the output layer (the model would predict eps = 0 and every backend would
    agree trivially); give those small random values so the samples depend on every layer."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for k, v in params.items():
        if not v.any() and v.ndim >= 2:
            out[k] = (rng.standard_normal(v.shape) * 0.02).astype(np.float32)
    return out


def time_sampling(cfg, backends, n=64, steps=50, guidance=1.0, warmup_steps=2, device=None):
    """{backend: dict(samples_per_s, seconds, peak_mib, max_diff_vs_numpy)} for DDIM with `steps` steps."""
    ctx = mp.get_context("spawn")
    results = {}
    for backend in backends:
        q = ctx.Queue()
        proc = ctx.Process(target=_sample_worker, args=(backend, cfg.to_json(), n, steps, guidance, warmup_steps,
                                                        device, q))
        proc.start()
        r = q.get()
        proc.join()
        if "error" in r:
            raise RuntimeError(f"sampling with {backend} failed: {r['error']}")
        r["samples_per_s"] = n / r["seconds"]
        results[backend] = r
    if "numpy" in results:
        for r in results.values():
            r["max_diff_vs_numpy"] = float(np.abs(r["images"] - results["numpy"]["images"]).max())
    return results


# ----------------------------------------------------------------------------
# Matmuls alone: the kernels most of a CPU training step runs in
# ----------------------------------------------------------------------------

# (M, K, N, transpose_a) of tokenfree-xs's step, batch 32: the MLP's two linears over B*L = 2048 tokens, and a weight
# gradient (a reduction over the 2048 rows)
MATMUL_SHAPES = ((2048, 128, 512, False), (2048, 512, 128, False), (512, 2048, 128, True))


def time_matmuls(shapes=MATMUL_SHAPES, device=None, use_torch=True, reps=20, per_call=10):
    """{(M, K, N, transpose_a): {backend: GFLOPS}}: the matmul of layers.linear on a CPU (fast.matmul) and PyTorch's,
    alternately, best of `reps`; tinygrad runs `per_call` matmuls in one TinyJit (launches cost little)"""
    from tinygrad import Device, Tensor, TinyJit
    from .fast import matmul
    dev = device or Device.DEFAULT
    out = {}
    for M, K, N, ta in shapes:
        rng = np.random.default_rng(0)
        a_np = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b_np = rng.standard_normal((K, N)).astype(np.float32)
        a, b = Tensor(a_np[None], device=dev).realize(), Tensor(b_np[None], device=dev).realize()
        jit = TinyJit(lambda: Tensor.realize(*[matmul(a, b, transpose_a=ta) for _ in range(per_call)])[0])
        got = matmul(a, b, transpose_a=ta).numpy()[0]
        want = (a_np.T if ta else a_np) @ b_np
        if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
            raise RuntimeError(f"tinygrad's matmul {M}x{K}x{N} differs from NumPy's by {np.abs(got - want).max():.2e}")
        runs = {"tinygrad": lambda: (jit(), Device[dev].synchronize())}
        if use_torch:
            import torch
            at, bt = torch.from_numpy(a_np), torch.from_numpy(b_np)
            runs["torch"] = lambda: [(at.T if ta else at) @ bt for _ in range(per_call)]
        best = {k: float("inf") for k in runs}
        for _ in range(reps + 3):   # the first rounds compile and capture
            for k, run in runs.items():
                t0 = time.perf_counter()
                run()
                best[k] = min(best[k], (time.perf_counter() - t0) / per_call)
        out[(M, K, N, ta)] = {k: 2 * M * K * N / t / 1e9 for k, t in best.items()}
    return out


# ----------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------

def machine():
    """One line on the machine: CPU model, cores, load, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    from tinygrad import Device
    from tinygrad.helpers import BEAM, NUM_CPU_THREADS
    from importlib.metadata import version
    parts = [cpu, f"{os.cpu_count()} cores", f"load average {os.getloadavg()[0]:.1f}",
             f"tinygrad {version('tinygrad')} DEV={Device.DEFAULT} ({NUM_CPU_THREADS.value} threads"
             + (f", BEAM={BEAM.value})" if BEAM.value else ")")]
    if have_torch():
        import torch
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def run_benchmark(presets=DEFAULT_PRESETS, batch=32, warmup=3, steps=10, sample_batch=64, sample_steps=50,
                  guidance=1.0, img_size=32, use_torch=None, sample=True, device=None, print_fn=print, torch_device="cpu",
                  devices=None, cold_start=False, **overrides):
    """Measure each preset; print a table as it goes, and a summary of the training steps at the end.
    Returns {preset: dict(train=..., sample=..., params=...)}. overrides: ModelConfig fields (tests shrink the model
    with them)."""
    use_torch = have_torch() if use_torch is None else use_torch
    print_fn(f"machine: {machine()}")
    if not use_torch:
        print_fn("PyTorch not installed (pip install -e '.[bench]'): tinygrad and NumPy only")
    results = {}
    for name in presets:
        cfg = get_config(name, img_size=img_size, in_channels=3, num_classes=NUM_CLASSES, **overrides)
        n_params = sum(int(np.prod(s)) for s in np_model(cfg.arch).param_shapes(cfg).values())
        mirrored = use_torch and has_mirror(cfg)
        print_fn(f"\n{name}: {n_params / 1e6:.2f}M params, {img_size}x{img_size}x3, {NUM_CLASSES} classes"
                 + ("" if mirrored or not use_torch else f" (no PyTorch mirror of {cfg.arch} with text conditioning)"))
        train = time_training(cfg, batch, warmup, steps, mirrored, device, torch_device=torch_device, devices=devices,
                              cold_start=cold_start)
        for line in training_lines(train, batch, steps, torch_device, devices):
            print_fn(line)
        res = dict(params=n_params, train=train)
        if sample:
            backends = ["numpy", "tinygrad"] + (["torch"] if mirrored else [])
            smp = time_sampling(cfg, backends, sample_batch, sample_steps, guidance, device=device)
            print_fn(f"  sampling, DDIM {sample_steps} steps, batch {sample_batch}, guidance {guidance}:")
            print_fn(f"    {'backend':<9} {'samples/s':>10} {'s/run':>8} {'peak RSS MiB':>13} {'max|x - numpy|':>15}")
            for b, r in smp.items():
                print_fn(f"    {b:<9} {r['samples_per_s']:>10.2f} {r['seconds']:>8.2f} {r['peak_mib']:>13.0f} "
                         f"{r['max_diff_vs_numpy']:>15.2e}")
            if "torch" in smp:
                print_fn("    " + sampling_ratios(smp))
            res["sample"] = smp
        results[name] = res
    for line in training_summary(results, batch, cold_start):
        print_fn(line)
    return results


def training_lines(train, batch, steps, torch_device="cpu", devices=None):
    """The lines of one preset's training: step times and ratio, each process's peak RSS, time to the first step."""
    tg, pt = train["tinygrad"], train.get("torch")
    line = f"  training step, batch {batch} (median of {steps}): tinygrad {tg['median_s']:.3f} s"
    if pt:
        line += f", PyTorch ({torch_device}) {pt['median_s']:.3f} s, ratio {tg['median_s'] / pt['median_s']:.2f}x"
    lines = [line + f"  [tinygrad warm-up incl. compile {tg['warmup_s']:.1f} s]"]
    if "devices" in train:
        td = train["devices"]
        lines.append(f"  training step over {','.join(devices)}: {td['median_s']:.3f} s, {tg['median_s'] / td['median_s']:.2f}x "
                     f"the speed of one device  [warm-up incl. compile {td['warmup_s']:.1f} s]")
    names = {"tinygrad": "tinygrad", "devices": "tinygrad over devices", "torch": "PyTorch"}
    lines.append("  peak RSS of each training process: "
                 + ", ".join(f"{names[k]} {r['peak_mib']:.0f} MiB" for k, r in train.items()))
    first = [f"{names[k]} {r['first_step_s']:.1f} s" + (f" (cold kernel cache: {r['compiled_kernels']} kernels "
                                                         "compiled)" if r.get("cold_start") else "")
             for k, r in train.items()]
    lines.append("  process start to the end of the first training step: " + ", ".join(first)
                 + ("" if tg.get("cold_start") else " (tinygrad with its warm kernel cache)"))
    return lines


def training_summary(results, batch, cold_start=False):
    """A table of every preset's training: step seconds of both frameworks and their ratio, each process's peak RSS,
    seconds from process start to the end of the first step (PyTorch's columns only where it ran)."""
    with_torch = any("torch" in res["train"] for res in results.values())
    cols = [("tinygrad s", 10), ("PyTorch s", 10), ("ratio", 7), ("tinygrad MiB", 13), ("PyTorch MiB", 12),
            ("tinygrad 1st s", 15), ("PyTorch 1st s", 14)]
    keep = [c for c in cols if with_torch or "tinygrad" in c[0]]
    lines = [f"\ntraining, batch {batch}: median step, peak RSS of each process, process start to first step "
             f"done (tinygrad's kernel cache {'cold' if cold_start else 'warm'})",
             f"{'preset':<18} " + " ".join(f"{name:>{w}}" for name, w in keep)]
    for name, res in results.items():
        tg, pt = res["train"]["tinygrad"], res["train"].get("torch")
        num = lambda r, key, fmt: format(r[key], fmt) if r else "-"
        row = {"tinygrad s": f"{tg['median_s']:.3f}", "PyTorch s": num(pt, "median_s", ".3f"),
               "ratio": f"{tg['median_s'] / pt['median_s']:.2f}x" if pt else "-",
               "tinygrad MiB": f"{tg['peak_mib']:.0f}", "PyTorch MiB": num(pt, "peak_mib", ".0f"),
               "tinygrad 1st s": f"{tg['first_step_s']:.1f}", "PyTorch 1st s": num(pt, "first_step_s", ".1f")}
        lines.append(f"{name:<18} " + " ".join(f"{row[c]:>{w}}" for c, w in keep))
    return lines


def sampling_ratios(smp):
    """One line: the NumPy / PyTorch and tinygrad / PyTorch sampling time ratios, with NumPy's target
    (NUMPY_SAMPLING_TARGET) and whether this run meets it. smp: time_sampling's results with "torch" in them."""
    numpy_ratio = smp["numpy"]["seconds"] / smp["torch"]["seconds"]
    verdict = "pass" if numpy_ratio <= NUMPY_SAMPLING_TARGET else "FAIL"
    return (f"NumPy / PyTorch time: {numpy_ratio:.2f}x (target: within {NUMPY_SAMPLING_TARGET:g}x of PyTorch: "
            f"{verdict}), tinygrad / PyTorch: {smp['tinygrad']['seconds'] / smp['torch']['seconds']:.2f}x")


def set_threads(n):
    """Threads of all backends, set before tinygrad is imported (NUM_CPU_THREADS is read at import);
    the sampling processes inherit the environment, so NumPy's BLAS follows there too."""
    import sys
    if "tinygrad" in sys.modules:
        from tinygrad.helpers import NUM_CPU_THREADS
        NUM_CPU_THREADS.value = n
    for var in ("NUM_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if have_torch():
        import torch
        torch.set_num_threads(n)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tinygrad_impl.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=[p for p in DEFAULT_PRESETS if p in PRESETS], choices=sorted(PRESETS))
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="change fields of every preset's ModelConfig, e.g. --set width=128 (as in train --set)")
    ap.add_argument("--batch", type=int, default=32, help="training batch")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first (tinygrad's JIT needs 2)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps of each framework")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG weight (not 1: two model passes per step)")
    ap.add_argument("--no-sample", action="store_true", help="training only")
    ap.add_argument("--cold-start", action="store_true", help="start tinygrad's training process with empty kernel "
                    "caches (CACHEDB, POCL_CACHE_DIR in a temporary folder): its time to the first step then includes "
                    "compiling every kernel (minutes for the U-Nets on a CPU); default: tinygrad's own, warm cache")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    ap.add_argument("--device", default=None, help="tinygrad device (default: DEV or tinygrad's pick)")
    ap.add_argument("--devices", default=None, help="also time the training step data parallel over these devices, "
                    "e.g. CUDA:0,CUDA:1 (as train --devices)")
    ap.add_argument("--torch-device", default="cpu", help="PyTorch's device for the training step, e.g. cuda (with "
                    "--device CUDA); sampling stays on the CPU, so use it with --no-sample")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every backend (tinygrad NUM_CPU_THREADS, torch, BLAS); default: all cores. "
                         "On a loaded machine 1 is fairer: 2 threads stall at every barrier when a core is taken")
    ap.add_argument("--matmul", action="store_true", help="only the matmul kernels of a tokenfree-xs step, GFLOPS of "
                    "tinygrad (the kernels layers.linear runs on a CPU) and of PyTorch")
    ap.add_argument("--beam", type=int, default=None, help="BEAM-search tinygrad's kernels with this width, training "
                    "and sampling (default: the BEAM environment variable, else none); the first run pays for the "
                    "search (in its warm-up), later runs read it from tinygrad's cache")
    a = ap.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
    except ValueError as e:
        ap.error(str(e))
    if a.threads is not None:
        set_threads(a.threads)
    if a.beam is not None:
        from .beam import use_beam
        try:
            use_beam(a.beam, a.device)
        except ValueError as e:
            ap.error(str(e))
    if a.warmup < 3:
        ap.error("--warmup must be >= 3: TinyJit captures on the second call, so earlier steps include compiling")
    if min(a.batch, a.steps, a.sample_batch, a.sample_steps) < 1:
        ap.error("--batch, --steps, --sample-batch and --sample-steps must be >= 1")
    devices = None
    if a.devices:
        from numpy_ref.cli import CLIError
        from .parallel import check_batch, parse_devices
        try:
            devices = parse_devices(a.devices)
            check_batch(a.batch, devices)
        except CLIError as e:
            ap.error(str(e))
    if a.matmul:
        print(f"machine: {machine()}")
        for (M, K, N, ta), r in time_matmuls(device=a.device, use_torch=have_torch() and not a.no_torch).items():
            line = f"matmul {'A^T' if ta else 'A'} B, {M}x{K} @ {K}x{N}: tinygrad {r['tinygrad']:.0f} GFLOPS"
            if "torch" in r:
                line += f", PyTorch {r['torch']:.0f} GFLOPS, time ratio {r['torch'] / r['tinygrad']:.2f}x"
            print(line)
        return None
    return run_benchmark(a.presets, a.batch, a.warmup, a.steps, a.sample_batch, a.sample_steps, a.guidance,
                         use_torch=False if a.no_torch else None, sample=not a.no_sample, device=a.device,
                         torch_device=a.torch_device, devices=devices, cold_start=a.cold_start, **overrides)


if __name__ == "__main__":
    main()
