"""The ``transferkit`` command: ``demo``, ``pretrain``, ``finetune``, ``predict``, ``backbones``, ``zoo``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EPILOG = """examples:
  transferkit demo --quick
  transferkit pretrain mlm --backbone scratch:bert --data corpus.txt --output runs/bert
  transferkit backbones 'timm:*efficientnet*'
  transferkit finetune --backbone hf:sentence-transformers/all-MiniLM-L6-v2 --data train.csv --output runs/m
  transferkit finetune --backbone timm:resnet18 --option weights=none --data images/ --output runs/r
  transferkit predict --model runs/m "a text to classify" "another one"
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from transferkit.errors import TransferkitError

    try:
        return int(args.func(args) or 0)
    except TransferkitError as e:
        print(f"transferkit: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferkit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Transfer learning across word vectors, transformer language models and vision networks.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    from transferkit.cli.demo import add_parser as add_demo
    from transferkit.cli.pretrain import add_parser as add_pretrain

    add_demo(sub)
    add_pretrain(sub)

    p = sub.add_parser("finetune", help="fine-tune a backbone + classification head on labelled data",
                       description="Fine-tune a backbone with a classification head and save the model.")
    p.add_argument("--backbone", required=True, help="backbone spec, e.g. hf:DIR, glove:PATH, timm:resnet18")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option (repeatable), e.g. weights=none, image_size=64, pooling=max")
    p.add_argument("--data", required=True, help="training data: CSV/TSV/JSONL with text and label columns, "
                                                 "or an image folder with one sub-folder per class")
    p.add_argument("--val", help="validation data (same forms); default: a stratified split of --data")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of --data held out when --val is "
                                                                    "not given (default 0.2; 0 disables)")
    p.add_argument("--output", required=True, help="directory to save the fine-tuned model to")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5, help="backbone learning rate (default 5e-5)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="head learning rate (default 1e-3)")
    p.add_argument("--freeze", action="store_true", help="freeze the backbone (same as --strategy linear_probe)")
    p.add_argument("--strategy", default="full", help="full, linear_probe, gradual_unfreeze, llrd, lp_ft or "
                                                      "lp_ft_balanced (default full)")
    p.add_argument("--lr-decay", type=float, help="layer-wise learning-rate decay per layer group, e.g. 0.8")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (--batch-size is the total)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    p.add_argument("--warmup", type=float, default=0, help="warm-up steps, or a fraction of all steps if < 1")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--run-dir", help="checkpoints, metrics.csv and the PNG report (default: OUTPUT.run)")
    p.add_argument("--save-every", type=int, help="also checkpoint every N steps (always at epoch ends)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --run-dir")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in --run-dir")
    p.add_argument("--search", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="hyper-parameter search on the validation data (repeatable), e.g. lr=1e-4,3e-4 "
                        "strategy=full,lp_ft; the best model is saved")
    p.add_argument("--trials", type=int, help="random search: this many points of the --search grid (default all)")
    p.add_argument("--hidden", type=int, help="hidden layer width of the head (default: linear head)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1", "loss"])
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("predict", help="predict with a saved model",
                       description="Predict classes with a directory written by finetune/save_pretrained.")
    p.add_argument("--model", required=True, help="directory written by `transferkit finetune`")
    p.add_argument("inputs", nargs="*", help="texts (text models) or image paths (image models)")
    p.add_argument("--data", help="file of inputs: .txt (one text per line), CSV/TSV/JSONL (--text-column), "
                                  "or a folder of images")
    p.add_argument("--text-column", default="text")
    p.add_argument("--proba", action="store_true", help="also print class probabilities")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_predict)

    p = sub.add_parser("backbones", help="list backbones and sources",
                       description="List what load_backbone can build. Without a pattern: the sources and "
                                   "built-in names; with one (fnmatch), every matching name.")
    p.add_argument("pattern", nargs="?", help="e.g. 'timm:*vit*' or 'torchvision:resnet*'")
    p.set_defaults(func=_backbones)

    try:
        from transferkit.zoo.cli import add_parser as add_zoo
    except ImportError:
        pass
    else:
        add_zoo(sub)
    return parser


