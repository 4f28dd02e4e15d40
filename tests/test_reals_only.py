"""The reals-only runs of issue 20: a data root's ``drop_fakes`` (the SBI expert sees no fake),
a loader of real cells whose fakes are made on the fly, and a head trained without one fake
source (``leave_out``, the leave-one-source-out estimate)."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector.data import DataLoader
from deepfake_detector.data.roots import data_roots, discover_roots
from deepfake_detector.data.sbi import SBIConfig

from .synthetic import make_dataset


def test_drop_fakes_leaves_the_fakes_out_of_the_named_splits_only(tmp_path):
    root = make_dataset(tmp_path / "ds", n_per_class=(10, 6, 6))
    kept = discover_roots(data_roots([{"root": str(root), "drop_fakes": ["train", "validation"]}]))
    full = discover_roots(data_roots([str(root)]))
    assert {s.label for s in kept.train} == {0} and {s.label for s in kept.validation} == {0}
    assert [s.path for s in kept.test] == [s.path for s in full.test]  # Test is never changed
    assert len(kept.train) == sum(s.label == 0 for s in full.train)
    with pytest.raises(ValueError, match="only 'train' and 'validation'"):
        data_roots([{"root": str(root), "drop_fakes": ["test"]}])


def test_cells_of_reals_alone_train_when_the_fakes_are_synthesised(tmp_path):
    root = make_dataset(tmp_path / "ds", n_per_class=(12, 4, 4), size=48)
    reals = discover_roots(data_roots([{"root": str(root), "drop_fakes": ["train"]}])).train
    with pytest.raises(ValueError, match="needs samples of both classes"):
        DataLoader(reals, batch_size=8, input_size=48, balance="cells")
    loader = DataLoader(reals, batch_size=8, input_size=48, balance="cells", batches_per_epoch=4,
                        synthesize=SBIConfig(probability=0.5), workers=0)
    labels = np.concatenate([b.labels for b in loader])
    assert set(labels.tolist()) == {0, 1}  # the fakes come from the reals


def test_a_left_out_source_loses_only_its_fakes():
    from deepfake_detector.train_heads import _without_fakes_of

    x = np.arange(6, dtype=np.float32)[:, None]
    y = np.array([0, 1, 0, 1, 1, 0])
    src = ["ffhq", "sd21", "dfdc", "dfdc", "stylegan", "sd21"]
    kx, ky, ks, kr = _without_fakes_of((x, y, src, ["r"] * 6), {"sd21", "dfdc"})
    assert kx[:, 0].tolist() == [0, 2, 4, 5] and ks == ["ffhq", "dfdc", "stylegan", "sd21"]


def test_leave_one_source_out_trains_one_head_per_fake_source(tmp_path, monkeypatch):
    import deepfake_detector.train_heads as th

    calls = []

    def fake_train_head(cfg, progress=True):  # scores: 0.9 where the source was seen, 0.6 left out
        calls.append(list(cfg.leave_out))
        rows = [{"source": s, "n_fake": 5, "roc_auc": 0.6 if s in cfg.leave_out else 0.9,
                 "fake_recall": 0.1 if s in cfg.leave_out else 0.8} for s in ("gan", "swap")]
        rows.append({"source": "ffhq", "n_fake": 0, "roc_auc": 0.9, "fake_recall": None})
        return {"validation_sources": rows, "test_sources": rows, "threshold": 0.5}

    monkeypatch.setattr(th, "train_head", fake_train_head)
    out = th.leave_one_source_out(th.HeadConfig(out=str(tmp_path)), progress=False)
    assert calls == [[], ["gan"], ["swap"]]
    assert [(r["source"], r["seen_auc"], r["left_out_auc"]) for r in out["rows"]] == [("gan", 0.9, 0.6),
                                                                                       ("swap", 0.9, 0.6)]
    assert (tmp_path / "loso.json").exists()
