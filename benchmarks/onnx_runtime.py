"""Inference speed: our NumPy engine vs onnxruntime vs PyTorch eager, same network, same threads.

The model is exported to a temporary .onnx file, loaded with ``OnnxModel`` and, where torch
is importable, rebuilt in torch with the weights and BN statistics copied in (the twin of
``benchmarks/engine_vs_torch.py``). All three run the same normalised float32 input, in one
process with the same thread count (BLAS pool, onnxruntime intra-op threads, torch threads),
taking turns run by run, so load from other processes falls on all of them alike. Timings are
medians after warm-up; the logits are checked against the NumPy engine's.

    python benchmarks/onnx_runtime.py [--arch df-cnn | --model CKPT.npz] [--threads 2] [--runs 10]

The last two lines read ``onnx_vs_numpy_b1=.. onnx_vs_numpy_b32=..`` and
``onnx_vs_torch_b1=.. onnx_vs_torch_b32=..`` (onnxruntime images/s over the other's).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

from deepfake_detector.cpu import cpu_line

HERE = os.path.dirname(os.path.abspath(__file__))


def _drop_script_dir():
    """Run as a script, this file's folder is sys.path[0], where this file would shadow `import onnx`."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    cached = sys.modules.get("onnx")
    if cached is not None and os.path.dirname(os.path.abspath(getattr(cached, "__file__", "") or "")) == HERE:
        del sys.modules["onnx"]


def _torch_twin(model):
    """torch twin from engine_vs_torch.py, plus the BN running statistics (it copies parameters only)."""
    import torch

    from deepfake_detector import nn

    spec = importlib.util.spec_from_file_location("engine_vs_torch", os.path.join(HERE, "engine_vs_torch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.torch_twin(model)
    ours = [layer for layer in model.net.layers if isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm1D))]
    theirs = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for o, t in zip(ours, theirs, strict=True):
            t.running_mean.copy_(torch.from_numpy(o.buffers["running_mean"]))
            t.running_var.copy_(torch.from_numpy(o.buffers["running_var"]))
            t.eps = o.eps
    return net.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="df-cnn", help="architecture, randomly initialised (default df-cnn)")
    ap.add_argument("--model", help="a checkpoint (.npz) instead of --arch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per engine and batch size (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args()
    print(cpu_line(), flush=True)  # every speed figure names its CPU

    _drop_script_dir()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy loads its BLAS
    import numpy as np
    from threadpoolctl import threadpool_limits

    from deepfake_detector import nn
    from deepfake_detector.export import export_onnx
    from deepfake_detector.models import create_model, load_model
    from deepfake_detector.models.onnx_model import OnnxModel

    threadpool_limits(args.threads)
    model = load_model(args.model) if args.model else create_model(args.arch, seed=0)
    S = model.input_size
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = export_onnx(model, os.path.join(tmp, "model.onnx"))
        export_s, size_mb = time.perf_counter() - t, os.path.getsize(path) / 1e6
        om = OnnxModel(path, threads=args.threads)

    engines = {"onnxruntime": om.forward}
    if model.kind == "numpy":  # the from-scratch engine runs it too

        def numpy_forward(x):
            with nn.no_grad():
                return model.forward(x)

        engines = {"numpy": numpy_forward, **engines}
    versions = [f"numpy {np.__version__}", f"onnxruntime {__import__('onnxruntime').__version__}"]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        net = model.net.eval() if model.kind == "torch" else _torch_twin(model)

        def torch_forward(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        engines["torch eager"] = torch_forward
        versions.append(f"torch {torch.__version__}")

    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    ips, diff = {}, {}
    for b in batches:
        x = model.normalize(rng.integers(0, 256, (b, S, S, 3), dtype=np.uint8))
        ref = next(iter(engines.values()))(x)
        for name, fn in engines.items():
            diff[name, b] = float(np.abs(fn(x) - ref).max())
            for _ in range(args.warmup - 1):
                fn(x)
        times = {name: [] for name in engines}
        for _ in range(args.runs):  # engines take turns, run by run
            for name, fn in engines.items():
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
        for name in engines:
            ips[name, b] = b / statistics.median(times[name])

    print(f"{model.arch} {S}x{S}, {model.num_parameters():,} parameters, {args.threads} threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up; {', '.join(versions)}")
    print(f"export: {export_s:.2f} s, {size_mb:.2f} MB (.onnx, BN folded into convs)")
    base = next(iter(engines))
    print(f"{'engine':12} {'batch':>5} {'ms/batch':>9} {'images/s':>9} {'vs ' + base:>12} {'max|dlogit|':>12}")
    for b in batches:
        for name in engines:
            print(f"{name:12} {b:5d} {1000 * b / ips[name, b]:9.2f} {ips[name, b]:9.1f} "
                  f"{ips[name, b] / ips[base, b]:12.2f} {diff[name, b]:12.2e}")

    def ratios(other):
        key = "numpy" if other == "numpy" else "torch"
        if other not in engines:
            return " ".join(f"onnx_vs_{key}_b{b}=nan" for b in batches)
        return " ".join(f"onnx_vs_{key}_b{b}={ips['onnxruntime', b] / ips[other, b]:.2f}" for b in batches)

    print(ratios("numpy"))
    print(ratios("torch eager"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
