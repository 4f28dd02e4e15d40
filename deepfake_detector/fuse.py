"""Shipping a fused model: each part scored on Validation and Test of every source, the stack
fitted on pooled Validation (cells weighted equally), the candidate chosen by the mean
per-source validation AUC (the fusion's own score cross-fitted, its regularisation chosen by
the same rule), the threshold put at a false-alarm budget on pooled Validation reals, Test
measured once, a model card written.
And the same stack with one fake source left out of everything it can be left out of
(:func:`fuse_leave_one_source_out`): the figure for a kind of fake it never saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .data.roots import data_roots
from .train_heads import SPLITS

STACK_C = (1.0, 0.1, 0.01, 0.001)  # the stack's inverse L2 strengths tried; Validation chooses


def _scores(model, items, size: int) -> tuple[np.ndarray, list[int]]:
    """Logit differences of ``model`` on ``items`` ((sample, framing) pairs) and the
    positions of the files that failed."""
    z = np.full(len(items), np.nan)
    for framing in ("as-is", "face"):
        idx = [i for i, it in enumerate(items) if it[1] == framing]
        if idx:
            logits, _ = model.file_logits([items[i][0].path for i in idx], framing, size)
            z[idx] = np.asarray(logits, np.float64)[:, 1] - np.asarray(logits, np.float64)[:, 0]
    return z, [int(i) for i in np.flatnonzero(~np.isfinite(z))]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _cross_fitted(scores, y, cells, folds: int, seed: int = 0, C: float = 1.0) -> np.ndarray:
    """Out-of-fold stack scores: each fold's rows scored by a stack fitted on the others."""
    from .models.fusion import fit_stack

    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for c in np.unique(cells):  # folds stratified by cell
        idx = np.flatnonzero(cells == c)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    out = np.empty(len(y))
    for k in range(folds):
        w, b = fit_stack(scores[fold != k], y[fold != k], cells[fold != k], C=C)
        out[fold == k] = scores[fold == k] @ w + b
    return out


def choose_stack_c(fv, yv, srcv, rootsv, cells, folds: int = 5,
                   seed: int = 0) -> tuple[float, dict, np.ndarray]:
    """The stack's regularisation by the validation rule: each C of :data:`STACK_C` cross-fitted,
    the best mean per-source ROC-AUC wins (the first, the weakest regularisation, on a tie).
    Returns (C, {C: mean AUC}, the cross-fitted scores at that C)."""
    from .metrics import per_source_metrics, source_selection

    means, scores = {}, {}
    for C in STACK_C:
        scores[C] = _cross_fitted(fv, yv, cells, folds, seed, C)
        means[C] = source_selection(per_source_metrics(yv, _sigmoid(scores[C]), srcv, 0.5, roots=rootsv))["mean_auc"]
    best = max(STACK_C, key=lambda C: means[C])
    return best, means, scores[best]


def fit_domain_gate(data: list, gate_root: str, encoder_from, seed: int = 0, leave_out=()):
    """A logistic head on CLIP embeddings telling ``gate_root``'s Train images (class 1) from
    the other roots' (class 0), as a :class:`~deepfake_detector.models.ClipHeadModel` whose
    score is the log-odds of "looks like ``gate_root``"; fitted with scikit-learn on the
    cached Train embeddings, each root weighted equally, without the fakes of the sources in
    ``leave_out``."""
    from sklearn.linear_model import LogisticRegression

    from .models import create_model
    from .models.clip.cache import EmbeddingCache
    from .models.clip.encoder import cache_dir
    from .train_heads import HeadConfig, embed_split, head_samples

    cache = EmbeddingCache(cache_dir() / "embeddings.sqlite")
    items = [(s, f) for s, f in head_samples(HeadConfig(data=data, seed=seed))["train"]
             if not (s.label == 1 and s.source in set(leave_out))]
    try:
        x, _, _, roots = embed_split(items, encoder_from.encoder, cache, workers=2, progress=False)
    finally:
        cache.close()
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.array([r == gate_root for r in roots], int)
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max(len(y) - y.sum(), 1)) * len(y)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(x, y, sample_weight=w)
    gate = create_model("clip-logistic", seed=seed)
    dense = gate.head.layers[0]
    dense.params["weight"] = np.stack([np.zeros(512), lr.coef_[0]]).astype(np.float32)
    dense.params["bias"] = np.array([0.0, lr.intercept_[0]], np.float32)
    gate.meta.update(role=f"domain gate: log-odds that a crop looks like {gate_root}",
                     version=f"domain-gate-{gate_root}-{time.strftime('%Y%m%d')}",
                     encoder=dict(encoder_from.meta.get("encoder", {})), face_margin=0.0,
                     train_accuracy=float(lr.score(x, y)))
    return gate.use_encoder(encoder_from.encoder)


