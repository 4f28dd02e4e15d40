"""The CLI's train and train-head flags come from the config dataclasses: every setting is
declared once (its help in the field), its choices come from the registry that owns them, and
a flag left out leaves a config file's value alone."""

from __future__ import annotations

import dataclasses

import pytest

from deepfake_detector import nn
from deepfake_detector.calibration import THRESHOLD_METHODS
from deepfake_detector.cli import build_parser
from deepfake_detector.config_flags import config_changes, flag_fields
from deepfake_detector.configs import HeadConfig, TrainConfig
from deepfake_detector.models import list_models


def parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("train-head", HeadConfig)])
def test_every_scalar_setting_has_a_flag_with_its_help(command, cls, capsys):
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = capsys.readouterr().out
    for f in flag_fields(cls):
        assert "--" + f.name.replace("_", "-") in text, f.name
        assert f.metadata["help"].split()[0] in text
    assert len(flag_fields(cls)) >= (25 if cls is TrainConfig else 10)


def test_choices_come_from_the_registries():
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "optimizer")
    assert "{" + ",".join(nn.OPTIMIZERS) + "}" == train.metavar
    for name in nn.SCHEDULES:
        assert parse("train", "--schedule", name).schedule == name
    for arch in list_models():
        assert parse("train", "--arch", arch).arch == arch
    for m in THRESHOLD_METHODS:
        assert parse("train-head", "--threshold-method", m).threshold_method == m
    with pytest.raises(SystemExit):
        parse("train", "--optimizer", "lion")
    with pytest.raises(SystemExit):
        parse("train-head", "--arch", "df-cnn")  # not a head


def test_given_flags_change_the_config_and_the_others_leave_it_alone():
    args = parse("train", "--epochs", "3", "--early-stopping", "none", "--no-cache", "--lr", "0.01")
    assert config_changes(args, TrainConfig) == {"epochs": 3, "early_stopping": None, "cache": False, "lr": 0.01}
    assert config_changes(parse("train"), TrainConfig) == {}
    assert config_changes(parse("train", "--faces"), TrainConfig) == {"faces": True}
    with pytest.raises(SystemExit):
        parse("train", "--epochs", "none")  # None is not an epoch count


def test_a_config_file_stands_where_no_flag_is_given(tmp_path, monkeypatch):
    import deepfake_detector.train as train_module
    from deepfake_detector import cli

    cfg_file = tmp_path / "c.json"
    cfg_file.write_text('{"epochs": 7, "lr": 0.5, "comment": "x"}')
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg) and {})
    assert cli.main(["train", "--config", str(cfg_file), "--lr", "0.25", "--out", str(tmp_path / "r")]) == 0
    cfg = seen["cfg"]
    assert (cfg.epochs, cfg.lr, cfg.out) == (7, 0.25, str(tmp_path / "r"))
    assert dataclasses.asdict(cfg)["schedule"] == TrainConfig().schedule
