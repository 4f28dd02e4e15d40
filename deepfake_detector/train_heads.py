"""Heads on the frozen CLIP encoder: one extraction pass (cached on disk), then a minute of
training on the embeddings with the engine, batches balanced over (source x class) cells,
the checkpoint chosen by the mean per-source validation AUC.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch, per-source rows)
and ``best.npz`` (a :class:`~deepfake_detector.models.ClipHeadModel` with its threshold,
temperature and per-source validation and test rates). An interrupted run is started again:
the embeddings it had made are in the cache, and training the head takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from . import nn
from .configs import HeadConfig
from .data.roots import data_roots, discover_roots

SPLITS = ("train", "validation", "test")


def head_samples(cfg: HeadConfig) -> dict:
    """``{split: [(sample, framing)]}`` over every root of ``cfg.data`` (capped as each says):
    a root with ``faces`` is framed ``"face"`` (its photos cropped as ``predict --faces`` does),
    the others ``"as-is"``."""
    roots = data_roots(cfg.data)
    framing = {r.name: "face" if r.faces else "as-is" for r in roots}
    splits = discover_roots(roots, seed=cfg.seed)
    return {split: [(s, framing[s.root]) for s in samples] for split, samples in zip(SPLITS, splits)}


def embed_split(items, encoder, cache, workers: int, progress: bool, feature: str = "pooled"):
    """Feature vectors (N, dim), labels, sources and roots of one split's items (failed files dropped)."""
    from .models.clip.encoder import FEATURE_SHAPES
    from .models.clip.features import embed_files

    keep, emb = [], []
    for framing in ("as-is", "face"):
        group = [s for s, f in items if f == framing]
        if not group:
            continue
        e, errors = embed_files([s.path for s in group], encoder, cache, framing, workers=workers,
                                progress=progress, feature=feature)
        ok = [i for i, s in enumerate(group) if s.path not in errors]
        keep += [group[i] for i in ok]
        emb.append(e[ok])
    labels = np.array([s.label for s in keep], np.int64)
    return (np.concatenate(emb) if emb else np.zeros((0, *FEATURE_SHAPES[feature]), np.float32), labels,
            [s.source for s in keep], [s.root for s in keep])


def _cell_sampler(labels, sources, roots, weights: dict, root_weights: dict):
    """Cells (source, class) with their indices and sampling probabilities."""
    cells = {}
    for i, key in enumerate(zip(sources, labels.tolist())):
        cells.setdefault(key, []).append(i)
    keys = sorted(cells)
    w = np.array([weights.get(src, 1.0) * root_weights.get(roots[cells[(src, c)][0]], 1.0) for src, c in keys])
    return [np.array(cells[k]) for k in keys], w / w.sum(), keys


