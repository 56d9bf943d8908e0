"""Export a model out of Python: ONNX (run by ONNX Runtime) or TorchScript, with its preprocessing beside it.

``model.export(DIR, format="onnx")`` (CLI: ``transferkit export --model M --format onnx --output DIR``) writes::

    model.onnx | model.pt   the backbone and head as one graph: raw tensors in, the head's logits out
    model.int8.onnx         with quantize="int8": weights stored as int8, activations quantised on the fly
    config.json             {"format": "transferkit", "saved": "export", "export": {...}, "backbone", "head"}
    backbone/               the tokenizer or vocabulary files (the preprocessing travels with the graph)
    README.md

The graph's inputs are the tensors the backbone's preprocessing makes (``input_ids``, ``attention_mask``,
``token_type_ids``; ``pixel_values``) with a dynamic batch axis and, for text, a dynamic sequence axis.
:func:`load_exported` reads the directory back as an :class:`ExportedModel` that preprocesses raw inputs the way
the backbone does and runs the graph (ONNX Runtime or ``torch.jit``), with the head's ``predict`` and
``predict_proba``.

Exportable heads are those whose forward pass maps the features to one tensor (classification, multi-label,
regression, token classification, extractive QA's start/end logits, segmentation, a cross-encoder pair head, which
``ExportedModel.predict`` then takes ``(text_a, text_b)`` pairs for); detection (boxes of varying number,
torchvision's post-processing), generation (a decoding loop) and bi-encoder pair heads (two passes) are refused. PEFT adapters that can be
merged are merged into the exported graph (LoRA, DoRA, IA³, BitFit, norm-tuning); bottleneck adapters and prompt
tuning are exported as the layers they are.

The ONNX graph comes from PyTorch's TorchScript-based exporter (``dynamo=False``, opset 17): the newer
``torch.export``-based one does not yet trace transformers' mask construction and our feature-shape checks.
int8 dynamic quantisation is ONNX Runtime's ``quantize_dynamic`` (Linear/MatMul weights as int8, per channel).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit import files
from transferkit.errors import CheckpointError, ConfigError

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


class ExportError(ConfigError):
    """A model cannot be exported as asked (a head whose outputs are not one tensor, an unknown format)."""


class _Graph(nn.Module):
    """The model as a function of positional tensors returning the head's logits (what tracing needs)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)))["logits"]


def example_inputs(backbone, pairs: bool = False) -> list[Any]:
    """Two raw inputs of different sizes for tracing: texts (or text pairs) of different lengths, or two images."""
    if pairs:
        return [("an example premise", "a hypothesis"),
                ("a second, rather longer example premise to give the trace two lengths", "and its hypothesis")]
    if backbone.modality == "text":
        return ["an example sentence", "a second, rather longer example sentence to give the trace two lengths"]
    size = backbone.config.get("preprocess", {}).get("size") or [64, 64]
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, int(size[0]), int(size[1]), generator=gen) for _ in range(2)]


