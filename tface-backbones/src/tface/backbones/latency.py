"""Backbone size, FLOPs and inference latency (torch eager, and ONNX Runtime when installed).

Latency is the median of repeated forward passes after warm-up, in eval mode under ``torch.inference_mode``,
with the thread count fixed for both runtimes, so the ORT/eager ratio compares the runtimes and not the
machine. FLOPs are counted by ``torch.utils.flop_counter`` (multiply and add counted separately, so
GFLOPs = 2 × GMACs; insightface's tables quote GMACs as "GFlops").
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

__all__ = ["LatencyResult", "count_flops", "model_size", "median_ms", "bench_backbone", "markdown", "TFACE_TABLE"]

#: The backbones of TFace's README latency table (reference §11.1), in its order.
TFACE_TABLE = ("efficientnet_b0", "efficientnet_b1", "mobilefacenet", "ghostnet", "ir_18", "ir_34", "ir_50", "ir_101")


@attrs.frozen
class LatencyResult:
    backbone: str
    input_size: int
    batch: int
    threads: int
    params: int
    size_mib: float
    gflops: float
    eager_ms: float
    onnx_ms: float | None = None
    channels_last_ms: float | None = None

    @property
    def onnx_ratio(self) -> float | None:
        """ORT latency / eager latency (below 1: ORT is faster)."""
        return self.onnx_ms / self.eager_ms if self.onnx_ms is not None else None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["onnx_ratio"] = self.onnx_ratio
        return d


def model_size(model: nn.Module) -> tuple[int, float]:
    """(parameters, fp32 size in MiB of parameters + buffers) — TFace's "size" column counts BN buffers."""
    params = sum(p.numel() for p in model.parameters())
    floats = params + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return params, floats * 4 / 2**20


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``x`` (torch's counter: convolutions, matmuls; elementwise ops free)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def median_ms(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _onnx_ms(model: nn.Module, x: torch.Tensor, threads: int, warmup: int, repeats: int) -> float:
    import onnxruntime as ort

    from tface.backbones.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_size=x.shape[-1], verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return median_ms(lambda: session.run(None, feed), warmup=warmup, repeats=repeats)


def bench_backbone(name: str, *, batch: int = 1, threads: int = 1, input_size: int = 112, onnx: bool = False,
                   channels_last: bool = False, warmup: int = 5, repeats: int = 20,
                   options: dict[str, Any] | None = None) -> LatencyResult:
    """Measure one registered backbone (built through the registry with ``options``)."""
    from tface.core import registry

    opts = dict(options or {})
    if input_size != 112:
        opts.setdefault("input_size", input_size)
    model = registry.create("backbones", name, **opts).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        params, size = model_size(model)
        flops = count_flops(model, x[:1])
        with torch.inference_mode():
            eager = median_ms(lambda: model(x), warmup=warmup, repeats=repeats)
            cl = None
            if channels_last:
                model_cl = model.to(memory_format=torch.channels_last)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                cl = median_ms(lambda: model_cl(x_cl), warmup=warmup, repeats=repeats)
                model = model.to(memory_format=torch.contiguous_format)
        ort_ms = _onnx_ms(model, x, threads, warmup, repeats) if onnx else None
    finally:
        torch.set_num_threads(previous)
    return LatencyResult(name, input_size, batch, threads, params, size, flops / 1e9, eager, ort_ms, cl)


def markdown(results: Sequence[LatencyResult]) -> str:
    """A table in the shape of TFace's README latency table, plus counts and the ORT/eager ratio."""
    has_onnx = any(r.onnx_ms is not None for r in results)
    has_cl = any(r.channels_last_ms is not None for r in results)
    head = ["Backbone", "Params (M)", "Size (MiB)", "GFLOPs", "Eager (ms)"]
    if has_cl:
        head.append("Eager channels-last (ms)")
    if has_onnx:
        head += ["ONNX Runtime (ms)", "ORT / eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r.backbone, f"{r.params / 1e6:.2f}", f"{r.size_mib:.1f}", f"{r.gflops:.2f}", f"{r.eager_ms:.2f}"]
        if has_cl:
            row.append(f"{r.channels_last_ms:.2f}" if r.channels_last_ms is not None else "–")
        if has_onnx:
            row += [f"{r.onnx_ms:.2f}" if r.onnx_ms is not None else "–",
                    f"{r.onnx_ratio:.2f}" if r.onnx_ratio is not None else "–"]
        lines.append("| " + " | ".join(row) + " |")
    if results:
        r = results[0]
        lines.append("")
        lines.append(f"Input {r.batch}×3×{r.input_size}×{r.input_size}, {r.threads} thread(s), median latency after "
                     "warm-up, eval mode, fp32.")
    return "\n".join(lines) + "\n"
