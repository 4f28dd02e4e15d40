"""Shipping a run's best checkpoint: calibration (optionally refitted on another Validation
folder), one Test evaluation stored in the metadata, the export (.npz or .onnx) and the model
card written beside it (:func:`release`, :func:`model_card`)."""

from __future__ import annotations

import re
from pathlib import Path

from .models import check_tta, save_model

__all__ = ["model_card", "release"]


def release(run_dir, out_path, test_data=None, workers: int = 2, calibrate_on=None, tta: str | None = None,
            half: bool = False) -> dict:
    """Ship a run's best checkpoint: weights and metadata only (no optimiser state), with
    its Test metrics measured once here (at the validation-chosen threshold) and stored.
    An ``out_path`` ending in .onnx ships an ONNX export (runs without torch; ``half``:
    float16 weights, half the file); calibration and Test then run on that file itself.
    ``calibrate_on``: a Validation folder to refit temperature and threshold on first (for
    a run validated on a re-encoded copy of the data, say). ``tta="flip"``: the shipped
    model averages each image with its mirror image; this changes its scores, so it needs
    ``calibrate_on``."""
    from .evaluate import calibrate, evaluate
    from .models import load_model

    if check_tta(tta) and not calibrate_on:
        raise ValueError("test-time augmentation changes the scores: give a Validation folder to "
                         "recalibrate on (calibrate_on / --calibrate-on)")
    onnx_out = str(out_path).lower().endswith(".onnx")
    if half and not onnx_out:
        raise ValueError("half weights are an ONNX export option: give an --out ending in .onnx")
    model = load_model(Path(run_dir) / "best.npz")
    for key in ("progress", "optim_t"):
        model.meta.pop(key, None)
    if tta:
        model.meta["tta"] = tta
    shipped = model
    if onnx_out:
        from .export import export_onnx, rewrite_metadata
        from .models.onnx_model import OnnxModel

        shipped = OnnxModel(export_onnx(model, out_path, half=half))
    if calibrate_on:
        calibrate(shipped, calibrate_on, workers=workers)
        model.meta.update({k: shipped.meta[k] for k in ("temperature", "threshold", "validation", "calibrated_on")})
    if test_data:
        r = evaluate(shipped, test_data, workers=workers)
        model.meta["test"] = {k: r[k] for k in ("n", "accuracy", "roc_auc", "average_precision", "eer",
                                                "f1", "log_loss", "ece", "confusion_matrix", "split")}
        model.meta["test"]["accuracy_at_0.5"] = r["at_0.5"]["accuracy"]
    if onnx_out:
        rewrite_metadata(out_path, model)
    else:
        save_model(model, out_path)
    kind = "an ONNX file run by onnxruntime (no torch needed)" + (", float16 weights" if half else "")
    Path(out_path).with_name("MODEL_CARD.md").write_text(model_card(model, kind if onnx_out else "a .npz checkpoint"))
    return model.meta


def model_card(model, shipped: str = "a .npz checkpoint") -> str:
    """A model card from the checkpoint's own metadata: data, recipe, metrics, limits, terms."""
    m, r = model.meta, model.meta.get("recipe", {})
    augment = "off" if r.get("augment") is None else f"default settings {r['augment'] or ''}".strip()
    weights = re.sub(r"/\S*/", "", m.get("weights_source") or "random initialisation (from scratch)")  # file names
    val, test = m.get("validation", {}), m.get("test", {})

    def row(name, d):
        if not d:
            return f"| {name} | - | - | - | - | - |"
        return (f"| {name} | {d.get('n')} | {d.get('roc_auc', 0):.4f} | {d.get('accuracy', 0):.4f} | "
                f"{d.get('average_precision', 0):.4f} | {d.get('eer', 0):.4f} |")

    counts = m.get("data", {})
    tta_note = (" Test-time augmentation: each image is scored with its mirror image, logits "
                "averaged (twice the inference cost)." if m.get("tta") == "flip" else "")
    return f"""# Model card: `{m.get('version', model.arch)}`

**Architecture** `{model.arch}` ({model.num_parameters():,} parameters), trained on the
{model.engine} engine, shipped as {shipped}; input {model.input_size}x{model.input_size} RGB, normalised with mean
{list(model.preprocess.mean)} and std {list(model.preprocess.std)}. Classes: Real = 0, Fake = 1.
Decision threshold {model.threshold:.4f} (chosen on Validation, Youden's J), temperature
{model.temperature:.4f} (fitted on Validation).{tta_note}

**Data.** DFDC face crops (`dfdc-faces`, one 224-px crop per video, split by source video):
train {counts.get('train')}, validation {counts.get('validation')}. Test was evaluated once,
at release. Crops are tight around the face; `--faces` crops new images the same way
(margin {model.face_margin}).{(" " + m["data_note"]) if m.get("data_note") else ""}

**Recipe.** {r.get('epochs')} epochs, batch {r.get('batch_size')}, {r.get('optimizer')} lr
{r.get('lr')} (weight decay {r.get('weight_decay')}), schedule {r.get('schedule')}, gradient
clipping at {r.get('clip_norm')}, balance {r.get('balance')}, augmentation {augment}
(flip, random resized crop, colour jitter, Gaussian blur, JPEG), seed {r.get('seed')}.
Initial weights: {weights}. Best epoch by validation ROC-AUC: {m.get('epoch')}. Config
`{r.get('arch')}` as in `configs/`; the shipped default is reproduced by
`scripts/train_default_model.sh`.

| split | n | ROC-AUC | accuracy at threshold | AP | EER |
| --- | --- | --- | --- | --- | --- |
{row('Validation', val)}
{row('Test', test)}

**Known limits.** Trained on one dataset (DFDC face swaps) at low resolution; expect lower
scores on other manipulations (other face-swap methods, GAN-generated faces, hand-made
composites), on heavily compressed or very small faces, and on faces framed differently
from the training crops. One crop per video was seen in training. Use the score as
evidence to weigh, not as proof.

**Terms.** The training data is DFDC's, released for research use under its own terms;
the weights inherit that restriction.
"""
