"""Evaluate a model on a labelled folder (or several, pooled): metrics, per source where the
samples come from more than one, and a report with plots and one HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import apply_temperature, calibrate_on_validation, threshold_rule
from .data import load_arrays, load_split, resolve_samples, resolve_split
from .metrics import compute_metrics, per_source_metrics
from .models import Predictor


def resolve_eval_dir(path, split: str = "test") -> tuple[Path, str]:
    """``DIR`` holding Fake/ and/or Real/ (one split), or a dataset root (its ``split``, Test
    by default): :func:`deepfake_detector.data.resolve_split`, the rule training uses too."""
    return resolve_split(path, split)


def _pooled_samples(data, split: str):
    """Samples (sources and roots filled in) of one folder or of several, pooled, and the
    display name ("a/Test + b/Test" for several)."""
    many = isinstance(data, (list, tuple))
    parts = [resolve_samples(d, split) for d in (data if many else [data])]
    if not parts:
        raise ValueError("no data to evaluate")
    return [s for samples, _ in parts for s in samples], " + ".join(name for _, name in parts)


def evaluate(model: Predictor, data, *, faces: bool | None = None, report_dir=None, workers: int = 2,
             limit: int | None = None, seed: int = 0, detector=None, per_source: bool | None = None) -> dict:
    """Metrics of ``model`` on a labelled folder, at 0.5 and at the model's own threshold.

    Top-level numbers are at the threshold chosen on validation (stored in the model);
    ``at_0.5`` repeats them at 0.5. ``limit`` evaluates a seeded random subset. ``data``
    is one folder or dataset root (its Test split), or a list of them evaluated pooled as
    one set. When the samples come from more than one source (a root whose metadata.csv
    has a ``source`` column, or several roots), or with ``per_source=True``, the result
    also holds ``sources``: :func:`~deepfake_detector.metrics.per_source_metrics` rows at
    the model's threshold (each single-class source ranked against the other class of its
    own root); ``per_source=False`` leaves them out. ``faces``: None frames each file as the
    model does (the default model: its largest face); True crops the largest face; False
    scores whole images. A file without a face is scored whole and counted (``no_face``).
    """
    samples, name = _pooled_samples(data, "test")
    if limit and limit < len(samples):
        pick = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(pick)]
    from .options import PredictOptions

    S = model.input_size
    faces = PredictOptions(faces=faces).framed_for(model).faces  # None: the model's own framing
    if faces:
        from .data import load_image
        from .predict import predict_arrays

        keep, p, errors, no_face = [], [], {}, 0
        for s in samples:
            try:
                r = predict_arrays(model, [load_image(s.path)], faces=True, whole_if_no_face=True,
                                   detector=detector)[0]
                no_face += r["face"] is None
                keep.append(s)
                p.append(r["p_fake"])
            except ValueError as e:  # unreadable file: skipped and counted
                errors[s.path] = str(e)
        samples, p = keep, np.asarray(p)
        labels = np.array([s.label for s in samples])
        images = None
    else:
        images, labels, errors = load_arrays(samples, S, workers=workers)
        samples = [s for s in samples if s.path not in errors]  # errors: {path: reason}
        p = model.predict_proba(images)
    t = model.threshold
    result = compute_metrics(labels, p, threshold=t)
    if faces:
        result["no_face"] = no_face  # classified whole
    shown = [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data)
    result.update({"data": shown, "split": name, "skipped": len(errors), "model": model.describe(),
                   "at_0.5": compute_metrics(labels, p, threshold=0.5)})
    sources = None
    if per_source or (per_source is None and len({(s.root, s.source) for s in samples}) > 1):
        sources = per_source_metrics(labels, p, [s.source for s in samples], t, roots=[s.root for s in samples])
        result["sources"] = sources
    if report_dir:
        from .report import write_report

        write_report(report_dir, labels, p, paths=[s.path for s in samples], thumbnails=images, threshold=t,
                     title=f"{model.arch} on {name}", extra={"model": model.describe(), "data": shown,
                                                              "skipped": len(errors)}, sources=sources)
        result["report"] = str(Path(report_dir) / "index.html")
    return result


def calibrate(model: Predictor, data, *, method: str = "youden", workers: int = 2,
              max_false_alarm: float | None = None) -> dict:
    """Refit the temperature and the decision threshold on a labelled folder (a Validation
    split), as training does at its best epoch, and store them in ``model.meta``.

    For a model whose training validation set differs from the one it will be judged
    against (a re-encoded copy, a new domain). Never calibrate on the Test split: the
    threshold would then be chosen on the data that measures it: a dataset root gives its
    Validation split. ``data`` may list several folders or roots: their Validation splits
    are pooled. The threshold follows ``method`` (Youden's J by default) or, with
    ``max_false_alarm`` F, is the lowest one calling at most F of the pooled validation
    reals Fake (:func:`~deepfake_detector.calibration.threshold_at_false_alarm`). Returns the
    validation metrics at the new threshold (also kept as ``meta["validation"]``); the
    per-source rows at it are kept as ``meta["validation_sources"]``.
    """
    samples, name = _pooled_samples(data, "validation")
    images, labels, errors = load_arrays(samples, model.input_size, workers=workers)
    samples = [s for s in samples if s.path not in errors]
    z = model.decision_logits(images)
    temperature, threshold, metrics = calibrate_on_validation(z, labels, method, max_false_alarm=max_false_alarm)
    p = apply_temperature(z, temperature)  # the scores the recalibrated model will give
    sources = per_source_metrics(labels, p, [s.source for s in samples], threshold, roots=[s.root for s in samples])
    shown = [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data)
    rule = threshold_rule(method, max_false_alarm)
    model.meta.update(temperature=temperature, threshold=threshold, validation=metrics, validation_sources=sources,
                      threshold_rule=rule,
                      calibrated_on={"data": shown, "split": name, "n": int(len(labels)), "skipped": len(errors),
                                     "method": method if max_false_alarm is None else "false-alarm",
                                     "max_false_alarm": max_false_alarm})
    return metrics


def format_evaluation(results: list[dict]) -> str:
    """``evaluate`` results as the CLI prints them: the metrics of each, then a table of all."""
    from .metrics import metrics_table, source_table

    lines = []
    for r in results:
        lines += [
            f"{r['split']}: n={r['n']} (skipped {r['skipped']})  threshold {r['threshold']:.4f} (validation)",
            f"  accuracy {r['accuracy']:.4f}  balanced {r['balanced_accuracy']:.4f}  precision "
            f"{r['precision']:.4f}  recall {r['recall']:.4f}  F1 {r['f1']:.4f}",
            f"  ROC-AUC {r['roc_auc']:.4f}  AP {r['average_precision']:.4f}  EER {r['eer']:.4f}  "
            f"log loss {r['log_loss']:.4f}  ECE {r['ece']:.4f}",
            f"  accuracy real {r['accuracy_real']:.4f}  fake {r['accuracy_fake']:.4f}  "
            f"confusion [[TN, FP], [FN, TP]] = {r['confusion_matrix']}",
            f"  at 0.5: accuracy {r['at_0.5']['accuracy']:.4f}  F1 {r['at_0.5']['f1']:.4f}  "
            f"confusion {r['at_0.5']['confusion_matrix']}",
        ]
        if r.get("sources"):
            lines.append(f"  per source, at threshold {r['threshold']:.4f}:")
            lines += ["    " + line for line in source_table(r["sources"]).splitlines()]
        if r.get("report"):
            lines.append(f"  report: {r['report']}")
    if len(results) > 1:
        lines.append(metrics_table(results, [r["split"] for r in results]))
    return "\n".join(lines)


__all__ = ["calibrate", "evaluate", "format_evaluation", "resolve_eval_dir", "load_split"]
