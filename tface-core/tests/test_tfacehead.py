"""TFace's head checkpoints (``{branch: {"kernel": [D, C]}}``, split per rank) load into tface classifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.classifier import Classifier, MarginHead, ReduceContext, ShardedClassifier
from tface.core.train.errors import TrainingError
from tface.core.train.finetune import load_start_weights
from tface.core.train.tfacehead import tface_head_states


class Curricular(MarginHead):
    """Holds a ``t`` buffer like TFace's CurricularFace."""

    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.zeros(1))

    def forward(self, b):
        return b.cos * 8


class Rank1Of2(ReduceContext):
    world_size, rank = 2, 1


D, C = 4, 7
KERNEL = torch.arange(D * C, dtype=torch.float32).reshape(D, C)  # column j: class j


def write_splits(folder, epoch=3, prefix=""):
    """TFace's distfc files: rank r holds columns of its classes (4 + 3 for 7 classes on 2 ranks)."""
    paths = []
    for rank, (lo, hi) in enumerate([(0, 4), (4, 7)]):
        path = folder / f"HEAD_Epoch_{epoch}_Split_{rank}_checkpoint.pth"
        torch.save({"ms1m": {f"{prefix}kernel": KERNEL[:, lo:hi].clone(), f"{prefix}t": torch.tensor([0.25])}}, path)
        paths.append(path)
    return paths


def test_split_files_are_joined_in_rank_order_and_transposed(tmp_path):
    second = write_splits(tmp_path)[1]
    write_splits(tmp_path, epoch=4)  # another epoch beside it is not mixed in
    (tmp_path / "HEAD_Epoch_4_Split_0_checkpoint.pth").unlink()
    states = tface_head_states(second)  # any split brings in its siblings
    assert list(states) == ["ms1m"]
    assert torch.equal(states["ms1m"]["weight"], KERNEL.t())
    assert torch.equal(states["ms1m"]["head.t"], torch.tensor([0.25]))


def test_a_localfc_file_with_the_ddp_prefix(tmp_path):
    path = tmp_path / "HEAD_Epoch_2_checkpoint.pth"
    torch.save({"a": {"module.kernel": KERNEL, "module.t": torch.tensor([0.5])}}, path)
    states = tface_head_states(path)
    assert torch.equal(states["a"]["weight"], KERNEL.t()) and float(states["a"]["head.t"]) == 0.5


def test_a_missing_split_is_named(tmp_path):
    write_splits(tmp_path)
    (tmp_path / "HEAD_Epoch_3_Split_0_checkpoint.pth").unlink()
    torch.save({"ms1m": {"kernel": KERNEL[:, 4:]}}, tmp_path / "HEAD_Epoch_3_Split_2_checkpoint.pth")
    with pytest.raises(ValueError, match=r"split head files of epoch 3 lack rank 0 \(HEAD_Epoch_3_Split_<rank>"):
        tface_head_states(tmp_path / "HEAD_Epoch_3_Split_1_checkpoint.pth")


def test_kernels_of_different_sizes_are_refused(tmp_path):
    paths = write_splits(tmp_path)
    torch.save({"ms1m": {"kernel": torch.zeros(D + 1, 3)}}, paths[1])
    with pytest.raises(ValueError, match="the kernels are not"):
        tface_head_states(paths[0])


def _recipe(path, strict=True):
    text = TOY_RECIPE + f'\n[classifier]\ncheckpoint = "{path}"\nstrict = {str(strict).lower()}\n'
    return recipe.loads(text)


@pytest.mark.parametrize("layout", ["local", "sharded rank 1 of 2"])
def test_fine_tuning_starts_from_tface_centres(toy_plugins, tmp_path, layout):
    path = write_splits(tmp_path)[0]
    if layout == "local":
        clf = Classifier(C, D, Curricular())
        rows = slice(0, C)
    else:
        clf = ShardedClassifier(C, D, Curricular(), ctx=Rank1Of2())
        rows = slice(4, 7)
    said = []
    load_start_weights(_recipe(path), nn.Linear(1, 1), nn.ModuleDict({"toydata": clf}), said.append)
    assert torch.equal(clf.weight, KERNEL.t()[rows]) and float(clf.head.t) == 0.25
    assert said == [f"classifier: started from {path} (2 tensors)"]


def test_a_tface_file_for_another_class_count_is_refused(toy_plugins, tmp_path):
    path = write_splits(tmp_path)[0]
    clf = ShardedClassifier(C + 1, D, Curricular(), ctx=Rank1Of2())
    with pytest.raises(TrainingError, match=r"branch 'toydata': weight: shape \(7, 4\) does not fit 8 classes"):
        load_start_weights(_recipe(path), nn.Linear(1, 1), nn.ModuleDict({"toydata": clf}), print)
