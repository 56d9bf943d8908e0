"""``transferkit finetune``: read the data, choose what the user left out, train (once, over seeds, a search or a
distillation) and save the model with its figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferkit.cli import format_number, parse_options


def finetune(args: argparse.Namespace) -> int:
    from transferkit.files import check_output, claim_run_dir, output_lock
    from transferkit.trainer.strategies import get_strategy

    # Every check that needs no data comes first: a bad --output or --strategy fails before any training.
    output = check_output(args.output, overwrite=args.overwrite)
    run_dir = Path(args.run_dir).absolute() if args.run_dir else output.with_name(output.name + ".run")
    get_strategy(args.strategy, **parse_options(args.strategy_option))
    augment = _augment(args)  # augmentation flags that do not fit the task are refused before any data is read
    adversarial = _adversarial(args)
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
        return _train_and_save(args, output, run_dir, augment, adversarial)


def _train_and_save(args: argparse.Namespace, output: Path, run_dir: Path, augment, adversarial) -> int:
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

    def build():
        backbone = built.pop() if built else tk.load_backbone(args.backbone, **options)
        if args.freeze:
            backbone.freeze()
        model = tk.TransferModel(backbone, head_args())
        return model.task(augment=augment) if augment is not None else model  # the model is the task's .model
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
    if augment is not None:
        import dataclasses

        settings["settings"]["augment"] = dataclasses.asdict(augment)
    if adversarial is not None:
        settings["settings"]["adversarial"] = adversarial.to_config()
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
                         compile=args.compile, output_dir=str(run_dir), ema=args.ema, adversarial=adversarial,
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

        if augment is not None:
            from transferkit.errors import ConfigError

            raise ConfigError("--teacher does not combine with augmentation (--augment, --mixup, --eda...) yet: distil "
                              "without augmentation.")
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
    model = getattr(model, "model", model)  # trained as a task (augmented): save its model
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


def _adversarial(args: argparse.Namespace):
    """``--adversarial`` and its epsilon as an :class:`Adversarial`, or ``None``."""
    if args.adversarial is None:
        if args.adversarial_epsilon is not None:
            from transferkit.errors import ConfigError

            raise ConfigError("--adversarial-epsilon sets the radius of --adversarial: name the method too "
                              "(--adversarial fgm, pgd, freelb or smart).")
        return None
    from transferkit.trainer.adversarial import Adversarial

    return Adversarial(args.adversarial, epsilon=args.adversarial_epsilon)


def _augment(args: argparse.Namespace):
    """The ImageAugment or TextAugment the flags ask for, or None."""
    images = args.augment not in (None, "none") or args.mixup or args.cutmix or args.erasing
    texts = args.eda or args.word_mixup
    if not images and not texts:
        return None
    from transferkit.errors import ConfigError
    from transferkit.tasks.augment import ImageAugment, TextAugment

    if args.task != "classification":
        raise ConfigError("--augment, --mixup, --cutmix, --erasing, --eda and --word-mixup augment classification; this run's "
                          f"task is {args.task}.")
    if images and texts:
        raise ConfigError("--eda and --word-mixup augment texts, --augment/--mixup/--cutmix/--erasing images: give "
                          "the ones for this run's backbone.")
    if texts:
        return TextAugment(delete=args.eda, swap=args.eda, replace=args.eda, mixup=args.word_mixup)
    return ImageAugment(policy=None if args.augment in (None, "none") else args.augment, mixup=args.mixup,
                        cutmix=args.cutmix, erasing=args.erasing)


def _fit_seeds(build, train, val, trainer, args: argparse.Namespace, run_dir: Path):
    """``--seeds N``: one run per seed (``--seed``, ``--seed`` + 1, ...); prints the spread; returns the seed kept
    (best on validation) and the history over seeds. ``--keep-all`` also saves every seed's model in the run
    directory (``seed-N/model``)."""
    trainer.seeds = [args.seed + i for i in range(args.seeds)]
    trainer.keep = "all" if args.keep_all else "soup" if args.soup else "best"
    # A soup's ingredients start from one model (its head too); other seeds each build their own.
    history = trainer.fit(build() if args.soup else build, train, val, resume=args.resume)
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