def fuse(parts: dict, data: list, out, max_false_alarm: float = 0.05, folds: int = 5, seed: int = 0,
         fast_part: str | None = None, gate_root: str | None = None, version: str | None = None) -> dict:
    """Build the fused model of ``parts`` ({name: model file}) on the roots of ``data`` (as a
    :class:`~deepfake_detector.train_heads.HeadConfig`'s ``data``: Validation and Test of each,
    capped as there), write it to ``out`` (a bundle .zip; or the winning part alone where it
    beats the fusion on every source) with MODEL_CARD.md beside it, and return the report.
    ``gate_root``: add a domain gate (:func:`fit_domain_gate`) telling that root's crops from
    the others, so that the stack weighs each expert by where the input looks at home.
    ``fast_part``: the part ``--fast`` runs alone (default: the quickest expert with no encoder,
    the one with the best mean per-source validation AUC among those). ``version``: the model's
    version name (default: ``<choice>-<date>``)."""
    from .calibration import calibrate_on_validation
    from .metrics import per_source_metrics
    from .models import load
    from .models.fusion import FusedModel, fit_stack, save_bundle, stack_features

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # checked before the scoring, not after it
    models = {name: load(path) for name, path in parts.items()}
    for name, m in models.items():  # a part the bundle cannot hold fails now, not after the scoring
        if not m.abilities.bundle_part:
            m.bundle_part(name)  # raises, saying why
    gate = None
    if gate_root:
        clip = next(m for m in models.values() if m.abilities.shared_encoder)  # the gate shares its encoder
        models["domain"], gate = fit_domain_gate(data, gate_root, clip, seed), "domain"
    names = list(models)
    experts = [n for n in names if n != gate]
    table = _score_parts(models, data, seed)
    sv, yv, srcv, rootsv = table["validation"]
    cells = np.array([f"{s}/{c}" for s, c in zip(srcv, yv)])
    fv = stack_features(sv, names, gate)
    C, c_means, fused_validation = choose_stack_c(fv, yv, srcv, rootsv, cells, folds, seed)
    choice, by_source = _choose(table["validation"], fused_validation, names, experts)
    if fast_part is None:  # the best of the experts that need no encoder, by the same rule
        light = [n for n in experts if not models[n].abilities.shared_encoder] or experts
        fast_part = max(light, key=lambda n: by_source[n]["mean_auc"] or 0.0)

    w, b = fit_stack(fv, yv, cells, C=C)
    if choice == "fusion":
        chosen_scores = {split: stack_features(table[split][0], names, gate) @ w + b for split in table}
    else:
        j = names.index(choice)
        chosen_scores = {split: table[split][0][:, j] for split in table}
    zv = np.stack([np.zeros_like(chosen_scores["validation"]), chosen_scores["validation"]], 1)
    temperature, threshold, val_metrics = calibrate_on_validation(zv, yv, max_false_alarm=max_false_alarm)
    report = {"choice": choice, "candidates": {n: {k: v for k, v in d.items()} for n, d in by_source.items()},
              "stack": {"parts": names, "gate": gate, "weights": w.tolist(), "bias": b, "C": C,
                        "C_mean_auc": {str(c): m for c, m in c_means.items()}},
              "threshold": threshold, "temperature": temperature,
              "threshold_rule": f"false alarms <= {max_false_alarm:g} on pooled Validation reals",
              "validation": val_metrics}
    for split in table:
        _, ys, ss, rs = table[split]
        p = _sigmoid(chosen_scores[split] / temperature)
        report[f"{split}_sources"] = per_source_metrics(ys, p, ss, threshold, roots=rs)

    meta = {"threshold": threshold, "temperature": temperature, "face_margin": 0.0,
            "version": version or f"{choice}-{time.strftime('%Y%m%d')}", "threshold_rule": report["threshold_rule"],
            "validation_sources": report["validation_sources"], "test_sources": report["test_sources"],
            "selection": {n: {"mean_auc": d["mean_auc"], "worst_source": d["worst_source"],
                              "worst_auc": d["worst_auc"]} for n, d in by_source.items()},
            "data": [r._asdict() for r in data_roots(data)], "fast_part": fast_part, "stack_C": C}
    if choice == "fusion":
        model = FusedModel(models, w, b, meta, gate=gate)
        save_bundle(model, out)
    else:  # one part beats the fusion on every source: it ships alone, recalibrated by the same rule
        model = models[choice]
        model.meta.update(meta, note="chosen over the fusion: better validation AUC on every source")
        out = _save_alone(model, parts[choice], out)
        report["out"] = str(out)
    (out.parent / "MODEL_CARD.md").write_text(fused_model_card(model, report) if choice == "fusion"
                                              else _single_card(model, report))
    (out.parent / f"{out.stem}-fusion-report.json").write_text(json.dumps(report, indent=1, default=float))
    return report


