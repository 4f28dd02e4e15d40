"""Writers never lose rows: file names that are not UTF-8 are written escaped in every format,
and CSV cells that a spreadsheet would run as formulas are neutralised."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import main as cli_main
from deepfake_detector.models import create_model, save_model
from deepfake_detector.results import RowWriter, csv_cell, image_row, printable

BAD = "bad\udcffname.png"  # how Python holds the file name b"bad\xffname.png"


def rows_out(fmt: str, names) -> str:
    out = io.StringIO()
    w = RowWriter(fmt, out)
    for n in names:
        w.write(image_row(n, 0.25, 0.5))
    w.close()
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_a_name_that_is_not_utf8_is_escaped_and_no_row_is_lost(fmt):
    text = rows_out(fmt, [BAD, "ok.png"])
    text.encode("utf-8")  # writable to any UTF-8 stream
    if fmt == "json":
        assert [r["path"] for r in json.loads(text)] == ["bad\\xffname.png", "ok.png"]
    else:
        assert "bad\\xffname.png" in text and "ok.png" in text


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\",\"y\").png", "+1.png", "-2.png", "@SUM(A1).png",
                                  "\tx.png"])
def test_csv_cells_that_would_run_as_formulas_are_neutralised(name):
    rows = list(csv.DictReader(io.StringIO(rows_out("csv", [name]))))
    assert rows[0]["path"] == "'" + name
    assert csv_cell(0.5) == 0.5 and csv_cell("photo.jpg") == "photo.jpg"


def test_printable_escapes_bad_bytes_and_control_characters():
    assert printable(BAD + "\x1b[31m") == "bad\\xffname.png\\x1b[31m"


def test_predict_csv_over_hostile_names_gives_one_row_each(tmp_path, capsysbinary):
    model = tmp_path / "m.npz"
    save_model(create_model("seed-cnn", input_size=32), model)
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    names = [b"bad\xffname.png", b"=cmd.png", b"plain.png"]
    for n in names:
        img.save(os.path.join(os.fsencode(folder), n), format="PNG")
    status = cli_main(["predict", str(folder), "--model", str(model), "--format", "csv", "--whole-image"])
    out = capsysbinary.readouterr().out.decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and len(rows) == 3, out
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["=cmd.png", "bad\\xffname.png", "plain.png"]
    assert all(r["label"] in ("Real", "Fake") for r in rows)
