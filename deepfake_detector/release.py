"""Shipping a run's best checkpoint: calibration (optionally refitted on other Validation
folders, pooled), one Test evaluation stored in the metadata (per source too), the export (.npz
or .onnx) and the model card written beside it (:func:`release`, :func:`model_card`)."""

from __future__ import annotations

import re
from pathlib import Path

from .models import check_tta, save_model

__all__ = ["THRESHOLD_RULES", "model_card", "release"]

THRESHOLD_RULES = ("false-alarm", "youden", "accuracy", "eer")  # release --threshold-rule
CALIBRATION_KEYS = ("temperature", "threshold", "validation", "validation_sources", "threshold_rule", "calibrated_on")
TEST_KEYS = ("n", "accuracy", "roc_auc", "average_precision", "eer", "f1", "log_loss", "ece", "confusion_matrix",
             "split")


def release(run_dir, out_path, test_data=None, workers: int = 2, calibrate_on=None, tta: str | None = None,
            half: bool = False, max_false_alarm: float = 0.05, threshold_rule: str = "false-alarm") -> dict:
    """Ship a run's best checkpoint: weights and metadata only (no optimiser state), with
    its Test metrics measured once here (at the validation-chosen threshold) and stored.
    An ``out_path`` ending in .onnx ships an ONNX export (runs without torch; ``half``:
    float16 weights, half the file); calibration and Test then run on that file itself.
    ``calibrate_on``: a Validation folder, or a list of them (pooled), to refit temperature
    and threshold on first (for a run validated on a re-encoded copy of the data, or on
    other sources). The refitted threshold follows ``threshold_rule``: ``"false-alarm"``
    (the default) is the lowest threshold calling at most ``max_false_alarm`` of the pooled
    validation reals Fake; ``"youden"`` (Youden's J, what training uses by default),
    ``"accuracy"`` or ``"eer"`` ignore ``max_false_alarm``. Without ``calibrate_on`` the
    checkpoint keeps the threshold training chose. ``test_data``: a folder or root (its Test
    split), or a list of them evaluated pooled; ``meta["test_sources"]`` keeps the
    per-source rows. ``tta="flip"``: the shipped model averages each image with its mirror
    image; this changes its scores, so it needs ``calibrate_on``."""
    from .evaluate import calibrate, evaluate
    from .models import load_model

    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {threshold_rule!r}; choose from {', '.join(THRESHOLD_RULES)}")
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
        rule = {"method": "youden", "max_false_alarm": max_false_alarm} if threshold_rule == "false-alarm" else {
            "method": threshold_rule, "max_false_alarm": None}
        calibrate(shipped, calibrate_on, workers=workers, **rule)
        model.meta.update({k: shipped.meta[k] for k in CALIBRATION_KEYS})
    if test_data:
        r = evaluate(shipped, test_data, workers=workers, per_source=True)
        model.meta["test"] = {k: r[k] for k in TEST_KEYS}
        model.meta["test"]["accuracy_at_0.5"] = r["at_0.5"]["accuracy"]
        model.meta["test_sources"] = r["sources"]
    if onnx_out:
        rewrite_metadata(out_path, model)
    else:
        save_model(model, out_path)
    kind = "an ONNX file run by onnxruntime (no torch needed)" + (", float16 weights" if half else "")
    Path(out_path).with_name("MODEL_CARD.md").write_text(model_card(model, kind if onnx_out else "a .npz checkpoint"))
    return model.meta


# what the model card says of the data roots it knows by name: (description, terms)
KNOWN_DATA = {
    "dfdc-faces": ("DFDC face crops (`dfdc-faces`: one 224-px crop per video, split by source video, crops "
                   "tight around the face)",
                   "DFDC's data is released for research use under its own terms"),
    "faces-wild": ("real photographs (FFHQ, UTKFace) beside fully synthetic faces (StyleGAN, a public "
                   "fake-face site's GAN, Stable Diffusion 2.1) (`faces-wild`: whole aligned faces, split by a "
                   "hash of the file name)",
                   "FFHQ is CC BY-NC-SA 4.0, UTKFace is for non-commercial research, the synthetic faces carry "
                   "no stated terms"),
}


def _roots(m: dict) -> list[dict]:
    """The run's data roots from a checkpoint's ``data`` meta (older checkpoints: ``root``)."""
    from .data.roots import data_roots

    d = m.get("data", {})
    if d.get("roots"):
        return list(d["roots"])
    return [r._asdict() for r in data_roots(d.get("root"))]


