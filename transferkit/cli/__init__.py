"""The ``transferkit`` command: ``demo``, ``pretrain``, ``finetune``, ``predict``, ``backbones``, ``zoo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from transferkit.cli.predict import predict

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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return code
    except TransferkitError as e:
        print(f"transferkit: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `transferkit predict ... | head`: the reader left; end quietly
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """The message on one line: a multi-line message keeps its lines, joined with ' | '."""
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush of the closed pipe stays quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferkit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Transfer learning across word vectors, transformer language models and vision networks.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    from transferkit.cli.demo import add_parser as add_demo
    from transferkit.cli.pretrain import add_parser as add_pretrain

    add_demo(sub)
    add_pretrain(sub)

    p = sub.add_parser("finetune", help="fine-tune a backbone + a task head (--task) on labelled data",
                       description="Fine-tune a backbone with the head of --task (default classification) and "
                                   "save the model.")
    p.add_argument("--backbone", required=True, help="backbone spec, e.g. hf:DIR, glove:PATH, timm:resnet18")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option (repeatable), e.g. weights=none, image_size=64, pooling=max")
    p.add_argument("--data", required=True, help="training data: CSV/TSV/JSONL with text and label columns, "
                                                 "or an image folder with one sub-folder per class")
    p.add_argument("--val", help="validation data (same forms); default: a stratified split of --data")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of --data held out when --val is "
                                                                    "not given (default 0.2; 0 disables). A class "
                                                                    "gives examples only when it has 3 or more; "
                                                                    "with none to give, all train and the last "
                                                                    "epoch's weights are kept")
    p.add_argument("--output", required=True,
                   help="directory to save the fine-tuned model to; run state goes to OUTPUT.run/ (see --run-dir). "
                        "A path holding anything but a transferkit model or an empty directory, a file, or '.' "
                        "is refused before training; an existing transferkit model there is replaced once the "
                        "new one is complete")
    p.add_argument("--overwrite", action="store_true",
                   help="also replace a directory at --output that is not a transferkit model (everything in it "
                        "is removed once the new model is in place); files and '.' are always refused")
    p.add_argument("--task", default="classification", choices=["classification", "multilabel", "regression", "ner", "pair", "qa", "generation",
                                                               "segmentation", "detection"],
                   help="what to predict: a class per input (default), a set of classes per input (multilabel), "
                        "numbers (regression, --target-column), or entity tags per word (ner: --data is a "
                        "CoNLL file or JSONL with spans), or a class (or with --target-column a score) per pair "
                        "of texts (pair: --text-a-column, --text-b-column), or extractive answers (qa: --data is SQuAD "
                        "JSON or JSONL), or generated text (generation: input and target columns, a causal LM), or a class per "
                        "pixel (segmentation: --data is a folder with images/ and masks/ of the same file stems, "
                        "or a COCO JSON), or boxes (detection: --data is a COCO JSON, a Pascal VOC folder or a CSV "
                        "image_path,xmin,ymin,xmax,ymax,label)")
    p.add_argument("--arch", default="fcos", choices=["fcos", "retinanet", "faster_rcnn"],
                   help="detection: the detector torchvision builds over the backbone (default fcos)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation: longest output in tokens")
    p.add_argument("--stride", type=int, default=128, help="qa: tokens shared by consecutive windows of a long "
                                                          "context (default 128)")
    p.add_argument("--scheme", default="BIO", choices=["BIO", "BIOES"], help="ner: the tagging scheme")
    p.add_argument("--crf", action="store_true", help="ner: a linear-chain CRF on the word logits (learnt "
                                                      "transitions, CRF loss, constrained Viterbi)")
    _data_columns(p)
    p.add_argument("--epochs", type=int, help="passes over the data (default: enough for 100 optimiser steps, 25 for "
                                               "a pretrained transformer, and at least 3; printed and saved with "
                                               "the run)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="backbone learning rate (default: by what is trained, e.g. 1e-4 for a "
                                            "pretrained transformer, 1e-3 for a network from random or "
                                            "self-supervised weights; printed and saved with the run)")
    p.add_argument("--head-lr", type=float, help="head learning rate (default: by what is trained, e.g. 3e-3 on a "
                                                 "transformer, 1e-2 on a vision network or a frozen backbone)")
    p.add_argument("--freeze", action="store_true", help="freeze the backbone (same as --strategy linear_probe)")
    p.add_argument("--strategy", default="full", help="full, linear_probe, gradual_unfreeze, llrd, lp_ft, "
                                                      "lp_ft_balanced, or PEFT: lora, dora, ia3, prompt_tuning, "
                                                      "prefix_tuning, bottleneck, bitfit, norm_tuning (default full)")
    p.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the strategy (repeatable), e.g. r=16, schedule=lp_ft, "
                        "target_modules='[\"query\",\"value\"]'")
    p.add_argument("--save", default="adapter", choices=["adapter", "full", "merged"],
                   help="PEFT strategies: save the adapter and head with a reference to the base (adapter, the "
                        "default), the whole model (full), or a plain model with the adapter folded in (merged)")
    p.add_argument("--teacher", help="distil: a fine-tuned model directory whose outputs the new model learns from "
                                     "(any backbone family; the same head kind and classes)")
    p.add_argument("--temperature", type=float, default=2.0, help="distil: softening of both distributions")
    p.add_argument("--alpha", type=float, default=0.5, help="distil: weight of the labels' loss (1 - alpha: the "
                                                            "teacher's)")
    p.add_argument("--lr-decay", type=float, help="layer-wise learning-rate decay per layer group, e.g. 0.8")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (--batch-size is the total)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    p.add_argument("--warmup", type=float, default=0, help="warm-up steps, or a fraction of all steps if < 1")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--group-by-length", action="store_true", help="text: batch examples of similar length "
                                                                  "together (less padding, faster epochs)")
    p.add_argument("--run-dir", help="checkpoints, metrics.csv and the PNG report (default: OUTPUT.run)")
    p.add_argument("--save-every", type=int, help="also checkpoint every N steps (besides epoch ends)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint at the end of every N epochs and of the last "
                                                        "(default: a tenth of the epochs, at least 1)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --run-dir")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in --run-dir")
    p.add_argument("--search", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="hyper-parameter search on the validation data (repeatable), e.g. lr=1e-4,3e-4 "
                        "strategy=full,lp_ft; the best model is saved")
    p.add_argument("--trials", type=int, help="random search: this many points of the --search grid (default all)")
    p.add_argument("--hidden", type=int, help="hidden layer width of the head (default: linear head)")
    p.add_argument("--metric", help="validation metric that selects the best epoch (default: the task's; "
                                    "classification: accuracy, macro_f1, loss; multilabel: micro_f1, macro_f1, "
                                    "map, loss; regression: rmse, mae, r2, spearman, loss)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, help="train N times, with seeds --seed, --seed + 1, ...: prints and saves "
                                             "each metric's mean ± std and 95%% interval over seeds (run directory: "
                                             "seeds.csv, seeds.json, seed-N/) and keeps the seed best on validation")
    p.add_argument("--keep-all", action="store_true", help="--seeds: also save every seed's model "
                                                           "(RUN_DIR/seed-N/model)")
    p.add_argument("--soup", action="store_true", help="--seeds: save the greedy soup of the seeds' models (their "
                                                       "weights averaged where that helps on validation) instead of "
                                                       "the best seed")
    p.add_argument("--ema", type=float, metavar="DECAY", help="keep a moving average of the weights with this "
                                                              "decay (e.g. 0.999) and validate and save it")
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
    p.add_argument("--text-a-column", default="text_a", help="pair models: column of the first texts")
    p.add_argument("--text-b-column", default="text_b", help="pair models: column of the second texts")
    p.add_argument("--proba", action="store_true", help="also print class probabilities")
    p.add_argument("--output-dir", help="segmentation: write each predicted mask here as an index PNG "
                                        "(palette), named after its image; detection: write the boxes here as "
                                        "COCO results (detections.json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=predict)

    p = sub.add_parser("evaluate", help="print a saved model's metrics on labelled data",
                       description="Evaluate a directory written by finetune/save_pretrained on labelled data "
                                   "(the same forms as finetune --data) and print its task's metrics.")
    p.add_argument("--model", required=True, help="directory written by `transferkit finetune`")
    p.add_argument("--data", required=True, help="labelled data in the forms finetune --task reads: CSV/TSV/JSONL, "
                                                 "an image folder, CoNLL (ner), SQuAD JSON (qa)")
    _data_columns(p)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda... (default: cuda when available)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="export a saved model to ONNX or TorchScript",
                       description="Export a directory written by finetune/save_pretrained as one graph (logits out) "
                                   "with its preprocessing files beside it; read it back with "
                                   "transferkit.export.load_exported.")
    p.add_argument("--model", required=True, help="directory written by `transferkit finetune`")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--quantize", choices=["int8"], help="onnx: also write an int8 (dynamically quantised) graph")
    p.add_argument("--output", required=True, help="directory for the export")
    p.add_argument("--overwrite", action="store_true", help="replace a directory that holds something else")
    p.set_defaults(func=_export)

    p = sub.add_parser("backbones", help="list backbones and sources",
                       description="List what load_backbone can build. Without a pattern: the sources and "
                                   "built-in names; with one (fnmatch), every matching name.")
    p.add_argument("pattern", nargs="?", help="e.g. 'timm:*vit*' or 'torchvision:resnet*'")
    p.set_defaults(func=_backbones)

    from transferkit.cli.zoo import add_parser as add_zoo

    add_zoo(sub)
    return parser


def _data_columns(p: argparse.ArgumentParser) -> None:
    """The options that say where a data file keeps inputs and labels (finetune and evaluate read alike)."""
    p.add_argument("--text-column", default="text", help="column of the inputs (texts or image paths; "
                                                         "generation: default 'input')")
    p.add_argument("--label-column", default="label", help="column of the class labels")
    p.add_argument("--target-column", action="append", default=[], metavar="COLUMN",
                   help="regression: a column of numbers to predict (repeatable; default --label-column); "
                        "pair: the score column; generation: the target column (default 'target')")
    p.add_argument("--text-a-column", default="text_a", help="pair: column of the first texts")
    p.add_argument("--text-b-column", default="text_b", help="pair: column of the second texts")
    p.add_argument("--label-separator", default="|",
                   help="multilabel: what joins the labels in a cell (a JSON list also works; default '|')")


def parse_options(pairs: list[str]) -> dict:
    """``["weights=none", "image_size=64"]`` → ``{"weights": None, "image_size": 64}``."""
    from transferkit.errors import OptionError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OptionError(f"--option takes KEY=VALUE (e.g. --option image_size=64), got {pair!r}.")
        if value.lower() in ("none", "null", "random"):
            options[key] = None
            continue
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _finetune(args: argparse.Namespace) -> int:
    from transferkit.files import check_output, claim_run_dir, output_lock
    from transferkit.trainer.strategies import get_strategy

    # Every check that needs no data comes first: a bad --output or --strategy fails before any training.
    output = check_output(args.output, overwrite=args.overwrite)
    run_dir = Path(args.run_dir).absolute() if args.run_dir else output.with_name(output.name + ".run")
    get_strategy(args.strategy, **parse_options(args.strategy_option))
    if args.seeds is not None and (args.seeds < 1 or args.search or args.teacher):
        from transferkit.errors import ConfigError

        raise ConfigError("--seeds takes a number of runs, 1 or more, and does not combine with --search or "
                          "--teacher yet: search (or distil) first, then rerun the chosen settings over seeds.")
    if args.soup and (not args.seeds or args.keep_all):
        from transferkit.errors import ConfigError

        raise ConfigError("--soup averages the models of several seeds: give --seeds N (2 or more), and not "
                          "--keep-all (which saves every seed's model instead).")
    with output_lock(output), output_lock(run_dir):  # a second run on the same --output is refused
        claim_run_dir(run_dir, resume=args.resume)
        return _train_and_save(args, output, run_dir)


def _train_and_save(args: argparse.Namespace, output: Path, run_dir: Path) -> int:
    import torch

    import transferkit as tk
    from transferkit.trainer.strategies import get_strategy
    tk.seed_everything(args.seed)
    from transferkit.cli.task_data import task_parts

    from transferkit.cli.settings import announce, record_settings, save_record, sized_backbone
    from transferkit.errors import TooFewToSplitError
    from transferkit.trainer import auto

    read, split, make_head, what = task_parts(args)
    data = read(args.data)
    if args.val:
        train, val = data, read(args.val)
    elif args.val_fraction > 0:
        try:
            train, val = split(data, args.val_fraction, seed=args.seed)
        except TooFewToSplitError as e:
            print(f"no validation split: {e} All {len(data)} examples train, and the last epoch's weights are "
                  "kept.", flush=True)
            train, val = data, None
    else:
        train, val = data, None
    head_args = make_head(data)
    images = getattr(data, "inputs", ()) if args.task in ("classification", "multilabel", "regression") else ()
    first, options, size = sized_backbone(args.backbone, parse_options(args.option), images, args.seed)
    built = [first]

    def build() -> tk.TransferModel:
        backbone = built.pop() if built else tk.load_backbone(args.backbone, **options)
        if args.freeze:
            backbone.freeze()
        return tk.TransferModel(backbone, head_args())
    chosen = {"image_size": size} if size is not None else {}
    if args.epochs is None:
        chosen["epochs"] = auto.epochs(len(train), args.batch_size, first)
    lr, head_lr = auto.rates(first, frozen=args.freeze or args.strategy == "linear_probe" or first.trainable_top == 0)
    if args.lr is None:
        chosen["lr"] = lr
    if args.head_lr is None:
        chosen["head_lr"] = head_lr
    announce(chosen, "settings")
    settings = record_settings(chosen, {"epochs": args.epochs, "lr": args.lr, "head_lr": args.head_lr,
                               "batch_size": args.batch_size, "strategy": args.strategy,
                               "initialisation": auto.initialisation(first)})
    save_record(run_dir, settings)
    picked = settings["settings"]
    # Training state lives beside the model (OUTPUT.run): save_pretrained replaces --output as a whole.
    trainer = tk.Trainer(epochs=picked["epochs"], batch_size=args.batch_size, accumulate=args.accumulate,
                         lr=picked["lr"], head_lr=picked["head_lr"], optimizer=args.optimizer, schedule=args.schedule,
                         warmup=args.warmup,
                         precision=args.precision, lr_decay=args.lr_decay,
                         strategy=get_strategy(args.strategy, **parse_options(args.strategy_option)),
                         **({"metric": args.metric} if args.metric else {}), patience=args.patience, seed=args.seed, device=args.device,
                         num_workers=args.num_workers, group_by_length=args.group_by_length,
                         compile=args.compile, output_dir=str(run_dir), ema=args.ema,
                         save_every=args.save_every,
                         checkpoint_every=args.checkpoint_every or max(1, picked["epochs"] // 10),
                         loggers=("csv", "report") + (("tensorboard",) if args.tensorboard else ()),
                         progress=not args.no_progress)
    print(f"fine-tuning {args.backbone} on {len(train)} examples ({what(data)})"
          + (f", validating on {len(val)}" if val is not None else "") + f"; run state in {run_dir}", flush=True)
    if args.search:
        if args.teacher:
            from transferkit.errors import ConfigError

            raise ConfigError("--search and --teacher do not combine yet: distil with fixed settings.")
        model, history = _search(build, train, val, trainer, args)
    elif args.teacher:
        from transferkit.tasks.distillation import DistillationTask

        model = build()
        teacher = tk.TransferModel.from_pretrained(args.teacher)
        print(f"distilling {args.teacher} (T={args.temperature}, alpha={args.alpha})", flush=True)
        task = DistillationTask(model, teacher, temperature=args.temperature, alpha=args.alpha)
        history = trainer.fit(task, train, val, resume=args.resume)
    elif args.seeds:
        model, history = _fit_seeds(build, train, val, trainer, args, run_dir)
    else:
        model = build()
        history = trainer.fit(model, train, val, resume=args.resume)
    if not args.seeds:
        for record in history:
            print("  " + "  ".join(f"{k}={format_number(v)}" for k, v in record.items()))
    if getattr(trainer, "best", None) and "epoch" in trainer.best and history:
        print(f"restored epoch {trainer.best['epoch']}: {trainer.best['reason']}")
    best = {}
    if args.task == "multilabel" and val is not None:
        from transferkit.tasks.multilabel import tune_thresholds

        tune_thresholds(model, val)
        print("thresholds tuned on the validation data (the validation figures below use them)")
    if val is not None:
        best = trainer.evaluate(model, val)
        print("best validation: " + "  ".join(f"{k}={v:.4f}" for k, v in best.items()))
    model.to(torch.device("cpu"))
    metrics = {f"val_{k}": v for k, v in best.items()}
    if trainer.seeds_result is not None:  # the spread over seeds, beside the kept seed's own figures
        metrics["seeds"] = len(trainer.seeds_result.seeds)
        metrics["kept_seed"] = trainer.seeds_result.best_seed
        if trainer.seeds_result.soup is not None:
            metrics["soup_seeds"] = trainer.best["soup"]
        for name, spread in trainer.seeds_result.summary.items():
            figures = {"mean": spread.mean, "std": spread.std, "low": spread.low, "high": spread.high}
            metrics.update({f"{name}_{k}": v for k, v in figures.items() if v == v})  # one seed: no spread (nan)
    path = model.save_pretrained(output, metrics=metrics, overwrite=args.overwrite,
                                 include_base=args.save == "full", merge=args.save == "merged", training=settings)
    print(f"saved to {path}")
    return 0


def _fit_seeds(build, train, val, trainer, args: argparse.Namespace, run_dir: Path):
    """``--seeds N``: one run per seed (``--seed``, ``--seed`` + 1, ...); prints the spread; returns the seed kept
    (best on validation) and the history over seeds. ``--keep-all`` also saves every seed's model in the run
    directory (``seed-N/model``)."""
    trainer.seeds = [args.seed + i for i in range(args.seeds)]
    trainer.keep = "all" if args.keep_all else "soup" if args.soup else "best"
    history = trainer.fit(build, train, val, resume=args.resume)
    result = trainer.seeds_result
    print(f"{len(result.seeds)} seeds ({', '.join(map(str, result.seeds))}); each seed's run in {run_dir}/seed-N:")
    print(result.table())
    if result.soup is not None:
        joined = [result.seeds[i] for i in result.soup.ingredients]
        print(f"kept the greedy soup of seeds {', '.join(map(str, joined))}: {result.metric} {result.soup.score:.4f} "
              f"on validation (the best seed alone: {max(result.soup.scores) if result.higher_is_better else min(result.soup.scores):.4f})")
        return result.soup.model, history
    print(f"kept seed {result.best_seed} (best {result.metric})")
    if args.keep_all:
        for seed, one in result.models.items():
            one.to("cpu").save_pretrained(run_dir / f"seed-{seed}" / "model", overwrite=True)
        print(f"every seed's model saved in {run_dir}/seed-N/model")
    return result.best_model, history


def format_number(value) -> str:
    """Floats readably at any scale: 0.9123, 3e-05, 1.2e+04; other values as they are."""
    if not isinstance(value, float):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _search(build, train, val, trainer, args: argparse.Namespace):
    """Run the --search grid; returns the best model and its history."""
    from transferkit.errors import ConfigError
    from transferkit.trainer import search

    if val is None:
        raise ConfigError("--search needs validation data: pass --val, or --val-fraction above 0.")
    space = {}
    for item in args.search:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--search takes FIELD=V1,V2,... (e.g. --search lr=1e-4,3e-4), got {item!r}.")
        space[key] = [parse_options([f"{key}={v}"])[key] for v in values.split(",")]
    result = search(build, train, val, space, trials=args.trials, trainer=trainer, seed=args.seed)
    print(result.table())
    print(f"best: {result.best_params} ({result.metric} {result.best_score:.4f})")
    return result.best_model, []  # the table above is the history of a search


def _export(args: argparse.Namespace) -> int:
    from transferkit import TransferModel

    model = TransferModel.from_pretrained(args.model)
    path = model.export(args.output, args.format, quantize=args.quantize, overwrite=args.overwrite)
    print(f"exported {args.model} as {args.format}" + (" (+ int8)" if args.quantize else "") + f" to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import transferkit as tk

    model = tk.TransferModel.from_pretrained(args.model)
    head = model.head
    # Read the data exactly as `finetune --task` of this head reads it; saved column names are the defaults.
    args.task = {"token_classification": "ner"}.get(head.head_type, head.head_type)
    if not args.target_column and args.task == "regression":
        args.target_column = list(head.targets)
    if not args.target_column and args.task == "pair" and head.target is not None:
        args.target_column = [head.target]
    from transferkit.cli.task_data import task_parts

    read = task_parts(args)[0]
    metrics = tk.Trainer(eval_batch_size=args.batch_size, device=args.device, progress=False).evaluate(
        model, read(args.data))
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print("  ".join(f"{k}={format_number(v)}" for k, v in metrics.items()))
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