def export(model, directory: str | os.PathLike, format: str = "onnx", *, quantize: str | None = None,
           opset: int = 17, overwrite: bool = False) -> Path:
    """Export ``model`` (a :class:`~transferkit.TransferModel`) to ``directory``; see the module docstring.

    Args:
        format: ``"onnx"`` or ``"torchscript"``.
        quantize: ``"int8"`` (ONNX only): also write ``model.int8.onnx``, dynamically quantised for CPU inference.
        opset: the ONNX opset.
        overwrite: replace a directory that holds something else (an earlier export or saved model is replaced
            without it, as ``save_pretrained`` does).

    Returns:
        ``directory`` as a Path.

    Raises:
        ExportError: an unknown format or quantisation, or a head that cannot be traced (the message says why).
    """
    from transferkit.backbones.registry import source
    from transferkit.saving import FORMAT, FORMAT_VERSION

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}.")
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantisation {quantize!r}: the one there is is 'int8' (dynamic, for CPUs).")
    if quantize and format != "onnx":
        raise ExportError("int8 quantisation is ONNX Runtime's: export with format='onnx'.")
    graph, inputs, logits = _traceable(model)
    directory = Path(directory)
    files.check_output(directory, overwrite=overwrite)
    with files.output_lock(directory):
        files.check_output(directory, overwrite=overwrite)
        files.clean_stale(directory, locked=True)
        with files.replacing_dir(directory) as tmp:
            names = list(inputs)
            dynamic = {n: ({0: "batch", 1: "sequence"} if inputs[n].ndim == 2 else {0: "batch"}) for n in names}
            dynamic["logits"] = {0: "batch", 1: "sequence"} if _per_token(logits, inputs) else {0: "batch"}
            args = tuple(inputs[n] for n in names)
            if format == "onnx":
                _onnx(graph, args, names, dynamic, tmp / FILES["onnx"], opset)
                if quantize:
                    quantize_onnx(tmp / FILES["onnx"], tmp / "model.int8.onnx")
            else:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit's notes about tracing Python conditions
                    torch.jit.save(torch.jit.trace(graph, args, check_trace=False), str(tmp / FILES["torchscript"]))
            backbone, head = graph.model.backbone, graph.model.head
            record = {"format": format, "file": FILES[format], "inputs": names, "outputs": ["logits"],
                      "dynamic_axes": dynamic, "opset": opset if format == "onnx" else None,
                      "int8_file": "model.int8.onnx" if quantize else None, "torch_version": torch.__version__}
            config = {"format": FORMAT, "format_version": FORMAT_VERSION, "saved": "export", "export": record,
                      "backbone": backbone.config, "head": head.config}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_assets = source(backbone.config["source"]).save_assets
            if save_assets is not None:
                save_assets(backbone, tmp)
            (tmp / "README.md").write_text(_card(config), encoding="utf-8")
    return directory


def _traceable(model) -> tuple[_Graph, dict[str, torch.Tensor], torch.Tensor]:
    """An eval-mode CPU copy of ``model`` (adapters merged where they can be), example inputs and its logits on them,
    checked."""
    from transferkit.backbones.adapters import METHODS

    head_type = getattr(model.head, "head_type", type(model.head).__name__)
    pairs = hasattr(model.head, "scores_raw")  # a pair head: a cross-encoder is one graph over both texts
    if pairs and getattr(model.head, "mode", None) != "cross":
        raise ExportError(f"a {head_type} head in {getattr(model.head, 'mode', '?')!r} mode encodes the two texts "
                          "apart and combines them (a bi-encoder): it has no single graph to export. Export a "
                          "cross-encoder (Pair(mode='cross')), or the backbone with a classification head.")
    model = copy.deepcopy(model).cpu().eval()
    record = model.backbone.config.get("adapters")
    if record is not None and METHODS.get(record["method"]).mergeable:
        model.merge()
    inputs = model.preprocess(example_inputs(model.backbone, pairs=pairs))
    graph = _Graph(model, list(inputs)).eval()
    try:
        with torch.no_grad():
            out = graph(*inputs.values())
    except Exception as e:  # a head that needs labels or a decoding loop to run
        raise ExportError(f"a {head_type} head cannot run on the backbone's inputs alone ({type(e).__name__}: "
                          f"{e}); it cannot be exported as one graph.") from e
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"a {head_type} head returns {type(out).__name__}, not one tensor of logits (detection: "
                          "boxes of varying number; generation: a decoding loop): it cannot be exported as one "
                          "graph. Exportable: classification, multilabel, regression, token_classification, qa, "
                          "segmentation.")
    return graph, inputs, out


