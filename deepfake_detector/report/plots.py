"""Every figure: the evaluation plots (ROC, PR, confusion matrix, score histogram,
reliability), the sample grid and the training curves. Drawn on bare :class:`Figure`
objects rendered by the Agg canvas, never through ``pyplot``: no display is needed, no
global backend is switched and no figure is left registered (nothing leaks between calls)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps
from sklearn.metrics import precision_recall_curve, roc_curve

from ..metrics import CLASS_NAMES, reliability_curve

PLOTS = ("roc.png", "pr.png", "confusion_matrix.png", "score_histogram.png", "reliability.png")
SAMPLES = "samples.png"
PER_GROUP = 6  # tiles per row of the sample grid
TILE_PX = 104  # tile side in the sample grid, pixels
COLORS = ("tab:blue", "tab:red")  # Real, Fake


# --- figures --------------------------------------------------------------------------
def _figure(w: float = 5.0, h: float = 4.0) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path)


def _no_curve(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} undefined:\nonly one class present", ha="center", va="center")


def plot_roc(path: Path, y: np.ndarray, p: np.ndarray, m: dict) -> None:
    """ROC curve with its AUC and the equal-error point."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    if m["roc_auc"] is None:
        _no_curve(ax, "ROC")
    else:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, c="tab:red", lw=2, label=f"ROC (AUC = {m['roc_auc']:.4f})")
        ax.plot([m["eer"]], [1 - m["eer"]], "ko", label=f"EER = {m['eer']:.4f}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake caught)",
        title="ROC curve",
    )
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_pr(path: Path, y: np.ndarray, p: np.ndarray, m: dict) -> None:
    """Precision-recall curve (Fake positive) with its average precision."""
    fig = _figure()
    ax = fig.add_subplot()
    if m["average_precision"] is None:
        _no_curve(ax, "PR curve")
    else:
        prec, rec, _ = precision_recall_curve(y, p)
        ax.step(rec, prec, where="post", c="tab:red", lw=2, label=f"PR (AP = {m['average_precision']:.4f})")
        ax.axhline(m["n_fake"] / m["n"], ls="--", c="0.6", lw=1, label="chance (fake share)")
        ax.legend(loc="lower left")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="recall (fake)",
        ylabel="precision (fake)",
        title="Precision-recall curve",
    )
    _save(fig, path)


def plot_confusion(path: Path, m: dict) -> None:
    """Confusion-matrix heatmap with counts and row percentages."""
    cm = np.asarray(m["confusion_matrix"])
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    frac = cm / rows
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * frac[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
                fontsize=12,
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix (threshold {m['threshold']:.3f})",
    )
    _save(fig, path)


