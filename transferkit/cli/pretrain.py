"""``transferkit pretrain TASK``: self-supervised pretraining from the command line.

Network tasks (``mlm``, ``nsp``, ``sop``, ``clm``, ``rotation``, ``patch-color``, ``autoencoder``) train a
backbone with the Trainer and save it with ``save_pretrained``, so the next step is one more command::

    transferkit pretrain mlm --backbone scratch:bert --data corpus.txt --output runs/general
    transferkit pretrain mlm --backbone runs/general --data domain.txt --output runs/domain
    transferkit finetune --backbone runs/domain --data labelled.csv --output runs/task

``--backbone scratch:bert`` / ``scratch:gpt2`` (the ``scratch`` backbone source, given ``--data`` as its
corpus) trains a tokenizer on the corpus and builds a small random model (``--option hidden=256 --option
layers=4 ...``). Word-vector tasks (``word2vec``, ``fasttext``, ``glove``) need no backbone and write a vectors
file loadable as ``word2vec:``/``fasttext:``/``glove:``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from transferkit.errors import ConfigError, OutputExistsError

# task name → (module, class or function, extra constructor keyword arguments)
NETWORK_TASKS: dict[str, tuple[str, str, dict]] = {
    "mlm": ("transferkit.tasks.text", "MaskedLM", {}),
    "nsp": ("transferkit.tasks.text", "NextSentencePrediction", {}),
    "sop": ("transferkit.tasks.text", "NextSentencePrediction", {"order": True}),
    "clm": ("transferkit.tasks.text", "CausalLM", {}),
    "rotation": ("transferkit.tasks.vision", "RotationPrediction", {}),
    "patch-color": ("transferkit.tasks.vision", "PatchColor", {}),
    "autoencoder": ("transferkit.tasks.vision", "DenoisingAutoencoder", {}),
}
VECTOR_TASKS = {"word2vec": "train_word2vec", "fasttext": "train_fasttext", "glove": "train_glove"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="self-supervised pretraining (MLM, NSP, CLM, rotation, word vectors...)",
                              description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(NETWORK_TASKS) + sorted(VECTOR_TASKS))
    p.add_argument("--backbone", help="backbone spec or save_pretrained directory to continue from, or "
                                      "scratch:bert / scratch:gpt2 (network tasks)")
    p.add_argument("--data", required=True, help="corpus: a text file (one document per line; blank lines "
                                                 "between documents for nsp/sop) or a folder of images")
    p.add_argument("--output", required=True, help="directory (network tasks) or vectors file (word vectors); "
                                                   "an existing path other than a transferkit model is refused "
                                                   "before training unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace what is at --output (never '.' or a "
                                                            "directory in place of a vectors file)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option, e.g. the scratch model's size (vocab_size, hidden, layers, heads, "
                        "max_length)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. mask_prob=0.15, whole_word=true; for word vectors the trainer's "
                        "keyword arguments, e.g. vector_size=100, window=5, min_count=5")
    p.add_argument("--epochs", type=int, help="passes over the corpus (network tasks' default: the recipe for the "
                                               "backbone, e.g. 6 from random weights, 1 to continue pretrained "
                                               "ones; word vectors: 1)")
    p.add_argument("--batch-size", type=int, help="network tasks (default: the recipe's, e.g. 64 images, 32 texts)")
    p.add_argument("--lr", type=float, help="network tasks (default: the recipe's, e.g. 3e-3 for images from random "
                                            "weights, 1e-3 for a text model from scratch, 5e-5 to continue "
                                            "a pretrained one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib

    from transferkit.cli import parse_options

    task_options = parse_options(args.task_option)
    if args.task in VECTOR_TASKS:
        _check_vectors_output(Path(args.output), args.overwrite)
        train: Callable = getattr(importlib.import_module("transferkit.backbones.word_vectors.training"),
                                 VECTOR_TASKS[args.task])
        path = train(args.data, args.output, epochs=args.epochs or 1, seed=args.seed, progress=not args.no_progress,
                     **task_options)
        print(f"saved {args.task} vectors to {path}; load them with load_backbone('{args.task}:{path}')")
        return 0
    if not args.backbone:
        raise ConfigError(f"pretrain {args.task} needs --backbone (e.g. --backbone scratch:bert or hf:DIR).")
    from transferkit.files import check_output, output_lock

    output = check_output(args.output, overwrite=args.overwrite)  # before any training
    with output_lock(output):
        return _pretrain_network(args, output, task_options)


def _check_vectors_output(output: Path, overwrite: bool) -> None:
    if output.is_dir() or (output.exists() and not overwrite):
        raise OutputExistsError(f"{output} already exists{' and is a directory' if output.is_dir() else ''}; "
                                "nothing was changed. Choose another --output file"
                                + ("." if output.is_dir() else ", or pass --overwrite to replace it."))


def _pretrain_network(args: argparse.Namespace, output: Path, task_options: dict) -> int:
    import importlib

    import transferkit as tk
    from transferkit.cli import format_number, parse_options

    from transferkit.cli.settings import announce
    from transferkit.trainer import auto
    from transferkit.trainer.auto import Choice

    tk.seed_everything(args.seed)
    backbone, size = _backbone(args.backbone, args.data, parse_options(args.option), args.seed)
    recipe, which = auto.pretraining(backbone)
    chosen = {"image_size": size} if size is not None else {}
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is None:
            chosen[key] = Choice(getattr(recipe, key), f"the recipe {which}")
    announce(chosen, "pretraining settings")
    picked = {key: getattr(args, key) if getattr(args, key) is not None else chosen[key].value
              for key in ("epochs", "lr", "batch_size")}
    module, name, fixed = NETWORK_TASKS[args.task]
    task = getattr(importlib.import_module(module), name)(backbone, **{**fixed, **task_options})
    trainer = tk.Trainer(**picked, seed=args.seed, device=args.device, progress=not args.no_progress)
    history = trainer.fit(task, args.data)
    for record in history:
        print("  " + "  ".join(f"{k}={format_number(v)}" for k, v in record.items()))
    task.backbone.to("cpu")
    # What the weights went through: fine-tuning's defaults read it (trainer.auto.initialisation).
    config = task.backbone.config
    config["pretraining"] = [*config.get("pretraining", []), {"task": args.task, **picked, **task_options,
                                                               "train_loss": history[-1]["train_loss"]}]
    if auto.initialisation(task.backbone) == "random":
        config["init"] = "self-supervised"
    path = task.backbone.save_pretrained(output, metrics={"pretrain_task": args.task,
                                                          "train_loss": history[-1]["train_loss"]},
                                         overwrite=args.overwrite)
    print(f"saved the pretrained backbone to {path}; fine-tune it with --backbone {path}")
    return 0


def _backbone(spec: str, corpus: str, options: dict, seed: int):
    """Load the backbone, sized to the corpus's images when they are far smaller than its input (returns it and
    that choice, or ``None``); a source that builds from a corpus (``scratch:``) gets ``--data`` as ``corpus``."""
    from transferkit.backbones.registry import sources, valid_options
    from transferkit.cli.settings import sized_backbone

    src = sources().get(spec.partition(":")[0])
    if src is not None and "corpus" in (valid_options(src.build, skip=1) or ()):
        options = {"corpus": corpus, **options}
    backbone, _, size = sized_backbone(spec, options, _image_files(corpus), seed)
    return backbone, size


def _image_files(path: str):
    """The image files of a corpus folder, found lazily (a text corpus has none)."""
    from transferkit.data.images import ImageFolderCorpus
    from transferkit.errors import DataError

    if not Path(path).is_dir():
        return iter(())
    try:
        return ImageFolderCorpus(path, shuffle_buffer=0).files()
    except DataError:  # an empty folder: the task's reader says what is wrong
        return iter(())
