"""``on = "device"`` augmenters: the split of the recipe's ops, the per-step seeds, and that a run applies them."""

from __future__ import annotations

import pytest
import torch

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.config import ConfigError
from tface.core.train import checkpoint
from tface.core.train.batchaugment import DeviceAugment, on_device, split_augmenters
from tface.core.train.components import build_components
from tface.core.train.trainer import Trainer


class Op:
    """A stand-in augmenter: ``on`` as given; a batch form unless ``batch=False``."""

    def __init__(self, on="workers", batch=True, add=1):
        self.on, self.add = on, add
        if batch:
            self.batch = lambda images, gen: images + self.add

    def __call__(self, img):
        return img


def keys(n):
    return [f"augment[{i}]" for i in range(n)]


def test_device_ops_are_the_tail():
    ops = [Op(), Op(), Op("device"), Op("device")]
    workers, device = split_augmenters(ops, keys(4))
    assert workers == ops[:2] and device == ops[2:]
    assert split_augmenters(ops[:2], keys(2)) == (ops[:2], [])
    assert split_augmenters([], []) == ([], [])
    assert [on_device(op) for op in ops] == [False, False, True, True]
    assert not on_device(lambda img: img)  # a plain callable runs in the workers


def test_a_worker_op_after_a_device_op_is_refused_naming_both():
    with pytest.raises(ConfigError) as err:
        split_augmenters([Op(), Op("device"), Op(), Op("device")], keys(4))
    assert err.value.problems == [
        "augment[2]: runs in the data workers but comes after augment[1], which runs on the device once the "
        'batch is assembled; put the on = "device" ops last']


def test_a_device_op_without_a_batch_form_is_refused():
    with pytest.raises(ConfigError, match=r"^augment\[0\]\.on: Op has no batch form, so it cannot run on the "
                                          r'device \(remove on = "device"\)'):
        split_augmenters([Op("device", batch=False)], keys(1))


def test_the_seed_of_a_micro_batch_depends_on_seed_step_micro_and_rank_alone():
    aug = DeviceAugment([], seed=5)

    def first(*args):
        return torch.rand(4, generator=aug.generator(torch.device("cpu"), *args)).tolist()

    base = first(10, 0, 0)
    assert first(10, 0, 0) == base  # drawn again: the same
    others = [first(11, 0, 0), first(10, 1, 0), first(10, 0, 1), torch.rand(4, generator=DeviceAugment(
        [], seed=6).generator(torch.device("cpu"), 10, 0, 0)).tolist()]
    assert all(o != base for o in others) and len({tuple(o) for o in others}) == 4


def test_device_ops_run_in_order():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    out = DeviceAugment([Op("device", add=1), Op("device", add=2)], seed=0)(images, step=1)
    assert torch.equal(out, images + 3)


def toy(tmp_path, *sets):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return recipe.load(path, ["train.max_steps=6", "train.log_every=3", *sets])


INVERT = 'augment=[{name="solarize",threshold=[0,0],p=1.0%s}]'  # every value inverted: no randomness


def test_a_deterministic_op_trains_alike_in_the_workers_and_on_the_device(toy_plugins, tmp_path):
    """The same op, in the workers or on the batch: bit-identical weights; without it: different ones.

    One loader worker: in the main process the per-image op would draw from the run's own generator.
    """

    def weights(name, *sets):
        out = tmp_path / name
        Trainer(toy(tmp_path, "train.num_workers=1", *sets), out, echo=lambda m: None).run()
        return checkpoint.load(out / "checkpoints" / "last.pt")["backbone"]

    parts = build_components(toy(tmp_path, INVERT % ',on="device"'))
    assert parts.worker_augmenters == [] and len(parts.device_augmenters) == 1
    assert any("(on the device, per batch)" in line for line in parts.describe())
    workers = weights("workers", INVERT % "")
    device = weights("device", INVERT % ',on="device"')
    plain = weights("plain")
    assert all(torch.equal(workers[k], device[k]) for k in workers)
    assert not all(torch.equal(workers[k], plain[k]) for k in workers)
