"""The training state: collect everything a checkpoint holds, seed the process, save atomically."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tface.core import recipe as recipe_mod
from tface.core.train import checkpoint
from tface.core.train.rundir import RunDir
from tface.core.train.setup import TrainingSetup

__all__ = ["seed_all", "collect", "save"]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def collect(setup: TrainingSetup, recipe: recipe_mod.Recipe, step: int, epoch: int) -> dict[str, Any]:
    """The checkpoint of ``setup`` after ``step`` steps (models, optimiser, schedule, RNG, recipe)."""
    return {
        "step": step,
        "epoch": epoch,
        "backbone": setup.backbone.state_dict(),
        "classifiers": {name: c.state_dict() for name, c in setup.classifiers.items()},
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "recipe": recipe_mod.dumps(recipe),
        # fp16's loss scale and the EMA weights (None when off); backbone.pt gets the EMA weights when on
        "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
        "ema": setup.ema.state_dict() if setup.ema is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [int(x) for x in np.random.get_state()[1]]},
    }


def save(folder: RunDir, state: dict[str, Any]) -> Path:
    """Write ``checkpoints/last.pt`` and ``checkpoints/backbone.pt``; returns the path of ``last.pt``."""
    ckpt_dir = folder.path / "checkpoints"
    folder.claim(ckpt_dir / "last.pt", ckpt_dir / "backbone.pt")
    path = checkpoint.save(ckpt_dir / "last.pt", state)
    checkpoint.save(ckpt_dir / "backbone.pt", state["ema"]["module"] if state.get("ema") else state["backbone"])
    return path