def trained_roots(model) -> set[str] | None:
    """The names of the roots a model was trained on, as its recipe records them (a root given
    as a bare path is named by its folder); None where it records none."""
    data = (model.meta.get("recipe") or {}).get("data")
    if not data:
        return None
    entries = data if isinstance(data, list) else [data]
    return {(e.get("name") or Path(e["root"]).name) if isinstance(e, dict) else Path(str(e)).name for e in entries}


def fuse_leave_one_source_out(parts: dict, data: list, out, max_false_alarm: float = 0.05, seed: int = 0,
                              gate_root: str | None = None, progress: bool = False) -> dict:
    """The honest unseen-source estimate of the whole stack. For each fake source S of
    Validation: every CLIP head retrained from its recipe without S's fakes (in Train and in
    Validation, ``OUT/loso-S/<part>``), every other part kept only where its recipe holds no
    root with S in it (a CNN cannot be retrained here in minutes), the gate refitted without
    S's fakes, the stack's regularisation chosen, the stack fitted and its threshold put on
    Validation without them (as :func:`fuse` does with every source); then S's Test
    fakes scored against the Test reals of its root. Beside each row, the same figures of the
    stack of every part fitted with S seen. Writes ``OUT/loso.json``; returns it."""
    import dataclasses

    from .calibration import calibrate_on_validation
    from .configs import HeadConfig
    from .metrics import per_source_metrics
    from .models import load
    from .models.fusion import fit_stack, stack_features
    from .train_heads import head_samples, train_head

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = {name: load(path) for name, path in parts.items()}
    heads = {n for n, m in base.items() if m.abilities.shared_encoder and m.meta.get("recipe")}
    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    root_of = {s.source: s.root for s, _ in head_samples(HeadConfig(data=data, seed=seed))["validation"] if s.label}
    sources = sorted(root_of)
    models, plan = dict(base), {}
    clip = next((m for m in base.values() if m.abilities.shared_encoder), None)
    if gate_root:
        models["domain"] = fit_domain_gate(data, gate_root, clip, seed)
    for source in sources:
        kept, dropped = [], []
        for name, m in base.items():
            if name in heads:
                recipe = {k: v for k, v in m.meta["recipe"].items() if k in fields}
                cfg = dataclasses.replace(HeadConfig(**recipe), leave_out=[source],
                                          out=str(out / f"loso-{source}" / name))
                train_head(cfg, progress)
                models[f"{name}@{source}"] = load(Path(cfg.out) / "best.npz").use_encoder(m.encoder)
                kept.append(f"{name}@{source}")
            elif (roots := trained_roots(m)) is not None and root_of[source] not in roots:
                kept.append(name)  # never trained on S's root: it has not seen S
            else:
                dropped.append(name)
        if gate_root:
            models[f"domain@{source}"] = fit_domain_gate(data, gate_root, clip, seed, leave_out=[source])
        plan[source] = {"parts": kept, "dropped": dropped, "gate": f"domain@{source}" if gate_root else None}
    table = _score_parts(models, data, seed)
    names = list(models)

    def stack(cols: list, gate, without: str | None):
        """Fit the stack of ``cols`` (+ gate) on Validation without ``without``'s fakes; score Test."""
        sv, yv, srcv, rootsv = table["validation"]
        keep = np.array([not (y == 1 and src == without) for y, src in zip(yv, srcv)])
        sub_names = cols + ([gate] if gate else [])
        pick = [names.index(c) for c in sub_names]
        fv = stack_features(sv[keep][:, pick], sub_names, gate)
        cells = np.array([f"{s}/{c}" for s, c, k in zip(srcv, yv, keep) if k])
        srck = [s for s, k in zip(srcv, keep) if k]
        rootsk = [r for r, k in zip(rootsv, keep) if k]
        C, _, _ = choose_stack_c(fv, yv[keep], srck, rootsk, cells, seed=seed)
        w, b = fit_stack(fv, yv[keep], cells, C=C)
        zv = fv @ w + b
        temperature, threshold, _ = calibrate_on_validation(np.stack([np.zeros_like(zv), zv], 1), yv[keep],
                                                            max_false_alarm=max_false_alarm)
        st, yt, srct, rootst = table["test"]
        p = _sigmoid((stack_features(st[:, pick], sub_names, gate) @ w + b) / temperature)
        rows = {r["source"]: r for r in per_source_metrics(yt, p, srct, threshold, roots=rootst)}
        return rows, threshold, C

    seen_rows, seen_threshold, seen_c = stack(list(base), "domain" if gate_root else None, None)
    rows = []
    for source in sources:
        left, threshold, C = stack(plan[source]["parts"], plan[source]["gate"], source)
        rows.append({"source": source, "seen_auc": seen_rows[source]["roc_auc"],
                     "left_out_auc": left[source]["roc_auc"], "seen_caught": seen_rows[source]["fake_recall"],
                     "left_out_caught": left[source]["fake_recall"], "left_out_threshold": threshold, "left_out_C": C,
                     "parts": plan[source]["parts"], "dropped": plan[source]["dropped"]})
    result = {"parts": list(parts), "gate_root": gate_root, "seen_threshold": seen_threshold, "seen_C": seen_c,
              "rows": rows,
              "note": "per source S: CLIP heads retrained and the gate and stack refitted without S's fakes, "
                      "parts trained on S's root dropped; AUC of S's Test fakes against its root's Test reals"}
    (out / "loso.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _score_parts(models: dict, data: list, seed: int) -> dict:
    """Every part's logit difference on Validation and Test of every root, each root framed as
    ``data`` says: ``{split: (scores (N, parts), labels, sources, roots)}``, the files some
    part could not score left out."""
    from .train_heads import HeadConfig, head_samples

    size = max(m.input_size for m in models.values())
    items = head_samples(HeadConfig(data=data, seed=seed))
    table = {}
    for split in ("validation", "test"):
        s = np.stack([_scores(m, items[split], size)[0] for m in models.values()], 1)
        ok = np.isfinite(s).all(1)
        its = [it for it, k in zip(items[split], ok) if k]
        table[split] = (s[ok], np.array([it[0].label for it in its]), [it[0].source for it in its],
                        [it[0].root for it in its])
    return table


def _choose(validation, fused, names: list, experts: list) -> tuple[str, dict]:
    """The per-source validation rule: each expert alone and the fusion (``fused``: its
    cross-fitted Validation scores) scored per source; a part that beats the fusion on every
    source ships alone. Returns (the choice, each candidate's per-source rows and selection
    figures)."""
    from .metrics import per_source_metrics, source_selection

    sv, yv, srcv, rootsv = validation
    candidates = {name: sv[:, names.index(name)] for name in experts}
    candidates["fusion"] = fused
    by_source = {}
    for name, z in candidates.items():
        rows = per_source_metrics(yv, _sigmoid(z), srcv, 0.5, roots=rootsv)
        by_source[name] = {"rows": rows, **source_selection(rows)}
    fusion_auc = {r["source"]: r["roc_auc"] for r in by_source["fusion"]["rows"]}
    beats_fusion = [n for n in experts
                    if all(r["roc_auc"] is not None and r["roc_auc"] > fusion_auc[r["source"]]
                           for r in by_source[n]["rows"])]
    return (beats_fusion[0] if beats_fusion else "fusion"), by_source


def _save_alone(model, source, out: Path) -> Path:
    """``model`` (a part, its meta updated) written in its own format beside ``out``."""
    from .models import save_model

    if str(source).lower().endswith(".onnx"):
        from .export import rewrite_metadata

        out = out.with_suffix(".onnx")
        out.write_bytes(Path(source).read_bytes())
        rewrite_metadata(out, model)
    else:
        out = out.with_suffix(".npz")
        save_model(model, out)
    return out


def _rate(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _single_card(model, report: dict) -> str:
    """The card of a part shipped alone: why, and every source's rates."""
    lines = [f"# Model card: `{model.meta.get('version')}`", "",
             f"**What it is.** {model.arch} alone (a {model.kind} model), chosen over the fusion of the parts "
             "because it "
             "had the better validation ROC-AUC on every source. Threshold "
             f"{model.threshold:.4f}: {model.meta.get('threshold_rule')}.", ""]
    return "\n".join(lines + _rate_tables(report))


def _rate_tables(report: dict) -> list[str]:
    lines = ["**How it was chosen.** Mean per-source validation ROC-AUC (the fusion's own cross-fitted, "
             "5 folds); a single-class source is ranked against the other class of its root:", "",
             "| candidate | mean per-source AUC | worst source | its AUC |", "| --- | --- | --- | --- |"]
    for name, d in report["candidates"].items():
        lines.append(f"| {name} | {_rate(d['mean_auc'])} | {d['worst_source']} | {_rate(d['worst_auc'])} |")
    for split in ("validation", "test"):
        lines += ["", f"**{split.title()}, per source, at the shipped threshold.**", "",
                  "| source | n | ROC-AUC | fake recall | false alarms |", "| --- | --- | --- | --- | --- |"]
        for r in report[f"{split}_sources"]:
            lines.append(f"| {r['source']} | {r['n']} | {_rate(r['roc_auc'])} | {_rate(r['fake_recall'])} | "
                         f"{_rate(r['false_alarm'])} |")
    return lines + [""]


def fused_model_card(model, report: dict) -> str:
    """The model card of a fused model: its parts, the stack, the rule, every source's rates."""
    m = model.meta
    lines = [f"# Model card: `{m.get('version')}`", "",
             f"**What it is.** A logistic stack of {len(model.parts) - bool(model.gate)} experts' logit differences"
             + (", weighed by a domain gate" if model.gate else "") + ", shipped as one bundle (a zip of ONNX "
             "graphs and a JSON manifest) run by onnxruntime alone; `--fast` and a missing encoder run "
             f"`{m.get('fast_part')}` alone:", ""]
    for name, part in model.parts.items():
        d = part.describe()
        role = part.meta.get("role") or ("the domain gate" if name == model.gate else "an expert")
        lines.append(f"- `{name}`: {d.get('arch')} ({d.get('runtime', d.get('engine'))}, input {d.get('input_size')} px"
                     + (f", encoder {d['encoder']}" if d.get("encoder") else "")
                     + (f", {d['features']} features" if d.get("features") else "") + f"): {role}")
    experts = [n for n in model.parts if n != model.gate]
    feats = ([f"{n} x g" for n in experts] + [f"{n} x (1 - g)" for n in experts] + ["g"]) if model.gate else experts
    lines += ["", "Stack weights (features of the parts' logit differences"
              + (f"; g = sigmoid of the gate `{model.gate}`" if model.gate else "") + "): "
              + ", ".join(f"{f} {wt:+.4f}" for f, wt in zip(feats, model.weights)) + ".", ""]
    stack = report["stack"]
    reg = (f" Its L2 regularisation, C = {stack['C']:g}, was chosen among "
           + ", ".join(f"{float(c):g} ({a:.4f})" for c, a in stack["C_mean_auc"].items())
           + " by the mean per-source validation AUC, cross-fitted.")
    lines += [f"Bias {model.bias:+.4f}. The stack was fitted on pooled Validation of every source, each "
              f"(source x class) cell weighted equally.{reg} Decision threshold "
              f"{model.threshold:.4f}: {m.get('threshold_rule')}; temperature {model.temperature:.4f}.", "",
              ""]
    lines += _rate_tables(report)
    if any(p.abilities.shared_encoder for p in model.parts.values()):
        lines += ["**Features.** The CLIP parts were fitted on exact integer features (`exact-int-v1`): the "
                  "encoder's int8 products computed without saturation, so the embeddings, and every figure "
                  "above, are the same on every x86-64 CPU, with or without VNNI "
                  "(`tests/test_clip_exact.py` pins them with golden probe embeddings).", ""]
    lines += ["**Framing.** Every source is framed as `predict --faces` frames a photo: the square around the "
              "detector's face box, no margin (dfdc-faces crops already are; faces-wild photos are cropped so).",
              "", "**Known limits.** Trained on DFDC face swaps and on FFHQ / UTKFace photos against StyleGAN, "
              "one other GAN and Stable Diffusion 2.1 faces. Other generators, composites and face swaps of "
              "other datasets were not seen; real photos unlike FFHQ / UTKFace (news, greyscale, low light) may "
              "be called Fake more often than the rates above. The CLIP part needs its encoder file "
              "(`deepfake-detector fetch-encoder`); without it the default runs its fast part alone. Use the score "
              "as evidence to weigh, not as proof.", "",
              "**Terms.** DFDC data is for research use under its own terms; FFHQ is CC BY-NC-SA 4.0; UTKFace is "
              "for non-commercial research. The weights inherit those restrictions.", ""]
    return "\n".join(lines)


__all__ = ["SPLITS", "STACK_C", "choose_stack_c", "fuse", "fuse_leave_one_source_out", "fused_model_card"]
