"""How ``finetune --task`` and ``evaluate`` read each task's data file, split off validation data and build the head."""

from __future__ import annotations

import argparse


def task_parts(args: argparse.Namespace):
    """For ``--task``: how to read a data file, split off validation data, build the head, describe the data."""
    import random

    import transferkit as tk
    from transferkit.errors import TooFewToSplitError
    from transferkit.data import (
        LabelledData,
        class_names,
        load_labelled,
        load_targets,
        random_split,
        stratified_split,
    )

    if args.task == "multilabel":
        from transferkit.data.multilabel import label_set_classes, load_label_sets

        def read_sets(path):
            return load_label_sets(path, input_column=args.text_column, label_column=args.label_column,
                                   separator=args.label_separator)

        def multi_head(data):
            names, _ = label_set_classes(data.labels)
            return lambda: tk.heads.MultiLabel(labels=names, hidden=args.hidden)

        return (read_sets, random_split, multi_head,
                lambda data: f"{len(label_set_classes(data.labels)[0])} classes, multi-label")
    def split_list(items, fraction, seed):
        if len(items) < 2:
            raise TooFewToSplitError(f"{len(items)} example is too few to hold out a validation split: pass --val.")
        held = set(random.Random(seed).sample(range(len(items)), max(1, round(len(items) * fraction))))
        return [s for i, s in enumerate(items) if i not in held], [s for i, s in enumerate(items) if i in held]

    if args.task == "ner":
        from transferkit.data.conll import load_tagged

        return (load_tagged, split_list,
                lambda data: lambda: tk.heads.TokenClassification(scheme=args.scheme, crf=args.crf),
                lambda data: f"{len(data)} tagged sentences, {args.scheme}{' + CRF' if args.crf else ''}")
    if args.task == "generation":
        from transferkit.data import load_raw

        target = args.target_column[0] if args.target_column else "target"

        def read_pairs(path):
            table = load_raw(path, input_column=args.text_column if args.text_column != "text" else "input",
                             label_column=target)
            return list(zip(table.inputs, table.labels))

        return (read_pairs, split_list, lambda data: lambda: tk.heads.Generation(max_new_tokens=args.max_new_tokens),
                lambda data: f"{len(data)} (input, target) pairs")
    if args.task == "qa":
        from transferkit.data.squad import load_squad

        def split_questions(examples, fraction, seed):  # by context: no paragraph in both parts
            contexts = sorted({e.context for e in examples})
            if len(contexts) < 2:
                raise TooFewToSplitError("the questions share one context: too few to hold out a validation "
                                         "split by context; pass --val.")
            held = set(random.Random(seed).sample(contexts, max(1, round(len(contexts) * fraction))))
            return [e for e in examples if e.context not in held], [e for e in examples if e.context in held]

        return (load_squad, split_questions,
                lambda data: lambda: tk.heads.QuestionAnswering(
                    stride=args.stride, allow_unanswerable=any(not e.answerable for e in data)),
                lambda data: f"{len(data)} questions, {sum(not e.answerable for e in data)} unanswerable")
    if args.task == "pair":
        from transferkit.tasks.pair import load_pairs

        target = args.target_column[0] if args.target_column else None

        def read_pairs(path):
            texts, labels, _ = load_pairs(path, text_a_column=args.text_a_column, text_b_column=args.text_b_column,
                                          label_column=target or args.label_column)
            return [(a, b, y) for (a, b), y in zip(texts, labels)]

        return (read_pairs, split_list, lambda data: lambda: tk.heads.Pair(target=target, hidden=args.hidden),
                lambda data: f"{len(data)} text pairs" + (f", score {target!r}" if target else ""))
    if args.task == "detection":
        from transferkit.data.boxes import load_boxes

        def detection_head(data):
            names = load_boxes(args.data)[1]  # COCO categories; VOC / CSV: the sorted labels of the data
            return lambda: tk.heads.Detection(labels=names or sorted({str(c) for e in data for c in e.labels}),
                                              arch=args.arch)

        return (lambda path: load_boxes(path)[0], split_list, detection_head,
                lambda data: f"{len(data)} images, {sum(len(e.boxes) for e in data)} boxes")
    if args.task == "segmentation":
        from transferkit.data.masks import load_masked

        def segmentation_head(data):
            names = load_masked(args.data)[1]  # COCO categories (after "background"); index masks: from the data
            return lambda: tk.heads.Segmentation(labels=names)

        return (lambda path: load_masked(path)[0], split_list, segmentation_head,
                lambda data: f"{len(data)} images with masks")
    if args.task == "regression":
        columns = args.target_column or [args.label_column]

        def read(path):
            inputs, targets, origins = load_targets(path, input_column=args.text_column, target_columns=columns)
            return LabelledData(inputs, targets, origins, args.text_column)

        return (read, random_split, lambda data: lambda: tk.heads.Regression(columns, hidden=args.hidden),
                lambda data: f"{len(columns)} target{'s' if len(columns) > 1 else ''}: {', '.join(columns)}")

    def read_classes(path):
        return load_labelled(path, text_column=args.text_column, label_column=args.label_column)

    def head(data):
        names, _ = class_names(data.labels)  # integer labels are class names too: 5 and 7 make two classes
        return lambda: tk.heads.Classification(labels=names, hidden=args.hidden, prototypes=getattr(args, "prototypes", None))

    return read_classes, stratified_split, head, lambda data: f"{len(class_names(data.labels)[0])} classes"