def train_head(cfg: HeadConfig, progress: bool = True) -> dict:
    """Extract (or read cached) embeddings, train the head, keep the best epoch; return a summary."""
    from .calibration import calibrate_on_validation
    from .metrics import per_source_metrics, source_selection
    from .models import create_model, save_model
    from .models.clip.cache import EmbeddingCache
    from .models.clip.encoder import ClipEncoder, cache_dir

    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    encoder = ClipEncoder(cfg.encoder, threads=1, workers=cfg.workers)
    cache = EmbeddingCache(cfg.cache or cache_dir() / "embeddings.sqlite")
    feature = cfg.model_config.get("feature", "pooled")
    data = {split: embed_split(items, encoder, cache, cfg.workers, progress, feature)
            for split, items in head_samples(cfg).items()}
    for split in ("train", "validation"):  # a left-out source is seen at Test only
        data[split] = _without_fakes_of(data[split], set(cfg.leave_out))
    x, y, src, roots = data["train"]
    xv, yv, srcv, rootsv = data["validation"]
    root_weights = {r.name: r.weight for r in data_roots(cfg.data)}
    cells, probs, cell_keys = _cell_sampler(y, src, roots, cfg.source_weights, root_weights)

    model = create_model(cfg.arch, seed=cfg.seed, **cfg.model_config)
    opt = nn.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    history, best, best_score = [], None, -np.inf
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        loss_sum = 0.0
        for step in range(cfg.steps_per_epoch):
            picks = rng.choice(len(cells), cfg.batch_size, p=probs)  # a cell per draw, then a member
            idx = np.array([cells[c][rng.integers(len(cells[c]))] for c in picks])
            for i, layer in enumerate(l for l in model.head.layers if isinstance(l, nn.Dropout)):
                layer.reseed([cfg.seed, epoch, step, i])
            model.head.zero_grad()
            logits = model.head_logits(x[idx], training=True)
            loss, dz = nn.softmax_cross_entropy(logits, y[idx])
            model.head.backward(dz, need_input_grad=False)  # the features are data: no gradient into them
            opt.step(model.grads())
            loss_sum += loss
        z = model.head_logits(xv)
        p = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0]).astype(np.float64)))
        rows = per_source_metrics(yv, p, srcv, 0.5, roots=rootsv)
        sel = source_selection(rows)
        history.append({"epoch": epoch, "train_loss": loss_sum / cfg.steps_per_epoch, "val_sources": rows,
                        "val_mean_source_auc": sel["mean_auc"], "val_worst_source": sel["worst_source"],
                        "val_worst_source_auc": sel["worst_auc"]})
        if sel["mean_auc"] > best_score:
            best_score, best = sel["mean_auc"], (epoch, {k: v.copy() for k, v in model.parameters().items()})
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    epoch, params = best
    model.load_state(params, {})
    zv = model.head_logits(xv)
    temperature, threshold, val_metrics = calibrate_on_validation(zv, yv, cfg.threshold_method,
                                                                  max_false_alarm=cfg.max_false_alarm)
    model.meta.update(threshold=threshold, temperature=temperature, epoch=epoch + 1, validation=val_metrics,
                      face_margin=0.0, version=f"{cfg.arch}-{time.strftime('%Y%m%d')}-e{epoch + 1}",
                      threshold_rule=(f"false alarms <= {cfg.max_false_alarm:g} on pooled Validation reals"
                                      if cfg.max_false_alarm is not None else cfg.threshold_method),
                      encoder=encoder.describe(),
                      recipe=dataclasses.asdict(cfg),
                      data={"cells": [f"{s}/{'Fake' if c else 'Real'}" for s, c in cell_keys],
                            "train": int(len(y)), "validation": int(len(yv)), "test": int(len(data["test"][1]))})
    for split, (xs, ys, ss, rs) in (("validation", data["validation"]), ("test", data["test"])):
        if len(ys):
            p = 1 / (1 + np.exp(-_diff(model.head_logits(xs)) / temperature))
            model.meta[f"{split}_sources"] = per_source_metrics(ys, p, ss, threshold, roots=rs)
    save_model(model, run / "best.npz")
    cache.close()
    return {"run": str(run), "best_epoch": epoch + 1, "val_mean_source_auc": best_score,
            "threshold": threshold, "temperature": temperature,
            "validation_sources": model.meta["validation_sources"], "test_sources": model.meta.get("test_sources")}


def _without_fakes_of(split, sources: set):
    x, y, src, roots = split
    keep = [i for i, (label, s) in enumerate(zip(y, src)) if not (label == 1 and s in sources)]
    return x[keep], y[keep], [src[i] for i in keep], [roots[i] for i in keep]


def leave_one_source_out(cfg: HeadConfig, progress: bool = True) -> dict:
    """The honest unseen-source estimate: for each fake source of Train, a head trained and
    chosen without that source's fakes (``cfg.out/loso-<source>``), then scored on its Test
    fakes (against the Test reals of its root, or its own reals); beside the same row of a head
    that saw every source (``cfg.out/all``). Returns ``{"rows": [{source, seen_auc,
    left_out_auc, seen_caught, left_out_caught}], ...}`` and writes ``cfg.out/loso.json``."""
    base = dataclasses.replace(cfg, leave_out=[], out=str(Path(cfg.out) / "all"))
    seen = train_head(base, progress)
    fake_sources = sorted({r["source"] for r in seen["validation_sources"] if r.get("n_fake")})
    by_source = {r["source"]: r for r in seen["test_sources"]}
    rows = []
    for source in fake_sources:
        left = train_head(dataclasses.replace(cfg, leave_out=[source], out=str(Path(cfg.out) / f"loso-{source}")),
                          progress)
        out = {r["source"]: r for r in left["test_sources"]}[source]
        rows.append({"source": source, "seen_auc": by_source[source]["roc_auc"], "left_out_auc": out["roc_auc"],
                     "seen_caught": by_source[source]["fake_recall"], "left_out_caught": out["fake_recall"],
                     "left_out_threshold": left["threshold"]})
    result = {"arch": cfg.arch, "rows": rows, "note": "each head chosen on Validation without the source's fakes; "
              "AUC on its Test fakes against its root's Test reals"}
    (Path(cfg.out) / "loso.json").write_text(json.dumps(result, indent=2))
    return result


def _diff(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return z[:, 1] - z[:, 0]
