"""Evaluate a model on a labelled folder: metrics, and a report with plots and one HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import load_arrays, load_split, load_split_dir, resolve_split
from .metrics import calibrate_on_validation, compute_metrics
from .models import Predictor


def resolve_eval_dir(path, split: str = "test") -> tuple[Path, str]:
    """``DIR`` holding Fake/ and/or Real/ (one split), or a dataset root (its ``split``, Test
    by default): :func:`deepfake_detector.data.resolve_split`, the rule training uses too."""
    return resolve_split(path, split)


def evaluate(model: Predictor, data, *, faces: bool = False, report_dir=None, workers: int = 2,
             limit: int | None = None, seed: int = 0, detector=None) -> dict:
    """Metrics of ``model`` on a labelled folder, at 0.5 and at the model's own threshold.

    Top-level numbers are at the threshold chosen on validation (stored in the model);
    ``at_0.5`` repeats them at 0.5. ``limit`` evaluates a seeded random subset.
    """
    folder, name = resolve_split(data, "test")
    samples = load_split_dir(folder)
    if limit and limit < len(samples):
        pick = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(pick)]
    S = model.input_size
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
    result.update({"data": str(data), "split": name, "skipped": len(errors), "model": model.describe(),
                   "at_0.5": compute_metrics(labels, p, threshold=0.5)})
    if report_dir:
        from .report import write_report

        write_report(report_dir, labels, p, paths=[s.path for s in samples], thumbnails=images, threshold=t,
                     title=f"{model.arch} on {name}", extra={"model": model.describe(), "data": str(data),
                                                              "skipped": len(errors)})
        result["report"] = str(Path(report_dir) / "index.html")
    return result


def calibrate(model: Predictor, data, *, method: str = "youden", workers: int = 2) -> dict:
    """Refit the temperature and the decision threshold on a labelled folder (a Validation
    split), as training does at its best epoch, and store them in ``model.meta``.

    For a model whose training validation set differs from the one it will be judged
    against (a re-encoded copy, a new domain). Never calibrate on the Test split: the
    threshold would then be chosen on the data that measures it: a dataset root gives its
    Validation split. Returns the validation metrics at the new threshold (also kept as
    ``meta["validation"]``).
    """
    folder, name = resolve_split(data, "validation")
    samples = load_split_dir(folder)
    images, labels, errors = load_arrays(samples, model.input_size, workers=workers)
    temperature, threshold, metrics = calibrate_on_validation(model.decision_logits(images), labels, method)
    model.meta.update(temperature=temperature, threshold=threshold, validation=metrics,
                      calibrated_on={"data": str(data), "split": name, "n": int(len(labels)),
                                     "skipped": len(errors), "method": method})
    return metrics


def format_evaluation(results: list[dict]) -> str:
    """``evaluate`` results as the CLI prints them: the metrics of each, then a table of all."""
    from .metrics import metrics_table

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
        if r.get("report"):
            lines.append(f"  report: {r['report']}")
    if len(results) > 1:
        lines.append(metrics_table(results, [r["split"] for r in results]))
    return "\n".join(lines)


__all__ = ["calibrate", "evaluate", "format_evaluation", "resolve_eval_dir", "load_split"]
