"""Our engine against PyTorch eager: training and inference throughput, peak memory, where
the time goes, and what compiling the fused kernels costs.

Our engine runs with each kernel set (``fused``: the Numba kernels of ``nn.fused``, the
default where Numba is installed; ``numpy``: the reference), PyTorch eager beside them. Each
(engine, architecture, mode) runs in its own subprocess, so peak memory belongs to that run
alone and our engine's process never imports torch; the engines are interleaved, one run of
each per round in a rotating order, and each figure is the median over rounds (these
machines are noisy). On the CPU (the default): same thread count for both (BLAS, Numba and
torch), memory is ru_maxrss minus what the process held before the timed loop; our engine runs
with the heap setting the command line uses (``nn.reuse_freed_memory``), and torch runs both
with and without it, the faster of the two being the baseline. With ``--device gpu``: our
engine on CuPy against PyTorch CUDA, each step timed to a device synchronisation, memory is
the GPU memory each framework's pool held at its peak (CuPy's pool total, torch's
max_memory_reserved).

``--profile`` adds, per architecture, a training step of our engine split by layer type
(forward and backward, fused against numpy) and the share of the step that is GEMM (the
same matrix products replayed alone, Winograd's where the fused Conv2D uses it): how close
the engine is to the BLAS limit.

    python benchmarks/engine_vs_torch.py [--threads 2] [--batch 64] [--steps 8] [--rounds 3] [--profile]
    python benchmarks/engine_vs_torch.py --device gpu

The first line names the CPU; the last reads
``train_ratio=<fused/torch> infer_ratio=<fused/torch>`` for seed-cnn (``numpy/torch`` where
Numba is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from deepfake_detector.cpu import cpu_line


def blas_line() -> str:
    """The BLAS our engine's GEMMs run on and the kernels it picked for this CPU. OpenBLAS
    chooses them by the CPU unless ``OPENBLAS_CORETYPE`` names others: on an AVX-512 CPU,
    Haswell (AVX2) kernels run its GEMMs at about half speed, while torch's oneDNN is unaffected."""
    import numpy  # noqa: F401 - loads the BLAS
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "BLAS: unknown"
    i = libs[0]
    kernels = f", {i['architecture']} kernels" if i.get("architecture") else ""
    forced = f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})" if os.environ.get("OPENBLAS_CORETYPE") else ""
    return f"BLAS: {i.get('internal_api')} {i.get('version')}{kernels}{forced}"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_twin(model):
    """The same network in torch, with our weights copied in (same names, same layouts)."""
    import torch
    from torch import nn as tnn

    from deepfake_detector import nn

    mods = []
    for layer in model.net.layers:
        if isinstance(layer, nn.Conv2D):
            mods.append(tnn.Conv2d(layer.in_channels, layer.out_channels, (layer.kh, layer.kw),
                                   layer.stride, layer.padding, bias="bias" in layer.params))
        elif isinstance(layer, nn.BatchNorm2D):
            mods.append(tnn.BatchNorm2d(layer.num_features))
        elif isinstance(layer, nn.ReLU):
            mods.append(tnn.ReLU(inplace=True))
        elif isinstance(layer, nn.MaxPool2D):
            mods.append(tnn.MaxPool2d(layer.k, layer.s, layer.p))
        elif isinstance(layer, nn.GlobalAvgPool2D):
            mods.append(tnn.AdaptiveAvgPool2d(1))
            mods.append(tnn.Flatten())
        elif isinstance(layer, nn.Flatten):
            mods.append(tnn.Flatten())
        elif isinstance(layer, nn.Dropout):
            mods.append(tnn.Dropout(layer.p))
        elif isinstance(layer, nn.Dense):
            mods.append(tnn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params))
        else:
            raise TypeError(type(layer))
    net = tnn.Sequential(*mods)
    ours = [p for _, p in model.parameters().items()]
    with torch.no_grad():
        for tp, p in zip(net.parameters(), ours):
            tp.copy_(torch.from_numpy(p))
    return net


OURS = ("fused", "numpy")  # our engine with each kernel set
TORCHES = ("torch", "torch+reuse")


