"""The commands the documentation shows, run: every flag a page shows for a subcommand is
passed to that subcommand here or in another test that runs the command line (the check is
``test_docs.py::test_every_flag_the_docs_show_is_run_by_a_test``).

The model-making chain runs end to end on two small synthetic roots, with a tiny ONNX
stand-in for the CLIP encoder: ``train`` (and ``--resume``), ``export --half``, ``release``
with flip TTA, ``train-head`` (and ``--leave-one-source-out``), ``fuse`` with a domain gate,
then ``evaluate --report-dir`` and ``predict`` with the fused bundle.
"""

from __future__ import annotations

import json

import pytest

from deepfake_detector.cli import main
from deepfake_detector.fuse import STACK_C
from deepfake_detector.models import load
from deepfake_detector.models.clip import encoder as enc

from .synthetic import make_dataset, make_source_dataset

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

WILD = {"camera": "Real", "gan": "Fake", "diffusion": "Fake"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Two roots, a tiny encoder in the environment, and the chain's outputs, made once."""
    from .test_clip import tiny_encoder

    base = tmp_path_factory.mktemp("docs-chain")
    mp = pytest.MonkeyPatch()
    mp.setenv(enc.ENV_ENCODER, str(tiny_encoder(base / "tiny.onnx")))
    mp.setenv(enc.ENV_CACHE, str(base / "cache"))
    studio = make_dataset(base / "studio", n_per_class=(16, 8, 8))
    wild = make_source_dataset(base / "wild", WILD, n_per_source=(12, 8, 8))
    yield {"base": base, "studio": studio, "wild": wild}
    mp.undo()


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_train_resume_export_release_as_the_docs_show_them(chain, capsys):
    base, studio = chain["base"], chain["studio"]
    out = base / "runs" / "mine"
    assert run("train", "--data", studio, "--arch", "seed-cnn", "--epochs", 1, "--batch-size", 8, "--lr", "2e-3",
               "--schedule", "cosine", "--batches-per-epoch", 2, "--device", "cpu", "--quiet", "--out", out) == 0
    assert (out / "best.npz").is_file() and (out / "last.npz").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    config = json.loads((out / "config.json").read_text())
    config["epochs"] = 2  # one more epoch: --resume goes on from the last checkpoint
    (out / "config.json").write_text(json.dumps(config))
    assert run("train", "--resume", out, "--quiet") == 0
    again = (out / "metrics.jsonl").read_text().splitlines()
    assert again[: len(lines)] == lines and len(again) > len(lines)

    half = base / "small.onnx"
    assert run("export", "--model", out / "best.npz", "--onnx", half, "--half") == 0
    assert load(half).kind == "onnx"

    shipped = base / "shipped" / "model.onnx"
    assert run("release", "--run", out, "--test", studio, "--out", shipped,
               "--calibrate-on", studio / "Validation", "--tta", "flip", "--half") == 0
    model = load(shipped)
    assert model.tta == "flip" and 0.0 < model.threshold < 1.0
    assert (shipped.parent / "MODEL_CARD.md").is_file()
    capsys.readouterr()


def cnn_part(base, studio):
    """A small CNN part, trained on the studio root and exported once for the tests that fuse."""
    cnn = base / "cnn.onnx"
    if not cnn.exists():
        run("train", "--data", studio, "--arch", "seed-cnn", "--epochs", 1, "--batches-per-epoch", 1,
            "--batch-size", 8, "--quiet", "--out", base / "runs" / "cnn")
        assert run("export", "--model", base / "runs" / "cnn" / "best.npz", "--onnx", cnn) == 0
    return cnn


def head_config(chain, out, feature_data=None) -> str:
    cfg = {"data": feature_data or [{"root": str(chain["studio"]), "name": "studio"},
                                    {"root": str(chain["wild"]), "name": "wild"}],
           "arch": "clip-mlp", "model_config": {"hidden": 8, "dropout": 0.0},
           "epochs": 3, "steps_per_epoch": 3, "batch_size": 16, "out": str(out), "workers": 1}
    path = chain["base"] / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def parts_to_fuse(chain, head_name: str):
    """(the CNN part, a trained CLIP head's run folder, its config) for a test that fuses."""
    cnn = cnn_part(chain["base"], chain["studio"])
    head = chain["base"] / "runs" / head_name
    config = head_config(chain, head)
    assert run("train-head", "--config", config, "--quiet") == 0
    assert load(head / "best.npz").kind == "clip"
    return cnn, head, config


def test_train_head_fuse_evaluate_predict_as_the_docs_show_them(chain, capsys):
    base, studio = chain["base"], chain["studio"]
    cnn, head, config = parts_to_fuse(chain, "clip-mlp")

    loso = base / "runs" / "loso"
    capsys.readouterr()
    assert run("train-head", "--config", config, "--out", loso, "--leave-one-source-out", "--quiet") == 0
    table = capsys.readouterr().out
    for source in ("gan", "diffusion", "studio"):  # every fake source left out once
        assert any(line.startswith(source) for line in table.splitlines()), table

    bundle = base / "shipped" / "default.zip"
    assert run("fuse", "--part", f"cnn={cnn}", "--part", f"clip={head / 'best.npz'}", "--gate-root", "studio",
               "--data-config", config, "--name", "fusion-docs", "--out", bundle) == 0
    report = json.loads(capsys.readouterr().out)
    fused = load(bundle)
    assert report["choice"] == "fusion" and fused.kind == "fused" and fused.meta["version"] == "fusion-docs"
    assert set(fused.describe()["parts"]) == {"cnn", "clip", "domain"} and fused.gate == "domain"
    # the stack's L2 strength is the one the validation rule ranks first, and the card says so
    c_means = {float(c): m for c, m in report["stack"]["C_mean_auc"].items()}
    assert report["stack"]["C"] == max(c_means, key=c_means.get) == fused.meta["stack_C"]
    assert f"C = {report['stack']['C']:g}, was chosen" in (bundle.parent / "MODEL_CARD.md").read_text()

    report_dir = base / "report"
    assert run("evaluate", "--data", studio, "--model", bundle, "--report-dir", report_dir) == 0
    assert (report_dir / "index.html").is_file()
    capsys.readouterr()
    assert run("predict", studio / "Test" / "Fake", "--model", bundle, "--whole-image", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["label"] in ("Real", "Fake") for r in rows)


def test_fuse_leave_one_source_out_retrains_the_heads_and_drops_what_saw_the_source(chain, capsys):
    base = chain["base"]
    cnn, head, config = parts_to_fuse(chain, "clip-mlp-for-loso")
    out = base / "runs" / "fuse-loso"
    capsys.readouterr()
    assert run("fuse", "--part", f"cnn={cnn}", "--part", f"clip={head / 'best.npz'}", "--gate-root", "studio",
               "--data-config", config, "--leave-one-source-out", "--out", out) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "loso.json").read_text())
    rows = {r["source"]: r for r in result["rows"]}
    assert set(rows) == {"gan", "diffusion", "studio"}
    for source, row in rows.items():
        assert any(line.startswith(source) for line in table.splitlines()), table
        assert row["parts"][-1] == f"clip@{source}"  # the head, retrained without the source
        retrained = load(out / f"loso-{source}" / "clip" / "best.npz")
        assert f"{source}/Fake" not in retrained.meta["data"]["cells"]
        assert 0.0 <= row["left_out_auc"] <= 1.0 and 0.0 <= row["seen_auc"] <= 1.0
        assert row["left_out_C"] in STACK_C  # chosen again on Validation without the source
    # the CNN was trained on the studio root: it has seen the studio fakes, not the wild ones
    assert rows["studio"]["dropped"] == ["cnn"] and "cnn" in rows["gan"]["parts"] and not rows["gan"]["dropped"]
