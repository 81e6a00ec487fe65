"""Optimisers, schedules, accumulation, clipping, precision, EMA and the NaN/Inf policy of the step engine.

Engine-level tests build a :class:`TrainingSetup` by hand around tiny models; the references are written out
here (formulas, or the same maths done step by step with plain PyTorch).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.backbone import BackboneInfo
from tface.core.classifier import Classifier, MarginHead
from tface.core.config import ConfigError
from tface.core.data.branches import MultiBatch
from tface.core.hooks import hookimpl
from tface.core.train import checkpoint
from tface.core.train.ema import EMA
from tface.core.train.engine import MAX_CONSECUTIVE_SKIPS, StepEngine
from tface.core.train.optim import build_optimizer, build_scheduler
from tface.core.train.setup import TrainingSetup, optimisation_parts
from tface.core.train.trainer import Trainer, TrainingError


class MarginOnly(MarginHead):
    """Additive cosine margin times a scale; ``poison`` makes the logits NaN (a step that blows up)."""

    def __init__(self, s: float = 8.0, m: float = 0.2):
        super().__init__()
        self.s, self.m, self.poison = s, m, False

    def forward(self, batch):
        rows, cols, t = batch.local_targets()
        logits = batch.with_targets(rows, cols, t - self.m) * self.s
        return logits * math.nan if self.poison else logits


def make_setup(backbone: nn.Module, classes: int = 5, **train) -> TrainingSetup:
    cfg = recipe.TrainConfig(**train)
    torch.manual_seed(0)
    classifiers = nn.ModuleDict({"a": Classifier(classes, 6, MarginOnly())})
    cpu = torch.device("cpu")
    return TrainingSetup(device=cpu, backbone=backbone, classifiers=classifiers, weights={"a": 1.0}, loader=None,
                         memory_format=torch.contiguous_format, info=BackboneInfo(6, 4), eval_provided={},
                         data_seconds=0.0, cfg=cfg,
                         **optimisation_parts(cfg, backbone, classifiers, cpu))


def linear_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.PReLU(16), nn.Linear(16, 6))


def bn_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Linear(16, 6))


def batch(n: int, seed: int, classes: int = 5) -> MultiBatch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g)
    return MultiBatch(images, (labels,), ("a",), (n,))


def params(setup: TrainingSetup) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (setup.backbone, setup.classifiers) for p in m.parameters()]


def toy_recipe(tmp_path, overrides=()):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return recipe.load(path, list(overrides))


# -- recipe keys -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ('train.optimizer="adam"', "train.optimizer: 'optimizer' must be in ('sgd', 'adamw') (got 'adam')"),
    ("train.betas=[0.9, 1.0]", "train.betas: betas must lie in [0, 1), got [0.9, 1.0]"),
    ("train.betas=[0.9]", "train.betas: expected an array of 2 items, got 1"),
    ('train.schedule="linear"', "train.schedule: 'schedule' must be in ('step', 'cosine', 'poly') (got 'linear')"),
    ("train.min_lr=0.5", "train.min_lr: min_lr = 0.5 is above lr = 0.1"),
    ("train.poly_power=0", "train.poly_power: 'poly_power' must be > 0: 0.0"),
    ("train.accumulate=0", "train.accumulate: 'accumulate' must be > 0: 0"),
    ("train.clip_grad_norm=-1", "train.clip_grad_norm: 'clip_grad_norm' must be >= 0: -1.0"),
    ('train.precision="fp8"', "train.precision: 'precision' must be in ('fp32', 'bf16', 'fp16') (got 'fp8')"),
    ("train.ema_decay=1", "train.ema_decay: 'ema_decay' must be < 1: 1.0"),
    ('train.on_nonfinite="ignore"', "train.on_nonfinite: 'on_nonfinite' must be in ('stop', 'skip') (got 'ignore')"),
])
def test_bad_optimisation_keys_are_named(tmp_path, override, message):
    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    with pytest.raises(ConfigError) as err:
        recipe.load(path, [override])
    assert message in str(err.value)


def test_defaults_are_todays_sgd_step_fp32():
    cfg = recipe.TrainConfig()
    assert (cfg.optimizer, cfg.schedule, cfg.precision, cfg.accumulate, cfg.clip_grad_norm, cfg.ema_decay,
            cfg.on_nonfinite, cfg.compile) == ("sgd", "step", "fp32", 1, 0.0, 0.0, "stop", False)
    opt = build_optimizer(cfg, [nn.Linear(2, 2)])
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is False


# -- schedules -----------------------------------------------------------------------------------------

def lrs(**train) -> list[float]:
    cfg = recipe.TrainConfig(**train)
    opt = build_optimizer(cfg, [nn.Linear(2, 2)])
    sched = build_scheduler(cfg, opt)
    out = []
    for _ in range(cfg.max_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_after_linear_warmup():
    lr, lo, w, t = 0.2, 0.02, 4, 20
    got = lrs(lr=lr, min_lr=lo, warmup_steps=w, warmup_start=0.25, max_steps=t, schedule="cosine")
    want = [lr * (0.25 + 0.75 * s / w) if s < w else lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * (s - w) / (t - w)))
            for s in range(t)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[w] == pytest.approx(lr) and got[-1] > lo


def test_poly_schedule_after_linear_warmup():
    lr, lo, w, t, power = 0.1, 0.001, 3, 15, 2.0
    got = lrs(lr=lr, min_lr=lo, warmup_steps=w, max_steps=t, schedule="poly", poly_power=power)
    want = [lr * (0.1 + 0.9 * s / w) if s < w else lo + (lr - lo) * (1 - (s - w) / (t - w)) ** power
            for s in range(t)]
    assert got == pytest.approx(want, rel=1e-12)


def test_step_schedule_with_warmup_still_ignores_min_lr():
    got = lrs(lr=0.1, warmup_steps=2, max_steps=8, lr_milestones=[4, 6], lr_gamma=0.5, min_lr=0.05)
    assert got == pytest.approx([0.01, 0.055, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_scheduler_state_holds_no_recipe_values():
    """A resumed run follows its own recipe (a longer max_steps), not numbers frozen into the checkpoint."""
    cfg = recipe.TrainConfig(schedule="cosine", max_steps=10)
    state = build_scheduler(cfg, build_optimizer(cfg, [nn.Linear(2, 2)])).state_dict()
    assert state["lr_lambdas"] == [None, None]  # one per parameter group (decayed, not decayed)


# -- optimisers ----------------------------------------------------------------------------------------

def test_adamw_decays_weights_decoupled_and_skips_norms_and_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    lr, wd, (b1, b2), eps = 0.01, 0.1, (0.8, 0.99), 1e-8
    opt = build_optimizer(recipe.TrainConfig(optimizer="adamw", lr=lr, weight_decay=wd, betas=(b1, b2)), [model])
    assert type(opt) is torch.optim.AdamW
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(5, 3)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        decay = wd if n == "0.weight" else 0.0  # the BN layer's weight and bias and the Linear bias: none
        g, w = grads[n], before[n]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        want = w * (1 - lr * decay) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)


def test_sgd_nesterov_is_passed_on():
    opt = build_optimizer(recipe.TrainConfig(nesterov=True, momentum=0.5), [nn.Linear(2, 2)])
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.5


# -- accumulation and clipping ---------------------------------------------------------------------------

def test_k_micro_batches_make_the_update_of_one_big_batch():
    """No BatchNorm in the model: its batch statistics over B differ from those over kB (by design)."""
    big = make_setup(linear_net(), accumulate=1, weight_decay=5e-4, momentum=0.9)
    small = make_setup(linear_net(), accumulate=3, weight_decay=5e-4, momentum=0.9)
    calls: list[bool] = []

    def sync_context(last: bool) -> contextlib.AbstractContextManager:
        calls.append(last)
        return contextlib.nullcontext()

    small.sync_context = sync_context
    engines = StepEngine(big), StepEngine(small)
    for step in (1, 2):  # two steps, so momentum carries the accumulated gradient too
        micro = [batch(24, 3 * step + j) for j in range(3)]
        whole = MultiBatch(torch.cat([b.images for b in micro]), (torch.cat([b.labels[0] for b in micro]),),
                           ("a",), (72,))
        r1 = engines[0].step([whole], step)
        r3 = engines[1].step(micro, step)
        assert r3.loss == pytest.approx(r1.loss, rel=1e-5)
        assert r3.branches["a"][0] == pytest.approx(r1.branches["a"][0], rel=1e-5)
        assert r3.branches["a"][1:] == r1.branches["a"][1:] and r3.branches["a"][2] == 72
        for p, q in zip(params(big), params(small)):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert calls == [False, False, True] * 2  # DDP's no_sync on all but the last micro-batch


def test_clipping_scales_the_gradient_to_the_norm_over_backbone_and_classifiers():
    clip = 0.05
    setup = make_setup(linear_net(), clip_grad_norm=clip, lr=1.0, momentum=0.0, weight_decay=0.0)
    ref = copy.deepcopy((setup.backbone, setup.classifiers))
    b = batch(16, 0)
    before = params(setup)
    result = StepEngine(setup).step([b], 1)
    # the same maths by hand: loss, gradients, their global norm, the scaled SGD step
    emb = ref[0](b.images.float() / 127.5 - 1.0)
    loss = ref[1]["a"](emb, b.labels[0]).loss
    grads = torch.autograd.grad(loss, [p for m in ref for p in m.parameters()])
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert norm > clip and result.grad_norm == pytest.approx(norm, rel=1e-5)
    for w, g, now in zip(before, grads, params(setup)):
        torch.testing.assert_close(now, w - g * clip / (norm + 1e-6), rtol=1e-5, atol=1e-7)


# -- precision -----------------------------------------------------------------------------------------

def test_bf16_runs_the_backbone_in_bf16_and_the_classifier_in_fp32():
    setup = make_setup(linear_net(), precision="bf16")
    seen: dict[str, torch.dtype] = {}
    setup.backbone[3].register_forward_hook(lambda m, i, o: seen.update(backbone=o.dtype))
    setup.classifiers["a"].head.register_forward_hook(lambda m, i, o: seen.update(logits=o.dtype))
    loss, _ = StepEngine(setup).forward(batch(8, 0))
    assert seen == {"backbone": torch.bfloat16, "logits": torch.float32} and loss.dtype == torch.float32


def test_classifier_casts_low_precision_logits_to_fp32_for_the_softmax():
    class HalfHead(MarginOnly):
        def forward(self, batch):
            return super().forward(batch).to(torch.bfloat16)

    torch.manual_seed(0)
    clf = Classifier(5, 6, HalfHead())
    emb, labels = torch.randn(8, 6), torch.randint(0, 5, (8,))
    loss = clf(emb, labels).loss  # bf16 logits out of the head, fp32 softmax
    assert loss.dtype == torch.float32
    reference = F.cross_entropy(clf.head(clf.head_input(emb, labels)).float(), labels)
    assert loss.item() == reference.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = clf(emb, labels).loss
        logits = clf.head(clf.head_input(emb, labels))
    assert loss.dtype == torch.float32
    assert loss.item() == F.cross_entropy(logits.float(), labels).item()


def test_bf16_training_tracks_fp32_on_the_toy(toy_plugins, tmp_path):
    out = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        Trainer(toy_recipe(tmp_path, [f'train.precision="{precision}"', "train.max_steps=10"]), run,
                echo=lambda m: None).run()
        out[precision] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert out["bf16"] != out["fp32"]  # it did run in bf16
    assert out["bf16"] == pytest.approx(out["fp32"], rel=0.05)


def test_fp16_on_cpu_is_refused_before_the_run_folder(toy_plugins, tmp_path):
    with pytest.raises(TrainingError, match=r'train.precision = "fp16" needs a CUDA device .*use "bf16" on the CPU'):
        Trainer(toy_recipe(tmp_path, ['train.precision="fp16"']), tmp_path / "run", echo=lambda m: None).run()
    assert not (tmp_path / "run").exists()


def test_fp16_step_scales_the_loss_and_clips_the_unscaled_gradient(toy_plugins, tmp_path):
    """The engine is device-agnostic, so its fp16 path runs here on the CPU (the trainer allows fp16 on GPUs only)."""
    fp32 = make_setup(linear_net(), clip_grad_norm=0.05)
    fp16 = make_setup(linear_net(), clip_grad_norm=0.05, precision="fp16")
    assert fp16.scaler is not None and fp32.scaler is None
    fp16.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # the default 65536 overflows this toy at first
    data = [batch(16, 0), batch(16, 1)]
    r32, r16 = StepEngine(fp32).step(data, 1), StepEngine(fp16).step(data, 1)
    assert r16.grad_norm == pytest.approx(r32.grad_norm, rel=1e-2)  # unscaled before clipping
    for p32, p16 in zip(params(fp32), params(fp16)):
        torch.testing.assert_close(p16, p32, rtol=1e-2, atol=1e-4)
    # the trainer registers the scaler as extra state, so a checkpoint holds this
    assert fp16.scaler.state_dict()["scale"] == 256.0 and fp16.scaler.state_dict()["_growth_tracker"] == 1


def test_fp16_overflow_is_the_scalers_business():
    setup = make_setup(linear_net(), precision="fp16")
    setup.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # the fp16 gradients overflow
    before = params(setup)
    result = StepEngine(setup).step([batch(16, 0)], 1)
    assert not result.skipped and math.isfinite(result.loss)
    assert all(torch.equal(a, b) for a, b in zip(before, params(setup)))  # the scaler skipped the update
    assert setup.scaler.get_scale() == 2.0**99 and setup.scheduler.last_epoch == 1  # a step like any other


# -- EMA -------------------------------------------------------------------------------------------------

def test_ema_follows_the_ramped_decay_formula():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, 0.5)
    w0 = model[0].weight.detach().clone()
    avg = w0.clone()
    for n in range(1, 5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].num_batches_tracked.fill_(n)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13, then 0.5
        avg = d * avg + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(ema.module[0].weight, avg)
    assert int(ema.module[1].num_batches_tracked) == 4 and ema.updates == 4
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_weights_are_evaluated_exported_and_checkpointed(toy_plugins, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(toy_recipe(tmp_path, ["train.ema_decay=0.9", "train.max_steps=12"]), run, echo=lambda m: None)
    trainer.run()
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    exported = checkpoint.load(run / "checkpoints" / "backbone.pt")
    assert set(state["extra"]) == {"ema"} and state["extra"]["ema"]["updates"] == 12  # no scaler in bf16/fp32
    assert all(torch.equal(exported[k], v) for k, v in state["extra"]["ema"]["module"].items())
    assert not torch.equal(exported["net.2.weight"], state["backbone"]["net.2.weight"])
    assert trainer.setup.eval_backbone is trainer.setup.ema.module


# -- NaN / Inf policy ------------------------------------------------------------------------------------

def test_nonfinite_loss_stops_naming_step_and_branch(toy_plugins, tmp_path):
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step 2 \(branch 'toydata'\), lr 1e\+30; "):
        Trainer(toy_recipe(tmp_path, ["train.lr=1e30", "train.warmup_steps=0", "head.s=1e30"]),
                tmp_path / "run", echo=lambda m: None).run()


def test_skip_drops_the_update_entirely():
    setup = make_setup(bn_net(), on_nonfinite="skip", accumulate=2, ema_decay=0.5)
    engine = StepEngine(setup)
    engine.step([batch(8, 0), batch(8, 1)], 1)
    before = (params(setup), copy.deepcopy(setup.optimizer.state_dict()), [b.clone() for b in setup.backbone.buffers()],
              setup.scheduler.last_epoch, copy.deepcopy(setup.ema.state_dict()))
    head = setup.classifiers["a"].head
    head.poison = True
    result = engine.step([batch(8, 2), batch(8, 3)], 2)
    assert result.skipped and engine.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before[0], params(setup)))
    assert all(torch.equal(a, b) for a, b in zip(before[2], setup.backbone.buffers()))  # BN statistics too
    assert setup.scheduler.last_epoch == before[3] and setup.ema.updates == before[4]["updates"]
    assert all(p.grad is None for p in setup.backbone.parameters())
    momenta = [s["momentum_buffer"] for s in setup.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip([s["momentum_buffer"] for s in before[1]["state"].values()], momenta))
    head.poison = False
    assert not engine.step([batch(8, 2), batch(8, 3)], 2).skipped and engine.consecutive_skips == 0


def test_skip_stops_after_too_many_in_a_row():
    setup = make_setup(linear_net(), on_nonfinite="skip")
    engine = StepEngine(setup)
    setup.classifiers["a"].head.poison = True
    for _ in range(MAX_CONSECUTIVE_SKIPS - 1):
        assert engine.step([batch(8, 0)], 1).skipped
    with pytest.raises(TrainingError, match=f"at step 1 \\(branch 'a'\\).*{MAX_CONSECUTIVE_SKIPS} steps in a row"):
        engine.step([batch(8, 0)], 1)


class Poison:
    """Makes the backbone's output NaN on the given training forward passes (counted from 1)."""

    def __init__(self, calls):
        self.calls, self.n = set(calls), 0

    @hookimpl
    def tface_run_start(self, recipe, run_dir, model):
        def hook(module, args, out):
            if module.training:
                self.n += 1
                if self.n in self.calls:
                    return out * math.nan
            return None
        model.register_forward_hook(hook)