def run_one(engine: str, arch: str, mode: str, batch: int, steps: int, threads: int, device: str = "cpu",
            profile: bool = False) -> dict:
    import numpy as np

    from deepfake_detector import nn
    from deepfake_detector.models import create_model

    model = create_model(arch, seed=0)
    S = model.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, S, S)).astype(np.float32)
    y = rng.integers(0, 2, batch)
    sync, gpu_mb = (lambda: None), None
    if device == "cpu" and engine != "torch":
        nn.reuse_freed_memory()  # what the command line does; torch is measured with and without it
    if engine in OURS:
        nn.use_kernels(engine)
        if device == "gpu":
            import cupy

            model.to("gpu")
            x, y = cupy.asarray(x), cupy.asarray(y)
            sync = cupy.cuda.Device().synchronize
            gpu_mb = lambda: cupy.get_default_memory_pool().total_bytes() / 2**20  # noqa: E731
        opt = nn.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            if mode == "train":
                model.zero_grad()
                _, dz = nn.softmax_cross_entropy(model.forward(x, training=True), y)
                model.backward(dz)
                opt.step(model.grads())
            else:
                with nn.no_grad():
                    model.forward(x)
    else:  # "torch" or "torch+reuse"
        import torch

        torch.set_num_threads(threads)
        net = torch_twin(model)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        if device == "gpu":
            net, tx, ty = net.cuda(), tx.cuda(), ty.cuda()
            sync = torch.cuda.synchronize
            gpu_mb = lambda: torch.cuda.max_memory_reserved() / 2**20  # noqa: E731
        topt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def step():
            if mode == "train":
                net.train()
                topt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(tx), ty).backward()
                topt.step()
            else:
                net.eval()
                with torch.inference_mode():
                    net(tx)

    base = peak_mb()  # model, data and libraries; the loop's own memory is what comes after
    step()  # warm-up: allocations, caches, kernel compilation (or loading from Numba's cache)
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    work = peak_mb() - base if gpu_mb is None else gpu_mb()
    out = {"images_per_s": batch / statistics.median(times), "step_ms": 1e3 * statistics.median(times),
           "peak_mb": peak_mb(), "work_mb": work}
    if profile and engine in OURS and device == "cpu":
        out["profile"] = profile_step(model, step, steps, chunked=engine == "fused")
    return out


def profile_step(model, step, steps: int, chunked: bool = False) -> dict:
    """Milliseconds per step spent in each layer type's forward and backward (median over
    ``steps``), and in the GEMMs alone: every matrix product of the convolutions and dense
    layers replayed on arrays of the same shapes. ``chunked``: the convolutions' products as
    the fused Conv2D runs them (per image, chunk by chunk, one single-threaded GEMM a core)."""
    import numpy as np

    from deepfake_detector import nn

    layers = [layer for _, layer in nn.flat_layers(model.net)]
    spent: dict = {}
    gemms: dict = {}  # (m, k, n) -> count per step

    def timed(layer, name, fn):
        key = f"{type(layer).__name__}.{name}"

        def run(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            spent.setdefault(key, []).append(time.perf_counter() - t)
            return out
        return run

    for layer in layers:
        layer.forward = timed(layer, "forward", layer.forward)
        layer.backward = timed(layer, "backward", layer.backward)
    samples = []
    for _ in range(steps):
        spent.clear()
        step()
        samples.append({k: sum(v) for k, v in spent.items()})
    per_type = {k: 1e3 * statistics.median(s.get(k, 0.0) for s in samples) for k in samples[0]}
    x_shapes = {}

    def record(layer):
        fwd = layer.forward

        def run(x, *a, **kw):
            x_shapes[id(layer)] = x.shape
            return fwd(x, *a, **kw)
        layer.forward = run

    for layer in layers:
        record(layer)
    convs = []  # (N, C_out, K, L) of each convolution, when ``chunked``
    step()
    for layer in layers:
        shp = x_shapes.get(id(layer))
        if isinstance(layer, nn.Conv2D) and shp is not None:
            N, C, H, W = shp
            Ho = (H + 2 * layer.padding - layer.kh) // layer.stride + 1
            Wo = (W + 2 * layer.padding - layer.kw) // layer.stride + 1
            K, M, P = C * layer.kh * layer.kw, layer.out_channels, N * Ho * Wo
            if chunked:
                convs.append((N, M, C, H, W, layer.padding) if layer.uses_winograd() else (N, M, K, Ho * Wo))
                continue
            for dims in ((M, K, P), (K, P, M), (K, M, P)):  # forward, weight gradient, input gradient
                gemms[dims] = gemms.get(dims, 0) + 1
        elif isinstance(layer, nn.Dense) and shp is not None:
            N, I, O = shp[0], layer.in_features, layer.out_features
            for dims in ((N, I, O), (O, N, I), (N, O, I)):
                gemms[dims] = gemms.get(dims, 0) + 1
    rng = np.random.default_rng(0)
    gemm_ms = 0.0
    for (m, k, n), count in gemms.items():
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a @ b
        ts = []
        for _ in range(max(3, steps // 2)):
            t = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t)
        gemm_ms += 1e3 * statistics.median(ts) * count
    from deepfake_detector.nn import fused

    for conv in convs:
        if len(conv) == 6:  # Winograd F(2x2, 3x3): 16 products per chunk in each direction
            gemm_ms += _winograd_products_ms(rng, steps, *conv)
            continue
        N, M, K, L = conv
        parts = fused.im2col.chunks(N, K * L * 4)
        w, wt = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, M)).astype(np.float32)
        cols = rng.standard_normal((N, K, L)).astype(np.float32)
        g = rng.standard_normal((N, M, L)).astype(np.float32)

        def products(c, w=w, wt=wt, cols=cols, g=g):
            np.matmul(w, cols[c])
            np.matmul(cols[c], g[c].transpose(0, 2, 1))
            np.matmul(wt, g[c])

        gemm_ms += _over_chunks_ms(products, parts, steps)
    return {"per_type_ms": per_type, "gemm_ms": gemm_ms}


