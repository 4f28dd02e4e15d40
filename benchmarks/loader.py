"""Can the data pipeline keep the trainer fed? Loader throughput vs training throughput.

Measures, in one run and on the same machine:
  (a) the DataLoader with default training settings (AugmentConfig(), workers=2, no cache)
      over the real Train split: images/s, median over batches after the first;
  (b) one training step (forward + loss + backward) of the default model ``df-cnn`` on
      real batches at its input size: images/s, median over steps after a warm-up.
The last line is ``loader_ratio=<(a)/(b)>``; the target is >= 3.

    python benchmarks/loader.py --n-batches 20 --train-steps 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from deepfake_detector.cpu import cpu_line
from deepfake_detector.data import AugmentConfig, DataLoader, discover
from deepfake_detector.models import create_model
from deepfake_detector.nn import softmax_cross_entropy
from deepfake_detector.nn.backend import get_array_module

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def measure_loader(samples, size, batch_size, n_batches, workers, seed=0):
    """Median images/s over ``n_batches`` batches (the first, which fills the pipeline, excluded)."""
    loader = DataLoader(samples, size, batch_size, augment=AugmentConfig(), workers=workers, seed=seed)
    gen = loader.epoch(0)
    times, batches = [time.perf_counter()], []
    for batch in gen:
        times.append(time.perf_counter())
        batches.append(batch)
        if len(batches) == n_batches + 1:
            break
    gen.close()
    rates = [len(b.labels) / (t1 - t0) for b, t0, t1 in zip(batches[1:], times[1:-1], times[2:], strict=True)]
    return statistics.median(rates), batches, loader.skipped


def _sync(x):
    xp = get_array_module(x)
    if xp.__name__ != "numpy":  # CuPy: wait for the kernels before reading the clock
        xp.cuda.get_current_stream().synchronize()


def measure_training(model, batches, steps, warmup):
    """Median images/s of forward + softmax cross-entropy + backward."""
    rates = []
    for i in range(warmup + steps):
        images, labels, _ = batches[i % len(batches)]
        t0 = time.perf_counter()
        model.zero_grad()
        logits = model.forward(model.normalize(images), training=True)
        _, dlogits = softmax_cross_entropy(logits, get_array_module(logits).asarray(labels))
        grad = model.backward(dlogits)
        _sync(logits if grad is None else grad)
        dt = time.perf_counter() - t0
        print(f"  train step {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: "
              f"{dt:.2f} s, {len(labels) / dt:.1f} images/s", flush=True)
        if i >= warmup:
            rates.append(len(labels) / dt)
    return statistics.median(rates)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data" / "dfdc-faces")
    p.add_argument("--n-batches", type=int, default=30, help="loader batches timed (after one warm-up batch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=3, help="training steps timed (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--arch", default="df-cnn")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the training step")
    args = p.parse_args(argv)
    print(cpu_line(), flush=True)  # every speed figure names its CPU

    train = discover(args.data).train
    model = create_model(args.arch).to(args.device)
    size = model.input_size
    print(f"data: {args.data} ({len(train)} training images); model {args.arch} at {size}px "
          f"on {args.device}; batch {args.batch_size}")

    loader_rate, batches, skipped = measure_loader(train, size, args.batch_size, args.n_batches, args.workers)
    print(f"loader: median {loader_rate:.0f} images/s over {args.n_batches} batches "
          f"(AugmentConfig(), workers={args.workers}, no cache; {len(skipped)} unreadable)", flush=True)
    train_rate = measure_training(model, batches, args.train_steps, args.warmup)
    print(f"train:  median {train_rate:.1f} images/s over {args.train_steps} steps (forward + backward)")
    print(f"loader_ratio={loader_rate / train_rate:.1f}")


if __name__ == "__main__":
    main()