def _data_paragraph(m: dict, margin) -> tuple[str, str, str]:
    """(the data paragraph, the names trained on, the terms) of the model card."""
    roots, counts, recipe = _roots(m), m.get("data", {}), m.get("recipe", {})
    if roots:
        described = [KNOWN_DATA.get(r["name"], (f"`{r['name']}`",))[0] + (f" (weight {r['weight']:g})"
                     if r.get("weight", 1.0) != 1.0 else "") for r in roots]
        names = ", ".join(f"`{r['name']}`" for r in roots)
    else:
        described, names = ["folders of real and fake images given one by one"], "the folders given"
    text = ("; ".join(described) + f": train {counts.get('train')}, validation {counts.get('validation')}. "
            "Test was evaluated once, at release.")
    train_sources = counts.get("sources", {}).get("train") or {}
    if len(train_sources) > 1:
        text += (" Training sources (real / fake): " + ", ".join(
            f"`{k}` {v.get('Real', 0)} / {v.get('Fake', 0)}" for k, v in train_sources.items())
            + f"; batches balanced by {counts.get('balance') or recipe.get('balance')}.")
    cropped = [r["name"] for r in roots if r.get("faces")] if not recipe.get("faces") else [r["name"] for r in roots]
    if cropped:
        text += (f" The largest face of every image of {', '.join(f'`{c}`' for c in cropped)} was cropped before "
                 f"training (margin {margin}), as `--faces` crops new images.")
    else:
        text += f" `--faces` crops new images with margin {margin}, the framing of the training images."
    terms = "; ".join(KNOWN_DATA[r["name"]][1] for r in roots if r["name"] in KNOWN_DATA)
    others = [r["name"] for r in roots if r["name"] not in KNOWN_DATA]
    if others or not roots:
        terms += ("; " if terms else "") + "the terms of " + (", ".join(f"`{o}`" for o in others) or
                                                              "the training folders") + " apply"
    return text, names, terms


def _source_rows(name: str, rows) -> list[str]:
    def f(v):
        return "-" if v is None else f"{v:.4f}"

    return [f"| {name} | {r['source']} | {r['n']} | {f(r.get('roc_auc'))} | {f(r.get('fake_recall'))} | "
            f"{f(r.get('false_alarm'))} |" for r in rows or ()]


def model_card(model, shipped: str = "a .npz checkpoint") -> str:
    """A model card from the checkpoint's own metadata: data (from the run's roots), recipe,
    threshold rule, metrics (per source too), limits, terms."""
    from .calibration import threshold_rule

    m, r = model.meta, model.meta.get("recipe", {})
    augment = "off" if r.get("augment") is None else f"default settings {r['augment'] or ''}".strip()
    weights = re.sub(r"/\S*/", "", m.get("weights_source") or "random initialisation (from scratch)")  # file names
    val, test = m.get("validation", {}), m.get("test", {})

    def row(name, d):
        if not d:
            return f"| {name} | - | - | - | - | - |"
        return (f"| {name} | {d.get('n')} | {d.get('roc_auc', 0):.4f} | {d.get('accuracy', 0):.4f} | "
                f"{d.get('average_precision', 0):.4f} | {d.get('eer', 0):.4f} |")

    data_text, names, terms = _data_paragraph(m, model.face_margin)
    rule = m.get("threshold_rule") or threshold_rule(r.get("threshold_method", "youden"), r.get("max_false_alarm"))
    where = "Validation"
    if m.get("calibrated_on"):
        where = f"Validation, refitted at release on {m['calibrated_on'].get('split')}"
    per_source = _source_rows("Validation", m.get("validation_sources")) + _source_rows("Test", m.get("test_sources"))
    source_table = ""
    if per_source:
        source_table = ("\n\nPer source, at the threshold (fake recall: fakes called Fake; false alarm: reals called "
                        "Fake; a source of one class is ranked against the other class of its own dataset):\n\n"
                        "| split | source | n | ROC-AUC | fake recall | false alarm |\n| --- | --- | --- | --- | --- | "
                        "--- |\n" + "\n".join(per_source))
    selection = m.get("selection", "validation ROC-AUC")
    tta_note = (" Test-time augmentation: each image is scored with its mirror image, logits "
                "averaged (twice the inference cost)." if m.get("tta") == "flip" else "")
    return f"""# Model card: `{m.get('version', model.arch)}`

**Architecture** `{model.arch}` ({model.num_parameters():,} parameters), trained as a
{model.kind} model, shipped as {shipped}; input {model.input_size}x{model.input_size} RGB, normalised with mean
{list(model.preprocess.mean)} and std {list(model.preprocess.std)}. Classes: Real = 0, Fake = 1.
Decision threshold {model.threshold:.4f} (chosen on {where}; rule: {rule}), temperature
{model.temperature:.4f} (fitted on Validation).{tta_note}

**Data.** {data_text}{(" " + m["data_note"]) if m.get("data_note") else ""}

**Recipe.** {r.get('epochs')} epochs, batch {r.get('batch_size')}, {r.get('optimizer')} lr
{r.get('lr')} (weight decay {r.get('weight_decay')}), schedule {r.get('schedule')}, gradient
clipping at {r.get('clip_norm')}, balance {r.get('balance')}, augmentation {augment}
(flip, random resized crop, colour jitter, Gaussian blur, JPEG), seed {r.get('seed')}.
Initial weights: {weights}. Best epoch by {selection}: {m.get('epoch')}. Config
`{r.get('arch')}` as in `configs/`; the shipped default is reproduced by
`scripts/train_default_model.sh`.

| split | n | ROC-AUC | accuracy at threshold | AP | EER |
| --- | --- | --- | --- | --- | --- |
{row('Validation', val)}
{row('Test', test)}{source_table}

**Known limits.** Trained on {names} at low resolution; expect lower scores on
manipulations and generators not among its training sources (other face-swap methods,
other generators, hand-made composites), on heavily compressed or very small faces, and on
faces framed differently from the training images. A model can learn which pipeline made
an image rather than whether it is real: read the per-source rates. Use the score as
evidence to weigh, not as proof.

**Terms.** {terms}; the weights inherit those restrictions.
"""