def _over_chunks_ms(products, parts, steps) -> float:
    """Median milliseconds of ``products`` over the chunks ``parts``, spread as the fused Conv2D
    spreads them (one single-threaded BLAS a core), after one untimed run."""
    from deepfake_detector.nn import fused

    fused._compile.over_chunks(products, parts)
    ts = []
    for _ in range(max(3, steps // 2)):
        t = time.perf_counter()
        fused._compile.over_chunks(products, parts)
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def _winograd_products_ms(rng, steps, N, M, C, H, W, p) -> float:
    """Milliseconds of a Winograd convolution's products (forward, weight and input gradient),
    replayed as the fused Conv2D runs them: chunk by chunk, one single-threaded BLAS a core."""
    import numpy as np

    from deepfake_detector.nn import fused

    _, _, TH, TW = fused.winograd.tiles(H, W, p)
    parts = fused.im2col.chunks(N, 16 * C * TH * TW * 4)
    U, Ut = rng.standard_normal((16, M, C)).astype(np.float32), rng.standard_normal((16, C, M)).astype(np.float32)
    V = [rng.standard_normal((16, C, (c.stop - c.start) * TH * TW)).astype(np.float32) for c in parts]
    dM = [rng.standard_normal((16, M, v.shape[2])).astype(np.float32) for v in V]
    index = {c.start: i for i, c in enumerate(parts)}

    def products(c):
        i = index[c.start]
        np.matmul(U, V[i])
        np.matmul(dM[i], V[i].transpose(0, 2, 1))
        np.matmul(Ut, dM[i])

    return _over_chunks_ms(products, parts, steps)


def compile_seconds() -> dict:
    """Seconds to compile every fused kernel with an empty Numba cache, and to load them from
    the cache in a second process (each in a fresh interpreter)."""
    import tempfile

    code = ("import time; t = time.perf_counter(); from deepfake_detector.nn import fused; "
            "fused.warm_up(); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp)
        out = {}
        for name in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if r.returncode:
                return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
            out[name] = float(r.stdout.strip().splitlines()[-1])
    return out


def child(args, spec: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads),
               DEEPFAKE_DETECTOR_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", spec, "--batch", str(args.batch),
           "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    if args.profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs of every engine; figures are medians")
    ap.add_argument("--archs", default="seed-cnn,df-cnn")
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: our engine on CuPy against PyTorch CUDA")
    ap.add_argument("--profile", action="store_true", help="split our training step by layer type and GEMM")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    print(cpu_line(), flush=True)  # every speed figure names its CPU
    if args.child:
        engine, arch, mode = args.child.split(":")
        print(json.dumps(run_one(engine, arch, mode, args.batch, args.steps, args.threads, args.device,
                                 args.profile and mode == "train")))
        return
    print(blas_line(), flush=True)  # and the BLAS kernels our GEMMs run on
    ours = OURS if (args.device == "cpu" and numba_available()) else ("numpy",)
    if args.device == "gpu":
        ours = ("numpy",)  # CuPy arrays take the reference path (the engine's CuPy code)
    if "fused" in ours:
        c = compile_seconds()
        print("fused kernels: " + (f"compiled in {c['cold']:.1f} s with an empty cache, loaded from the cache "
                                   f"in {c['cached']:.1f} s" if "cold" in c else f"compile failed: {c['error']}"),
              flush=True)
    where = "GPU (CuPy vs PyTorch CUDA)" if args.device == "gpu" else f"{args.threads} threads"
    print(f"batch {args.batch}, {where}, median of {args.steps} steps per run, median of {args.rounds} "
          f"interleaved rounds", flush=True)
    torches = TORCHES if args.device == "cpu" else ("torch",)
    engines = (*ours, *torches)
    head = " ".join(f"{e + ' img/s':>13}" for e in engines)
    print(f"{'arch':9} {'mode':5} {head} {'ratio':>6}" + "".join(f" {e + ' MB':>9}" for e in (*ours, "torch")),
          flush=True)
    ratios, profiles = {}, {}
    for arch in args.archs.split(","):
        for mode in args.modes.split(","):
            runs: dict = {e: [] for e in engines}
            for r in range(args.rounds):
                order = engines[r % len(engines):] + engines[:r % len(engines)]  # rotate who goes first
                for engine in order:
                    runs[engine].append(child(args, f"{engine}:{arch}:{mode}"))
            ips = {e: statistics.median(x["images_per_s"] for x in runs[e]) for e in engines}
            mb = {e: statistics.median(x["work_mb"] for x in runs[e]) for e in engines}
            best_torch = max(torches, key=lambda e: ips[e])
            r = ips[ours[0]] / ips[best_torch]
            ratios[(arch, mode)] = r
            cells = " ".join(f"{ips[e]:13.1f}" for e in engines)
            print(f"{arch:9} {mode:5} {cells} {r:6.2f}" + "".join(f" {mb[e]:9.0f}" for e in ours)
                  + f" {mb[best_torch]:9.0f}", flush=True)
            if mode == "train" and args.profile:
                profiles[arch] = {e: runs[e][len(runs[e]) // 2].get("profile") for e in ours}
                profiles[arch]["step_ms"] = {e: statistics.median(x["step_ms"] for x in runs[e]) for e in engines}
    print("(ratio: " + ours[0] + " against the faster torch; MB: " +
          ("GPU memory held by each framework's pool at its peak)" if args.device == "gpu" else
           "peak resident memory of the timed loop beyond what the process held before it)"))
    for arch, prof in profiles.items():
        print(f"\nwhere a {arch} training step goes (ms per step, batch {args.batch}; each layer timed on its own, "
              "so BatchNorm and the ReLU after it run unfused here):")
        types = sorted({k for e in ours if prof.get(e) for k in prof[e]["per_type_ms"]})
        print(f"{'layer pass':28}" + "".join(f" {e:>9}" for e in ours))
        for k in types:
            print(f"{k:28}" + "".join(f" {prof[e]['per_type_ms'].get(k, 0.0):9.1f}" for e in ours if prof.get(e)))
        for e in ours:
            if prof.get(e):
                step_ms, gemm = prof["step_ms"][e], prof[e]["gemm_ms"]
                print(f"{e}: step {step_ms:.0f} ms, GEMM alone {gemm:.0f} ms = {100 * gemm / step_ms:.0f} % of the "
                      f"step; everything else {step_ms - gemm:.0f} ms")
        print(f"torch step: {min(prof['step_ms'][t] for t in torches):.0f} ms")
    tag = ours[0]
    print(f"train_ratio={ratios.get(('seed-cnn', 'train'), float('nan')):.2f} "
          f"infer_ratio={ratios.get(('seed-cnn', 'infer'), float('nan')):.2f} ({tag}/torch)")


if __name__ == "__main__":
    main()
