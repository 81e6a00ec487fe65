"""Size/FLOPs/latency helpers, ONNX export with parity checks, and the plugin commands they back."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tface.backbones import latency
from tface.backbones.mobilefacenet import mobilefacenet
from tface.core.cli import cli


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.pool(self.bn(self.conv(x))).flatten(1))


def test_model_size_counts_parameters_and_float_buffers():
    params, mib = latency.model_size(Tiny())
    want_params = 8 * 3 * 9 + 2 * 8 + 32 * 5 + 5
    assert params == want_params
    assert mib == pytest.approx((want_params + 2 * 8) * 4 / 2**20)  # running mean/var; num_batches_tracked is int


def test_flop_count_matches_the_formula():
    x = torch.randn(1, 3, 16, 16)
    conv = 2 * 8 * 3 * 3 * 3 * 16 * 16
    fc = 2 * 32 * 5
    assert latency.count_flops(Tiny().eval(), x) == conv + fc


def test_median_ms_runs_warmup_then_repeats():
    calls = []
    ms = latency.median_ms(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8 and ms >= 0


def test_bench_backbone_and_markdown():
    r = latency.bench_backbone("mobilefacenet", warmup=0, repeats=1)
    assert (r.params, r.batch, r.threads, r.input_size) == (1_199_488, 1, 1, 112)
    assert r.gflops == pytest.approx(latency.count_flops(mobilefacenet().eval(), torch.zeros(1, 3, 112, 112)) / 1e9)
    assert r.onnx_ms is None and r.onnx_ratio is None
    table = latency.markdown([r])
    assert table.splitlines()[0].startswith("| Backbone | Params (M) | Size (MiB) | GFLOPs | Eager (ms) |")
    assert "| mobilefacenet | 1.20 | 4.7 |" in table


def test_latency_command_writes_json(tmp_path):
    out = tmp_path / "lat.json"
    res = CliRunner().invoke(cli, ["bench", "latency", "-b", "mobilefacenet,MobileFaceNet", "--repeats", "1",
                                   "--warmup", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["backbone"] for r in rows] == ["mobilefacenet", "MobileFaceNet"] and rows[0]["params"] == 1_199_488
    res = CliRunner().invoke(cli, ["bench", "latency", "-b", "mobilefacenett"])
    assert res.exit_code != 0 and 'did you mean "mobilefacenet"' in res.output


# --- ONNX ---------------------------------------------------------------------------------------------------

@pytest.fixture
def ort():
    """ONNX Runtime; `nox -s tests` installs it (the tface-backbones[onnx] extra), so CI runs these tests."""
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so parity is not tested on an identity-like network."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from tface.backbones.onnx_export import export_onnx

    model = trained_like(mobilefacenet(embedding_size=128))
    path = tmp_path_factory.mktemp("onnx") / "mfn.onnx"
    return model, export_onnx(model, path, normalize=True)


def test_export_has_a_dynamic_batch_and_matches_torch(exported, ort):
    import onnx

    model, report = exported
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 and report.batch_sizes == (1, 3)
    assert 0.05 < report.max_abs_output <= 1.0 and report.relative_diff <= 1e-3  # entries of unit rows
    graph = onnx.load(str(report.path)).graph
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}  # the backbone contract
    assert (props["tface.input_size"], props["tface.embedding_size"]) == ("112", "128")
    assert props["tface.mean"] == props["tface.std"] == "[0.5, 0.5, 0.5]"
    dim0 = graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch axis
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 112, 112)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = nn.functional.normalize(model(x), dim=1).numpy()
    assert got.shape == (5, 128) and abs(got - want).max() <= 1e-4
    assert abs((got**2).sum(1) - 1).max() < 1e-5  # --normalize baked in


def test_parity_failure_is_an_error(tmp_path, monkeypatch, ort):
    from tface.backbones import onnx_export

    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: (0.5, 10.0))
    with pytest.raises(onnx_export.ExportError, match=r"differs from PyTorch by 0.5 \(tolerance 0.0001;"):
        onnx_export.export_onnx(mobilefacenet(), tmp_path / "x.onnx")
    # tiny outputs: an absolute difference under the tolerance still fails when it is large relative to them
    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: (5e-6, 1e-5))
    with pytest.raises(onnx_export.ExportError, match=r"outputs up to 1e-05, relative tolerance 0.001"):
        onnx_export.export_onnx(mobilefacenet(), tmp_path / "y.onnx")


def test_export_command_with_a_checkpoint(tmp_path, ort):
    model = trained_like(mobilefacenet(embedding_size=64))
    ckpt = tmp_path / "backbone.pt"
    # DDP-style prefix, and a "model" entry that is not the backbone: tface eval always took "backbone" first,
    # the export's former reader took "model" and refused the file (issue 10: one reader, tface.core.weights).
    torch.save({"model": {"head.kernel": torch.zeros(2, 2)},
                "backbone": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "onnx", "-b", "MobileFaceNet", "-c", str(ckpt), "-o", str(out),
                                   "--option", "embedding_size=64"])
    assert res.exit_code == 0, res.output
    assert "max abs diff" in res.output and out.exists()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        want = model(x).numpy()
    assert abs(session.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-4
    bad = CliRunner().invoke(cli, ["export", "onnx", "-b", "mobilefacenet", "-c", str(ckpt), "-o", str(out)])
    assert bad.exit_code != 0 and "output_layer.linear.weight" in bad.output  # 64-d checkpoint, 512-d model


def test_without_the_onnx_extra_the_error_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    from tface.backbones import onnx_export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    with pytest.raises(onnx_export.ExportError, match=r'pip install "tface-backbones\[onnx\]"'):
        onnx_export.export_onnx(mobilefacenet(), tmp_path / "x.onnx")
    res = CliRunner().invoke(cli, ["bench", "latency", "-b", "mobilefacenet", "--onnx"])
    assert res.exit_code != 0 and "--onnx needs onnx, onnxruntime" in res.output