def test_skipped_steps_are_counted_in_metrics_and_summary(toy_plugins, tmp_path):
    run = tmp_path / "run"
    out = Trainer(toy_recipe(tmp_path, ['train.on_nonfinite="skip"', "train.max_steps=10", "train.clip_grad_norm=5"]),
                  run, plugins=[Poison({3, 4, 9})], echo=lambda m: None).run()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10]  # ten real updates: skipped ones are no steps
    assert [m.get("skipped_steps") for m in metrics] == [2, 1]
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
    assert out["summary"]["skipped_steps"] == 3
    assert json.loads((run / "report.json").read_text())["summary"]["skipped_steps"] == 3


# -- the trainer loop ------------------------------------------------------------------------------------

class Epochs:
    def __init__(self):
        self.events = []

    @hookimpl
    def tface_epoch_end(self, epoch, step):
        self.events.append((epoch, step))


def test_trainer_takes_accumulate_batches_per_step_across_epochs(toy_plugins, tmp_path):
    # 64 samples / batch 16 = 4 batches an epoch, 3 per step: an epoch ends with batch 4 (step 1 done, step 2's
    # first batch taken) and with batch 8 (step 2 done, step 3 has two batches), and step 3 spans the epochs
    rec = Epochs()
    Trainer(toy_recipe(tmp_path, ["train.accumulate=3", "train.max_steps=4", "train.log_every=1"]), tmp_path / "run",
            plugins=[rec], echo=lambda m: None).run()
    assert rec.events == [(1, 1), (2, 2)]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]


def test_compile_trains_through_the_compiled_forward(toy_plugins, tmp_path, monkeypatch):
    """The wiring only: compiling for real takes a minute even for the toy on 2 cores (bench/train_step.py --compile
    compiles MobileFaceNet). Training goes through torch.compile's module, evaluation and checkpoints do not."""
    calls: list[int] = []

    def fake_compile(model, **options):
        def forward(x):
            calls.append(len(x))
            return model(x)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    run = tmp_path / "run"
    Trainer(toy_recipe(tmp_path, ["train.compile=true", "train.max_steps=3", "train.channels_last=true"]), run,
            echo=lambda m: None).run()
    assert calls == [16, 16, 16]
    assert set(checkpoint.load(run / "checkpoints" / "backbone.pt")) == {
        "net.2.weight", "net.2.bias", "net.3.weight", "net.3.bias", "net.3.running_mean", "net.3.running_var",
        "net.3.num_batches_tracked", "net.4.weight", "net.5.weight", "net.5.bias"}
