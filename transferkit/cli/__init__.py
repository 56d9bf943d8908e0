"""The ``transferkit`` command: ``demo``, ``pretrain``, ``finetune``, ``predict``, ``backbones``, ``zoo``."""

from __future__ import annotations

import argparse
import json
import sys
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
    p.add_argument("--prototypes", type=int, metavar="K", help="classification: classify by cosine distance to K "
                                                               "learned prototypes per class, placed at the class "
                                                               "means first (default: a linear layer)")
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
    p.add_argument("--augment", metavar="POLICY", choices=["trivial", "randaugment", "autoaugment", "none"],
                   help="image classification: augment each training image with this torchvision policy (trivial, "
                        "randaugment, autoaugment, none)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="image classification: mixup with "
                                                                             "this Beta alpha (e.g. 0.2)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="image classification: cutmix with "
                                                                              "this Beta alpha (e.g. 1.0)")
    p.add_argument("--erasing", type=float, default=0.0, metavar="P", help="image classification: random "
                                                                           "erasing with this probability")
    p.add_argument("--eda", type=float, default=0.0, metavar="P", help="text classification: EDA-style "
                   "augmentation, swapping, deleting and replacing this share of each training text's words (e.g. 0.1)")
    p.add_argument("--word-mixup", type=float, default=0.0, metavar="ALPHA", help="text classification: mix "
                   "each training batch's input embeddings and labels with this Beta alpha (wordMixup, e.g. 0.2)")
    p.add_argument("--ema", type=float, metavar="DECAY", help="keep a moving average of the weights with this "
                                                              "decay (e.g. 0.999) and validate and save it")
    p.add_argument("--adversarial", choices=["fgm", "pgd", "freelb", "smart"],
                   help="also train on adversarially perturbed inputs (input embeddings or pixels): fgm, pgd, "
                        "freelb or smart (see transferkit.trainer.adversarial)")
    p.add_argument("--adversarial-epsilon", type=float, metavar="EPS", help="--adversarial: radius of the "
                   "perturbation per example (default: 1.0 L2 for text, 0.03 L-inf for images; smart 1e-3)")
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
    from transferkit.cli.finetune import finetune

    return finetune(args)


def format_number(value) -> str:
    """Floats readably at any scale: 0.9123, 3e-05, 1.2e+04; other values as they are."""
    if not isinstance(value, float):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.4f}"


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