def parse_options(pairs: list[str]) -> dict:
    """``["weights=none", "image_size=64"]`` → ``{"weights": None, "image_size": 64}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"transferkit: error: --option takes KEY=VALUE, got {pair!r}")
        if value.lower() in ("none", "null", "random"):
            options[key] = None
            continue
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _finetune(args: argparse.Namespace) -> int:
    import torch

    import transferkit as tk
    from transferkit.data import infer_label_names, load_labelled, stratified_split

    tk.seed_everything(args.seed)
    data = load_labelled(args.data, text_column=args.text_column, label_column=args.label_column)
    if args.val:
        train, val = data, load_labelled(args.val, text_column=args.text_column, label_column=args.label_column)
    elif args.val_fraction > 0:
        train, val = stratified_split(data, args.val_fraction, seed=args.seed)
    else:
        train, val = data, None
    names = infer_label_names(data.labels)
    num_classes = len(names) if names else max(int(y) for y in data.labels) + 1
    def build() -> tk.TransferModel:
        backbone = tk.load_backbone(args.backbone, **parse_options(args.option))
        if args.freeze:
            backbone.freeze()
        return tk.TransferModel(backbone, tk.heads.Classification(num_classes, labels=names, hidden=args.hidden))
    # Training state lives beside the model: save_pretrained replaces --output as a whole.
    run_dir = args.run_dir or f"{args.output.rstrip('/')}.run"
    trainer = tk.Trainer(epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                         head_lr=args.head_lr, optimizer=args.optimizer, schedule=args.schedule, warmup=args.warmup,
                         precision=args.precision, strategy=args.strategy, lr_decay=args.lr_decay,
                         metric=args.metric, patience=args.patience, seed=args.seed, device=args.device,
                         num_workers=args.num_workers, compile=args.compile, output_dir=run_dir,
                         save_every=args.save_every,
                         loggers=("csv", "report") + (("tensorboard",) if args.tensorboard else ()),
                         progress=not args.no_progress)
    print(f"fine-tuning {args.backbone} on {len(train)} examples ({num_classes} classes)"
          + (f", validating on {len(val)}" if val is not None else "") + f"; run state in {run_dir}", flush=True)
    if args.search:
        model, history = _search(build, train, val, trainer, args)
    else:
        model = build()
        history = trainer.fit(model, train, val, resume=args.resume)
    for record in history:
        print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    best = {}
    if val is not None:
        best = trainer.evaluate(model, val)
        print("best validation: " + "  ".join(f"{k}={v:.4f}" for k, v in best.items()))
    model.to(torch.device("cpu"))
    path = model.save_pretrained(args.output, metrics={f"val_{k}": v for k, v in best.items()})
    print(f"saved to {path}")
    return 0


def _search(build, train, val, trainer, args: argparse.Namespace):
    """Run the --search grid; returns the best model and its history."""
    from transferkit.trainer import search

    if val is None:
        raise SystemExit("transferkit: error: --search needs validation data (--val or --val-fraction > 0)")
    space = {}
    for item in args.search:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"transferkit: error: --search takes FIELD=V1,V2,..., got {item!r}")
        space[key] = [parse_options([f"{key}={v}"])[key] for v in values.split(",")]
    result = search(build, train, val, space, trials=args.trials, trainer=trainer, seed=args.seed)
    print(result.table())
    print(f"best: {result.best_params} ({result.metric} {result.best_score:.4f})")
    return result.best_model, []  # the table above is the history of a search


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferkit import TransferModel
    from transferkit.data import IMAGE_SUFFIXES, load_labelled

    model = TransferModel.from_pretrained(args.model)
    inputs = list(args.inputs)
    if args.data:
        path = Path(args.data)
        if path.is_dir():
            inputs += [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix.lower() == ".txt":
            inputs += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            table = load_labelled(path, text_column=args.text_column, label_column=args.text_column)
            inputs += table.inputs
    if not inputs:
        raise SystemExit("transferkit: error: nothing to predict: give inputs or --data")
    probs = model.predict_proba(inputs, batch_size=args.batch_size)
    labels = model.head.labels or list(range(model.head.num_classes))
    for raw, p in zip(inputs, probs):
        record = {"input": raw if isinstance(raw, str) else repr(raw), "label": labels[int(p.argmax())]}
        if args.proba:
            record["proba"] = {str(name): round(float(q), 6) for name, q in zip(labels, p)}
        print(json.dumps(record, ensure_ascii=False))
    return 0


def _backbones(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit.backbones.registry import builtin_backbones, sources

    if args.pattern:
        names = tk.list_backbones(args.pattern)
        print("\n".join(names) if names else f"no backbone matches {args.pattern!r}")
        return 0
    print("sources (spec forms and options):")
    for name, src in sorted(sources().items()):
        print(f"  {name:<12} {src.usage}")
    print("\nbuilt-in names (real weights found locally or downloaded):")
    for name in builtin_backbones():
        print(f"  {name}")
    print("\nlist architectures with a pattern, e.g. `transferkit backbones 'timm:*vit*'`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
