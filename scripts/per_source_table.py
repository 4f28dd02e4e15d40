"""One row per model, one column group per source: Test ROC-AUC and the rate at each model's
own threshold (fake recall for a fake source, false alarms for a real one), plus pooled
ROC-AUC of each root. Every root is framed as the config says (faces-wild: faces cropped as
``predict --faces`` does), exactly as ``fuse`` scores the parts.

    python scripts/per_source_table.py --data-config configs/heads/clip-mlp-mix.json \\
        default=deepfake_detector/assets/default.zip cnn=runs/cnn-dfdc.onnx ...
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from deepfake_detector.metrics import per_source_metrics
from deepfake_detector.models import load
from deepfake_detector.train_heads import HeadConfig, head_samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=FILE")
    ap.add_argument("--data-config", required=True)
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    data = json.loads(open(args.data_config).read())["data"]
    items = head_samples(HeadConfig(data=data))[args.split]
    out = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        model = load(path)
        z = np.full(len(items), np.nan)
        for framing in ("as-is", "face"):
            idx = [i for i, (_, f) in enumerate(items) if f == framing]
            if idx:
                logits, _ = model.file_logits([items[i][0].path for i in idx], framing)
                z[idx] = (logits[:, 1] - logits[:, 0]) / model.temperature
        ok = np.isfinite(z)
        y = np.array([s.label for s, _ in items])[ok]
        p = 1 / (1 + np.exp(-z[ok]))
        samples = [s for (s, _), k in zip(items, ok) if k]
        rows = per_source_metrics(y, p, [s.source for s in samples], model.threshold, [s.root for s in samples])
        roots = {r: float(roc_auc_score(y[m], p[m])) for r in dict.fromkeys(s.root for s in samples)
                 if len(set(y[m := np.array([s.root == r for s in samples])])) == 2}
        acc = {r: float(np.mean((p[m] >= model.threshold) == y[m])) for r in roots
               for m in [np.array([s.root == r for s in samples])]}
        out[name] = {"threshold": model.threshold, "roots_auc": roots, "roots_accuracy": acc, "sources": rows}
        cells = [f"{r['source']} {r['roc_auc']:.3f}/"
                 f"{r['fake_recall'] if r['fake_recall'] is not None else r['false_alarm']:.3f}" for r in rows]
        print(f"{name:10s} thr {model.threshold:.3f} | "
              + " ".join(f"{k} AUC {v:.4f} acc {acc[k]:.4f}" for k, v in roots.items()) + " | " + "  ".join(cells),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
