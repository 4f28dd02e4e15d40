"""The commands that make models: ``train``, ``train-head``, ``fuse``, ``release`` and ``export``,
each command's flags beside its call."""

from __future__ import annotations

import dataclasses
import json
import sys

from .common import add_limit_args, load_model, pretrained_value


def add_train(sub) -> None:
    from ..config_flags import add_config_flags
    from ..configs import TrainConfig
    from ..models.torch.model import MODES

    t = sub.add_parser("train", help="train a model on ROOT/{Train,Validation,Test}/{Fake,Real}")
    t.add_argument("--config", help="JSON config (see configs/); flags below override it")
    t.add_argument("--data", action="append", metavar="ROOT",
                   help="dataset root (or Fake/Real folder); repeat to train on several at once, each with its own "
                        "splits (per-root name, faces and weight: a config's \"data\" list)")
    t.add_argument("--source-weight", action="append", metavar="NAME=W",
                   help="weight of a source's (source x class) cells in a balanced batch (repeatable); a source is "
                        "metadata.csv's source column, else the root's folder name")
    t.add_argument("--real-dir", action="append", help="a folder of real images (repeatable)")
    t.add_argument("--fake-dir", action="append", help="a folder of fake images (repeatable)")
    t.add_argument("--pretrained", metavar="NAME|FILE",
                   help="torch architectures: imagenet (packaged weights, the default where a package ships them), "
                        "none, a known name (torchvision:mobilenet_v2, timm:deit_tiny_patch16_224...; downloaded "
                        "once) or a local .pt/.pth/.safetensors state dict")
    t.add_argument("--mode", choices=MODES,
                   help="torch architectures: train everything, or only the head on a frozen backbone")
    t.add_argument("--sbi-probability", type=float, metavar="P",
                   help="with --synthesize-fakes sbi: chance per real sample (default 0.5)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(t, TrainConfig)
    add_limit_args(t)
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config_flags import config_changes
    from ..configs import TrainConfig
    from ..train import train

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    if args.resume:
        from pathlib import Path

        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            print(f"error: {saved} not found; nothing to resume", file=sys.stderr)
            return 2
        cfg = TrainConfig(**json.loads(saved.read_text()))
        cfg.out = args.resume
    if args.data:
        cfg.data = args.data[0] if len(args.data) == 1 else args.data  # one root: a string, as before
    for k, v in config_changes(args, TrainConfig).items():
        setattr(cfg, k, v)
    for item in args.source_weight or []:
        name, sep, w = item.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = None
        if not sep or not name or weight is None:
            print(f"error: --source-weight takes NAME=WEIGHT, got {item!r}", file=sys.stderr)
            return 2
        cfg.source_weights = dict(cfg.source_weights, **{name: weight})
    if args.real_dir or args.fake_dir:
        cfg.real_dirs, cfg.fake_dirs, cfg.data = args.real_dir or [], args.fake_dir or [], None
    if args.pretrained is not None:
        cfg.model_config = dict(cfg.model_config, pretrained=pretrained_value(args.pretrained))
    if args.mode is not None:
        cfg.model_config = dict(cfg.model_config, mode=args.mode)
    if args.sbi_probability is not None:
        cfg.sbi = dict(cfg.sbi, probability=args.sbi_probability)
    if args.no_augment:
        cfg.augment = None
    print(json.dumps(dataclasses.asdict(cfg)), file=sys.stderr)
    summary = train(cfg, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def add_train_head(sub) -> None:
    from ..config_flags import add_config_flags
    from ..configs import HeadConfig

    h = sub.add_parser("train-head", help="train a head on frozen CLIP embeddings (cached after one pass)")
    h.add_argument("--config", help="JSON config (see configs/clip-*.json)")
    h.add_argument("--data", action="append", help="a dataset root (repeatable; a config can frame each root)")
    h.add_argument("--leave-out", action="append", metavar="SOURCE",
                   help="train and choose the head without this source's fakes (repeatable); Test keeps them")
    h.add_argument("--leave-one-source-out", action="store_true",
                   help="for each fake source, a head without it, scored on it (OUT/loso-SOURCE, OUT/loso.json)")
    h.add_argument("--quiet", action="store_true")
    add_config_flags(h, HeadConfig)
    add_limit_args(h)
    h.set_defaults(func=cmd_train_head)


def cmd_train_head(args) -> int:
    from ..config_flags import config_changes
    from ..configs import HeadConfig
    from ..train_heads import leave_one_source_out, train_head

    cfg = HeadConfig.from_file(args.config) if args.config else HeadConfig()
    for k, v in config_changes(args, HeadConfig).items():
        setattr(cfg, k, v)
    if args.data:
        cfg.data = args.data
    if args.leave_out:
        cfg.leave_out = list(args.leave_out)
    if args.leave_one_source_out:
        result = leave_one_source_out(cfg, progress=not args.quiet)
        print(json.dumps(result, indent=2, default=float))
        print(f"{'fake source':<16} {'AUC seen':>9} {'left out':>9} {'caught seen':>12} {'left out':>9}")
        for r in result["rows"]:
            print(f"{r['source']:<16} {r['seen_auc']:>9.3f} {r['left_out_auc']:>9.3f} {r['seen_caught']:>12.1%} "
                  f"{r['left_out_caught']:>9.1%}")
        return 0
    print(json.dumps(train_head(cfg, progress=not args.quiet), indent=2, default=float))
    return 0


def add_fuse(sub) -> None:
    u = sub.add_parser("fuse", help="stack models into one bundle, chosen by the per-source validation rule")
    u.add_argument("--part", action="append", required=True, metavar="NAME=FILE",
                   help="a model to stack (repeatable); the fast variant is the part named cnn")
    u.add_argument("--data", action="append", help="a dataset root (repeatable)")
    u.add_argument("--data-config", help="a JSON file whose 'data' frames each root (e.g. a head config)")
    u.add_argument("--max-false-alarm", type=float, default=0.05)
    u.add_argument("--gate-root", metavar="NAME", help="add a domain gate: a CLIP head telling this root's crops "
                   "from the others', so the stack weighs each expert where it is at home")
    u.add_argument("--leave-one-source-out", action="store_true",
                   help="instead of a bundle: for each fake source, the stack refitted without it (its CLIP heads "
                        "retrained from their recipes, parts trained on its root dropped), scored on it "
                        "(OUT is a folder: OUT/loso-SOURCE, OUT/loso.json)")
    u.add_argument("--out", required=True, help="the bundle to write (.zip)")
    u.add_argument("--name", help="the model's version name, on its card and in its answers "
                   "(default: <choice>-<date>)")
    u.set_defaults(func=cmd_fuse)


def cmd_fuse(args) -> int:
    from ..fuse import fuse, fuse_leave_one_source_out

    parts = dict(p.split("=", 1) for p in args.part)
    data = json.loads(open(args.data_config).read())["data"] if args.data_config else args.data
    if args.leave_one_source_out:
        result = fuse_leave_one_source_out(parts, data, args.out, max_false_alarm=args.max_false_alarm,
                                           gate_root=args.gate_root)
        print(f"{'fake source':<16} {'AUC seen':>9} {'left out':>9} {'caught seen':>12} {'left out':>9}  parts dropped")
        for r in result["rows"]:
            print(f"{r['source']:<16} {r['seen_auc']:>9.3f} {r['left_out_auc']:>9.3f} {r['seen_caught']:>12.1%} "
                  f"{r['left_out_caught']:>9.1%}  {', '.join(r['dropped']) or '-'}")
        return 0
    report = fuse(parts, data, args.out, max_false_alarm=args.max_false_alarm, gate_root=args.gate_root,
                  version=args.name)
    print(json.dumps({k: report[k] for k in ("choice", "stack", "threshold", "test_sources")}, indent=2,
                     default=float))
    return 0


def add_release(sub) -> None:
    from ..calibration import THRESHOLD_METHODS
    from ..models.predictor import TTA_KINDS

    r = sub.add_parser("release", help="ship a run's best checkpoint (weights only), tested once on Test")
    r.add_argument("--run", required=True, help="run folder holding best.npz")
    r.add_argument("--out", required=True, help="where to write the shipped model (.npz)")
    r.add_argument("--test", action="append",
                   help="labelled folder or dataset root to evaluate once (its Test split); repeat to pool several "
                        "(the metadata keeps per-source rows)")
    r.add_argument("--calibrate-on", metavar="VAL_DIR", action="append",
                   help="refit temperature and threshold on this labelled Validation folder (or a root's "
                        "Validation) first; repeat to pool the Validation of several sources")
    r.add_argument("--max-false-alarm", type=float, default=0.05, metavar="F",
                   help="with --calibrate-on: the lowest threshold calling at most this share of the pooled "
                        "validation reals Fake (default 0.05)")
    r.add_argument("--threshold-rule", choices=["false-alarm", *THRESHOLD_METHODS], default="false-alarm",
                   help="with --calibrate-on: false-alarm (default: see --max-false-alarm) or youden (Youden's J, "
                        "--max-false-alarm ignored), accuracy, eer")
    r.add_argument("--tta", choices=TTA_KINDS,
                   help="test-time augmentation: score each image with its mirror image (needs --calibrate-on)")
    r.add_argument("--half", action="store_true", help="with an .onnx --out: float16 weights (half the file)")
    r.add_argument("--workers", type=int, default=2)
    r.set_defaults(func=cmd_release)


def cmd_release(args) -> int:
    from ..release import release

    one = lambda xs: xs[0] if xs and len(xs) == 1 else xs  # one folder: as before; several: pooled
    meta = release(args.run, args.out, one(args.test), workers=args.workers, calibrate_on=one(args.calibrate_on),
                   tta=args.tta, half=args.half, max_false_alarm=args.max_false_alarm,
                   threshold_rule=args.threshold_rule)
    keys = ("version", "threshold", "threshold_rule", "temperature", "validation", "validation_sources", "test",
            "test_sources")
    print(json.dumps({k: meta.get(k) for k in keys}, indent=2))
    return 0


def add_export(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX (needs: pip install onnx)")
    x.add_argument("--model", help="checkpoint (.npz); default: the model shipped with the package")
    x.add_argument("--onnx", required=True, metavar="OUT.onnx")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--fixed-batch", action="store_true", help="batch dimension fixed at 1")
    x.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes")
    x.add_argument("--half", action="store_true", help="store the weights as float16: half the file, "
                   "logits within ~1e-3 relative")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..export import export_onnx, verify_export

    model = load_model(args)
    path = export_onnx(model, args.onnx, opset=args.opset, dynamic_batch=not args.fixed_batch,
                       fold_bn=not args.no_fold_bn, half=args.half)
    check = verify_export(model, path, half=args.half)
    print(json.dumps(check))
    return 0 if check["ok"] else 1

