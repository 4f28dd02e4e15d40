"""Our engine against PyTorch eager: training and inference throughput, peak memory.

Each (engine, architecture, mode) runs in its own subprocess, so peak memory belongs to
that run alone and our engine's process never imports torch. On the CPU (the default):
same thread count for both (BLAS and torch), memory is ru_maxrss minus what the process
held before the timed loop; our engine runs with the heap setting the command line uses
(``nn.reuse_freed_memory``), and torch runs both with and without it, the faster of the two
being the baseline. With ``--device gpu``: our engine on CuPy against PyTorch
CUDA, each step timed to a device synchronisation, memory is the GPU memory each
framework's pool held at its peak (CuPy's pool total, torch's max_memory_reserved).

    python benchmarks/engine_vs_torch.py [--threads 2] [--batch 64] [--steps 8] [--device gpu]

The last line reads ``train_ratio=<ours/torch> infer_ratio=<ours/torch>`` for seed-cnn.
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


def run_one(engine: str, arch: str, mode: str, batch: int, steps: int, threads: int, device: str = "cpu") -> dict:
    import numpy as np

    from deepfake_detector import nn
    from deepfake_detector.models import create_model

    model = create_model(arch, seed=0)
    S = model.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, S, S)).astype(np.float32)
    y = rng.integers(0, 2, batch)
    sync, gpu_mb = (lambda: None), None
    if device == "cpu" and engine in ("ours", "torch+reuse"):
        nn.reuse_freed_memory()  # what the command line does; torch is measured with and without it
    if engine == "ours":
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
    step()  # warm-up: allocations, caches, kernel compilation
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    work = peak_mb() - base if gpu_mb is None else gpu_mb()
    return {"images_per_s": batch / statistics.median(times), "peak_mb": peak_mb(), "work_mb": work}


def child(args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", args.child_spec, "--batch", str(args.batch),
           "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--archs", default="seed-cnn,df-cnn")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: our engine on CuPy against PyTorch CUDA")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    print(cpu_line(), flush=True)  # every speed figure names its CPU
    if args.child:
        engine, arch, mode = args.child.split(":")
        print(json.dumps(run_one(engine, arch, mode, args.batch, args.steps, args.threads, args.device)))
        return
    where = "GPU (CuPy vs PyTorch CUDA)" if args.device == "gpu" else f"{args.threads} threads"
    print(f"batch {args.batch}, 128x128, {where}, median of {args.steps} steps")
    # on the CPU torch runs twice: as it comes, and with the heap setting our engine uses
    # (nn.reuse_freed_memory); the faster of the two is the baseline
    engines = ("ours", "torch", "torch+reuse") if args.device == "cpu" else ("ours", "torch")
    print(f"{'arch':10} {'mode':6} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} "
          f"{'ours MB':>8} {'torch MB':>9}" + ("   torch as it comes / with heap reuse" if len(engines) > 2 else ""))
    ratios = {}
    for arch in args.archs.split(","):
        for mode in ("train", "infer"):
            res = {}
            for engine in engines:
                args.child_spec = f"{engine}:{arch}:{mode}"
                res[engine] = child(args)
            best = max(engines[1:], key=lambda e: res[e]["images_per_s"])
            r = res["ours"]["images_per_s"] / res[best]["images_per_s"]
            ratios[(arch, mode)] = r
            both = (f"   {res['torch']['images_per_s']:.1f} / {res['torch+reuse']['images_per_s']:.1f}"
                    if len(engines) > 2 else "")
            print(f"{arch:10} {mode:6} {res['ours']['images_per_s']:11.1f} {res[best]['images_per_s']:12.1f} "
                  f"{r:6.2f} {res['ours']['work_mb']:8.0f} {res[best]['work_mb']:9.0f}{both}")
    print("(MB: GPU memory held by each framework's pool at its peak)" if args.device == "gpu" else
          "(MB: peak resident memory of the timed loop beyond what the process held before it)")
    print(f"train_ratio={ratios[('seed-cnn', 'train')]:.2f} infer_ratio={ratios[('seed-cnn', 'infer')]:.2f}")


if __name__ == "__main__":
    main()
