"""``transferkit predict``: a saved model's predictions as JSON lines, and the files dense heads write (mask PNGs,
COCO detections)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def predict(args: argparse.Namespace) -> int:
    """Run ``transferkit predict``; returns the exit code."""
    from transferkit import TransferModel
    from transferkit.data import IMAGE_SUFFIXES, load_inputs
    from transferkit.errors import InputError

    model = TransferModel.from_pretrained(args.model)
    inputs = list(args.inputs)
    if model.head.head_type == "pair":
        return _predict_pairs(model, args)
    if model.head.head_type == "qa":
        return _predict_answers(model, args)
    if args.data:
        path = Path(args.data)
        if path.is_dir():
            inputs += [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix.lower() == ".txt":
            inputs += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            inputs += load_inputs(path, input_column=args.text_column)[0]
    if not inputs:
        raise InputError("nothing to predict: give inputs on the command line or a file with --data.")
    if model.head.head_type == "segmentation":
        return _predict_masks(model, inputs, args)
    if model.head.head_type == "detection":
        return _predict_boxes(model, inputs, args)
    if hasattr(model.head, "predict_raw"):  # NER: entities with character offsets; generation: the text
        key = "entities" if model.head.head_type == "token_classification" else "prediction"
        for raw, result in zip(inputs, model.predict(inputs, batch_size=args.batch_size)):
            print(json.dumps({"input": raw, key: result}, ensure_ascii=False))
        return 0
    outputs, _ = model.outputs(inputs, batch_size=args.batch_size)
    predictions = model.head.predict(outputs)
    key = "label" if model.head.head_type == "classification" else "prediction"
    labels = getattr(model.head, "labels", None) or list(range(getattr(model.head, "num_classes", 0)))
    scores = model.head.scores(outputs) if args.proba and model.head.head_type in ("classification", "multilabel") \
        else None
    for i, (raw, prediction) in enumerate(zip(inputs, predictions)):
        record = {"input": raw if isinstance(raw, str) else repr(raw), key: prediction}
        if scores is not None:
            record["proba"] = {str(name): round(float(q), 6) for name, q in zip(labels, scores[i])}
        print(json.dumps(record, ensure_ascii=False))
    return 0


def _predict_masks(model, inputs: list, args: argparse.Namespace) -> int:
    """One JSON line per image: its size and pixels per class; with --output-dir, the mask as an index PNG."""
    import numpy as np

    from transferkit.errors import OutputExistsError
    from transferkit.tasks.segmentation import write_mask_png

    out = Path(args.output_dir) if args.output_dir else None
    if out is not None:  # never write over a file: every name is checked before the first mask is written
        names = [Path(str(raw)).stem + ".png" for raw in inputs]
        clash = sorted({n for n in names if names.count(n) > 1} | {n for n in names if (out / n).exists()})
        if clash:
            raise OutputExistsError(f"--output-dir {out}: {len(clash)} mask name(s) exist there already or come from "
                                    f"two images of the same stem ({', '.join(clash[:5])}); nothing was written. "
                                    "Choose an empty folder.")
    labels = model.head.labels
    for start in range(0, len(inputs), args.batch_size):
        chunk = inputs[start:start + args.batch_size]
        for raw, mask in zip(chunk, model.predict(chunk, batch_size=args.batch_size)):
            counts = {labels[int(c)]: int(n) for c, n in zip(*np.unique(mask, return_counts=True))}
            record = {"input": raw, "height": int(mask.shape[0]), "width": int(mask.shape[1]), "pixels": counts}
            if out is not None:
                record["mask"] = str(write_mask_png(mask, out / (Path(raw).stem + ".png")))
            print(json.dumps(record, ensure_ascii=False))
    return 0


def _predict_boxes(model, inputs: list, args: argparse.Namespace) -> int:
    """One JSON line per image (boxes in its pixels, labels, scores); with --output-dir, also COCO results JSON
    (``image_id`` = the image's position from 1, ``category_id`` = class index + 1, boxes as [x, y, w, h])."""
    from transferkit.errors import OutputExistsError
    from transferkit.files import write_json_atomic

    target = Path(args.output_dir) / "detections.json" if args.output_dir else None
    if target is not None and target.exists():
        raise OutputExistsError(f"{target} exists already; nothing was written. Choose another --output-dir.")
    index = {name: i for i, name in enumerate(model.head.labels)}
    results = []
    for start in range(0, len(inputs), args.batch_size):
        chunk = inputs[start:start + args.batch_size]
        for k, (raw, found) in enumerate(zip(chunk, model.predict(chunk, batch_size=args.batch_size))):
            print(json.dumps({"input": raw, **found}, ensure_ascii=False))
            for (x1, y1, x2, y2), label, score in zip(found["boxes"], found["labels"], found["scores"]):
                results.append({"image_id": start + k + 1, "file_name": str(raw), "category_id": index[label] + 1,
                                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": score})
    if target is not None:
        write_json_atomic(target, results)
    return 0


def _predict_pairs(model, args: argparse.Namespace) -> int:
    from transferkit.data import load_raw
    from transferkit.errors import InputError

    if not args.data or args.inputs:
        raise InputError("a pair model predicts on a file of text pairs: pass --data FILE with text_a and text_b "
                         "columns (--text-a-column/--text-b-column), not texts on the command line.")
    table = load_raw(args.data, input_column=args.text_a_column, label_column=args.text_b_column)
    pairs = list(zip(table.inputs, table.labels))
    for (a, b), prediction in zip(pairs, model.predict(pairs, batch_size=args.batch_size)):
        print(json.dumps({"text_a": a, "text_b": b, "prediction": prediction}, ensure_ascii=False))
    return 0


def _predict_answers(model, args: argparse.Namespace) -> int:
    from transferkit.data.squad import load_squad
    from transferkit.errors import InputError

    if not args.data or args.inputs:
        raise InputError("a question-answering model predicts on a file of questions: pass --data FILE (SQuAD JSON "
                         "or JSONL with question and context), not texts on the command line.")
    examples = load_squad(args.data)
    answers = model.predict([{"question": e.question, "context": e.context} for e in examples],
                            batch_size=args.batch_size)
    for example, answer in zip(examples, answers):
        print(json.dumps({"id": example.id, "question": example.question, **answer}, ensure_ascii=False))
    return 0
