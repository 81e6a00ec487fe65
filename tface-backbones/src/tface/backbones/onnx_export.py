"""ONNX export of a backbone with a dynamic batch axis, checked against PyTorch with ONNX Runtime.

TFace exported at opset 10 with a fixed batch of 1 and without the L2 normalisation; here the batch
axis is dynamic, the opset is chosen (default 18) and ``normalize=True`` bakes the L2 normalisation into
the graph so the output is ready for cosine scoring. Needs the ``onnx`` extra:
``pip install "tface-backbones[onnx]"``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import nn

from tface.core.backbone import BackboneInfo, backbone_info

__all__ = ["ExportError", "ExportReport", "Normalized", "export_onnx", "check_parity", "DEFAULT_OPSET",
           "DEFAULT_TOLERANCE", "DEFAULT_RELATIVE_TOLERANCE"]

DEFAULT_OPSET = 18  # the torch.export-based exporter implements opset >= 18
DEFAULT_TOLERANCE = 1e-4
#: Also fail when the difference exceeds this fraction of the largest output: random-init or
#: un-normalised embeddings can be tiny, and then an absolute tolerance alone proves nothing.
DEFAULT_RELATIVE_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    pass


class Normalized(nn.Module):
    """``backbone(x)`` L2-normalised per row (what verification and search compare)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.backbone(x), dim=1)


@attrs.frozen
class ExportReport:
    path: Path
    opset: int
    input_size: int
    normalize: bool
    exporter: str
    max_abs_diff: float | None  # None when not verified
    batch_sizes: tuple[int, ...] = ()
    max_abs_output: float | None = None  # the scale the difference is relative to

    @property
    def relative_diff(self) -> float | None:
        if self.max_abs_diff is None or not self.max_abs_output:
            return None
        return self.max_abs_diff / self.max_abs_output


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExportError(f"{module} is not installed; install the extra: pip install \"tface-backbones[onnx]\"")


def export_onnx(model: nn.Module, out: str | os.PathLike, *, input_size: int | None = None, opset: int = DEFAULT_OPSET,
                normalize: bool = False, verify: bool = True, tolerance: float = DEFAULT_TOLERANCE,
                relative_tolerance: float = DEFAULT_RELATIVE_TOLERANCE) -> ExportReport:
    """Export ``model`` (eval mode) to ``out`` with input ``input`` [batch, 3, S, S] and output ``embedding``.

    With ``verify`` the file is run in ONNX Runtime on random batches of two different sizes and compared
    with PyTorch; a max abs difference above ``tolerance``, or above ``relative_tolerance`` times the
    largest output, raises :class:`ExportError`.

    ``input_size`` defaults to the backbone's declared one (:mod:`tface.core.backbone`). The file's metadata
    (``metadata_props``) records the preprocessing the graph expects: ``tface.input_size``, ``tface.mean``,
    ``tface.std`` (RGB, the input is ``(x/255 - mean)/std``) and ``tface.embedding_size``.
    """
    _require("onnx")
    info = backbone_info(model)
    input_size = info.input_size if input_size is None else input_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = (Normalized(model) if normalize else model).eval()
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    exporter = "dynamo"
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(out), dynamo=True, opset_version=opset, input_names=["input"],
                              output_names=["embedding"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False)
    except Exception as first:  # fall back to the TorchScript exporter, which handles more legacy graphs
        exporter = "torchscript"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(out), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["embedding"],
                                  dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
        except Exception as second:
            raise ExportError(f"ONNX export failed: {type(first).__name__}: {first}; "
                              f"TorchScript exporter: {type(second).__name__}: {second}") from second
    _annotate(out, info, input_size)
    diff = scale = None
    sizes: tuple[int, ...] = ()
    if verify:
        sizes = (1, 3)
        diff, scale = check_parity(net, out, input_size=input_size, batch_sizes=sizes)
        if diff > tolerance or (scale > 0 and diff > relative_tolerance * scale):
            raise ExportError(f"{out}: ONNX Runtime output differs from PyTorch by {diff:.3g} (tolerance "
                              f"{tolerance:g}; outputs up to {scale:.3g}, relative tolerance {relative_tolerance:g})")
    return ExportReport(out, opset, input_size, normalize, exporter, diff, sizes, scale)


def _annotate(path: Path, info: BackboneInfo, input_size: int) -> None:
    """Write the input contract into the ONNX file's metadata, so a deployment knows how to feed it."""
    import json

    import onnx

    graph = onnx.load(str(path))
    props = {"tface.input_size": str(input_size), "tface.mean": json.dumps(list(info.mean)),
             "tface.std": json.dumps(list(info.std)), "tface.embedding_size": str(info.embedding_size),
             "tface.input": "float32 [batch, 3, S, S], RGB, (x/255 - mean)/std"}
    for key, value in props.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def check_parity(model: nn.Module, path: str | os.PathLike, *, input_size: int = 112,
                 batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> tuple[float, float]:
    """(max abs difference between PyTorch and ONNX Runtime, max abs PyTorch output) over random batches."""
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    model = model.eval()
    for n in batch_sizes:
        x = torch.randn(n, 3, input_size, input_size, generator=gen)
        with torch.inference_mode():
            want = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != want.shape:
            raise ExportError(f"{path}: ONNX output shape {got.shape} != PyTorch {want.shape} for batch {n}")
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    return worst, scale


class _quiet:
    """Silence the exporter's progress prints (it writes to stdout)."""

    def __enter__(self):
        import contextlib
        import io

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False