def _per_token(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether the logits have a sequence axis that follows the input's (token heads)."""
    ids = inputs.get("input_ids")
    return ids is not None and logits.ndim >= 2 and logits.shape[1] == ids.shape[1]


def _onnx(graph: nn.Module, args: tuple, names: list[str], dynamic: dict, path: Path, opset: int) -> None:
    import warnings

    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx package: pip install 'transferkit[export]'.") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracing notes
        torch.onnx.export(graph, args, str(path), input_names=names, output_names=["logits"], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)


def quantize_onnx(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of ``source`` (weights int8 per channel, activations at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ExportError("int8 quantisation needs onnxruntime: pip install 'transferkit[export]'.") from e
    import logging
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's recommended pre-processing (shape inference, graph optimisation) first, then the quantisation.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        previous = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().setLevel(previous)


def _card(config: dict) -> str:
    e, b = config["export"], config["backbone"]
    return "\n".join([
        f"# transferkit export: {b['source']}:{b['name']} ({e['format']})", "",
        f"- graph: `{e['file']}`" + (f", int8: `{e['int8_file']}`" if e.get("int8_file") else ""),
        f"- inputs: {', '.join(e['inputs'])} (dynamic batch{' and sequence' if b['modality'] == 'text' else ''} axes)",
        f"- output: logits of a {config['head'].get('type')} head", "",
        "```python", "from transferkit.export import load_exported",
        "model = load_exported('THIS_DIR')  # preprocessing included; int8=True for the quantised graph",
        "model.predict([...])", "```", ""])


class ExportedModel:
    """An exported graph with the backbone's preprocessing and the head's decoding: ``predict``/``predict_proba``
    like :class:`~transferkit.TransferModel`, running in ONNX Runtime (or ``torch.jit`` for TorchScript).

    Attributes:
        run: ``run(tensors: dict) -> numpy logits``.
    """

    def __init__(self, directory: Path, config: dict, int8: bool = False, threads: int | None = None):
        from transferkit.heads import head_from_config
        from transferkit.saving import _rebuild_backbone

        record = config["export"]
        self.directory = directory
        self.inputs = record["inputs"]
        # The preprocessing is rebuilt from the saved settings and files (weights are not needed, nor loaded).
        self.backbone = _rebuild_backbone({"backbone": {k: v for k, v in config["backbone"].items()
                                                        if k != "adapters"}}, directory)
        self.head = head_from_config(config["head"])
        if record["format"] == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            name = record["int8_file"] if int8 else record["file"]
            if int8 and not name:
                raise CheckpointError(f"{directory} has no int8 graph: export with quantize='int8'.")
            session = ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])
            wanted = [i.name for i in session.get_inputs()]
            self.run = lambda tensors: session.run(None, {n: tensors[n].numpy() for n in wanted})[0]
        else:
            if int8:
                raise CheckpointError("int8 graphs are ONNX: export with format='onnx', quantize='int8'.")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
                module = torch.jit.load(str(directory / record["file"]))

            def run(tensors):
                with torch.inference_mode():
                    return module(*(tensors[n] for n in self.inputs)).numpy()
            self.run = run

    def outputs(self, raw_inputs: Any, batch_size: int = 32) -> torch.Tensor:
        """The graph's logits for raw inputs, texts batched by length (rows in input order)."""
        from transferkit.backbones.base import length_batches, restore_order
        from transferkit.data import prediction_inputs

        inputs, _ = prediction_inputs(raw_inputs)
        batches = length_batches(inputs, batch_size)
        rows = [torch.from_numpy(self.run(self.backbone.preprocess([inputs[i] for i in indices])))
                for indices in batches]
        return restore_order(torch.cat(rows), [i for indices in batches for i in indices])

    def predict_proba(self, raw_inputs: Any, batch_size: int = 32) -> torch.Tensor:
        return self.head.scores(self.outputs(raw_inputs, batch_size))

    def predict(self, raw_inputs: Any, batch_size: int = 32) -> Any:
        return self.head.predict(self.outputs(raw_inputs, batch_size))


def load_exported(directory: str | os.PathLike, *, int8: bool = False, threads: int | None = None) -> ExportedModel:
    """Read a directory written by :func:`export`.

    Args:
        int8: run the int8-quantised ONNX graph (``quantize="int8"`` at export).
        threads: ONNX Runtime's intra-op threads (default: its own choice).

    Raises:
        CheckpointError: the directory is not an export (a saved model loads with ``TransferModel.from_pretrained``).
    """
    from transferkit.saving import read_config

    directory = Path(directory)
    config = read_config(directory)
    if config.get("saved") != "export":
        raise CheckpointError(f"{directory} is not an exported model (no model.onnx / model.pt): load a saved model "
                              "with TransferModel.from_pretrained, or export it first (transferkit export).")
    return ExportedModel(directory, config, int8=int8, threads=threads)