def plot_histogram(path: Path, y: np.ndarray, p: np.ndarray, threshold: float) -> None:
    """P(fake) histogram per true class, with the decision threshold."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 41)
    for label, name in enumerate(CLASS_NAMES):
        s = p[y == label]
        if s.size:
            ax.hist(s, bins=bins, alpha=0.55, color=COLORS[label], label=f"true {name} ({s.size})")
    ax.axvline(threshold, c="k", lw=1.5, label=f"threshold {threshold:.3f}")
    if threshold != 0.5:
        ax.axvline(0.5, c="0.5", lw=1, ls=":", label="0.5")
    ax.set(xlim=(0, 1), xlabel="P(fake)", ylabel="samples", title="Score distribution")
    ax.legend()
    _save(fig, path)


def plot_reliability(path: Path, y: np.ndarray, p: np.ndarray, ece: float) -> None:
    """Reliability diagram (accuracy vs confidence of the predicted class) over a count panel."""
    rc = reliability_curve(y, p)
    edges, count = rc["edges"], rc["count"]
    width = np.diff(edges)
    used = count > 0
    fig = _figure(5.0, 5.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
    ax.bar(
        edges[:-1][used],
        rc["accuracy"][used],
        width=width[used],
        align="edge",
        edgecolor="k",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    ax.bar(
        edges[:-1][used],
        (rc["confidence"] - rc["accuracy"])[used],
        width=width[used],
        bottom=rc["accuracy"][used],
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability (ECE = {ece:.4f})")
    ax.legend(loc="upper left")
    ax_n.bar(edges[:-1], count, width=width, align="edge", edgecolor="k", color="0.6")
    ax_n.set(xlim=(0, 1), xlabel="confidence of the predicted class", ylabel="samples")
    _save(fig, path)


# --- sample grid ----------------------------------------------------------------------
def _pick_samples(y: np.ndarray, p: np.ndarray, threshold: float, k: int) -> list[tuple[str, np.ndarray]]:
    """Four groups of up to ``k`` indices: the most confident correct / wrong per class."""
    pred = (p >= threshold).astype(np.int64)
    order = np.argsort(p, kind="stable")  # ascending P(fake)
    groups = []
    for label, name in enumerate(CLASS_NAMES):
        for correct in (True, False):
            keep = order[(y[order] == label) & ((pred[order] == label) == correct)]
            # confident = far on the side of the predicted class
            predicted_fake = label == 1 if correct else label == 0
            idx = keep[::-1][:k] if predicted_fake else keep[:k]
            groups.append((f"{name}, {'correct' if correct else 'wrong'}", idx))
    return groups


def _tile(i: int, thumbnails, paths) -> np.ndarray | None:
    """Image ``i`` as a (TILE_PX, TILE_PX, 3) uint8 tile (aspect kept, white padding), or None."""
    try:
        if thumbnails is not None:
            im = Image.fromarray(np.asarray(thumbnails[i], dtype=np.uint8))
        else:
            im = Image.open(paths[i])
        with im:
            return np.asarray(ImageOps.pad(im.convert("RGB"), (TILE_PX, TILE_PX), color="white"))
    except (OSError, ValueError, TypeError):
        return None


def plot_samples(
    path: Path,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    thumbnails=None,
    paths: Sequence | None = None,
    k: int = PER_GROUP,
) -> bool:
    """Grid of sample predictions: rows = (class, correct/wrong), most confident first.

    The tiles are pasted into one mosaic drawn on a single Axes (fast), each titled with
    its true and predicted class and P(fake), green when right and red when wrong.
    Returns False (and writes nothing) when neither ``thumbnails`` nor ``paths`` is given.
    """
    if thumbnails is None and paths is None:
        return False
    groups = _pick_samples(y, p, threshold, k)
    step_x, step_y, top = TILE_PX + 44, TILE_PX + 44, 38  # pixel pitch, room for titles
    mosaic = np.full((step_y * len(groups), step_x * k, 3), 255, np.uint8)
    fig = _figure(step_x * k / 100 + 1.3, step_y * len(groups) / 100 + 0.5)
    ax = fig.add_axes((1.2 / fig.get_figwidth(), 0.01, 1 - 1.25 / fig.get_figwidth(), 0.92))
    ax.set_axis_off()
    for r, (name, idx) in enumerate(groups):
        y0 = r * step_y + top
        ax.text(-10, y0 + TILE_PX / 2, name.replace(", ", "\n"), ha="right", va="center", fontsize=10)
        if idx.size == 0:
            ax.text(TILE_PX / 2, y0 + TILE_PX / 2, "none", ha="center", va="center", color="0.5")
        for c, i in enumerate(idx.tolist()):
            x0 = c * step_x + 22
            tile = _tile(i, thumbnails, paths)
            if tile is None:
                ax.text(x0 + TILE_PX / 2, y0 + TILE_PX / 2, "unreadable", ha="center", va="center")
            else:
                mosaic[y0 : y0 + TILE_PX, x0 : x0 + TILE_PX] = tile
            pred = int(p[i] >= threshold)
            ax.text(
                x0 + TILE_PX / 2,
                y0 - 4,
                f"true {CLASS_NAMES[y[i]]} / pred {CLASS_NAMES[pred]}\nP(fake) = {p[i]:.3f}",
                ha="center",
                va="bottom",
                fontsize=8,
                color="tab:green" if pred == y[i] else "tab:red",
            )
    ax.imshow(mosaic, interpolation="nearest")
    fig.suptitle(f"Most confident predictions (threshold {threshold:.3f})")
    _save(fig, path, tight=False)
    return True


# --- training ------------------------------------------------------------------------
def plot_training_curves(history: list[dict], path: Path) -> None:
    """Loss, accuracy (train and validation) and validation ROC-AUC per epoch, from the rows
    of a run's ``metrics.jsonl``."""
    fig = _figure(10, 3.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ep = [h["epoch"] + 1 for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(title="loss", xlabel="epoch")
    ax1.legend()
    ax2.plot(ep, [h["train_accuracy"] for h in history], "o-", label="train")
    ax2.plot(ep, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.set(title="accuracy", xlabel="epoch")
    ax2.legend()
    ax3.plot(ep, [h["val_roc_auc"] for h in history], "o-", color="C2", label="pooled")
    if any(len(h.get("val_sources") or ()) > 1 for h in history):  # several sources: what selection reads
        nan = lambda key: [np.nan if h.get(key) is None else h[key] for h in history]
        ax3.plot(ep, nan("val_mean_source_auc"), "o-", color="C0", label="mean per source")
        ax3.plot(ep, nan("val_worst_source_auc"), "o--", color="C3", label="worst source")
        ax3.legend()
    ax3.set(title="validation ROC-AUC", xlabel="epoch")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    _save(fig, path)
