"""Evaluate a model on a labelled folder: metrics, and a report with plots and one HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import find_split, load_arrays, load_split, samples_from_dirs
from .data.datasets import find_class_dir
from .metrics import calibrate_on_validation, compute_metrics
from .models import Model


def resolve_eval_dir(path) -> tuple[Path, str]:
    """``DIR`` holding Fake/ and Real/ (one split), or a dataset root (its Test split)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    if find_class_dir(path, 0) and find_class_dir(path, 1):
        return path, path.name
    test = find_split(path, "test")
    if test is None:
        raise ValueError(f"{path}: holds neither Fake/ and Real/ folders nor a Test split")
    return test, f"{path.name}/{test.name}"


def evaluate(model: Model, data, *, faces: bool = False, report_dir=None, workers: int = 2,
             limit: int | None = None, seed: int = 0) -> dict:
    """Metrics of ``model`` on a labelled folder, at 0.5 and at the model's own threshold.

    Top-level numbers are at the threshold chosen on validation (stored in the model);
    ``at_0.5`` repeats them at 0.5. ``limit`` evaluates a seeded random subset.
    """
    folder, name = resolve_eval_dir(data)
    samples = samples_from_dirs([find_class_dir(folder, 0)], [find_class_dir(folder, 1)])
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
                r = predict_arrays(model, [load_image(s.path)], faces=True, whole_if_no_face=True)[0]
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


def calibrate(model: Model, data, *, method: str = "youden", workers: int = 2) -> dict:
    """Refit the temperature and the decision threshold on a labelled folder (a Validation
    split), as training does at its best epoch, and store them in ``model.meta``.

    For a model whose training validation set differs from the one it will be judged
    against (a re-encoded copy, a new domain). Never calibrate on the Test split: the
    threshold would then be chosen on the data that measures it. Returns the validation
    metrics at the new threshold (also kept as ``meta["validation"]``).
    """
    folder, name = resolve_eval_dir(data)
    samples = samples_from_dirs([find_class_dir(folder, 0)], [find_class_dir(folder, 1)])
    images, labels, errors = load_arrays(samples, model.input_size, workers=workers)
    temperature, threshold, metrics = calibrate_on_validation(model.decision_logits(images), labels, method)
    model.meta.update(temperature=temperature, threshold=threshold, validation=metrics,
                      calibrated_on={"data": str(data), "split": name, "n": int(len(labels)),
                                     "skipped": len(errors), "method": method})
    return metrics


__all__ = ["calibrate", "evaluate", "resolve_eval_dir", "load_split"]
