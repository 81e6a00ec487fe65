"""RFW (Racial Faces in-the-Wild): verification accuracy per demographic group and its spread.

RFW ships one insightface-format ``.bin`` per group (``African_test.bin``, ``Asian_test.bin``,
``Caucasian_test.bin``, ``Indian_test.bin``, 6,000 pairs each in the usual release). Each group is scored
with the ``verification`` machinery: flip test, squared distance of L2-normalised embeddings, insightface's
10 contiguous folds and thresholds ``0.00 … 3.99``. The summary is what fairness papers tabulate (TFace's
CIFP README): the mean of the group accuracies, their sample standard deviation (``ddof = 1``) and the
skewed error ratio ``SER = max(error) / min(error)`` with ``error = 100 − accuracy``.

Without ``root``, the protocol scores the per-group sets the training data source provides
(``ctx.provided["rfw"]``): SynthFace with ``groups`` offers one held-out set per synthetic look, so the same
fairness summary can be computed for a model trained on a CPU, with no download.

TFace's ``test/verification_rfw.py`` is *not* followed where it is wrong:

* its accuracy sweep uses thresholds ``−1 … 1`` against the squared distance (range ``0 … 4``), so only
  pairs with cosine > 0.5 can ever be accepted and accuracies come out low; the ``0 … 4`` grid is used here;
* its VAL@FAR routine predicts "same" for a *low* mean-centred cosine (inverted) — not reproduced; RFW
  numbers here are accuracies only;
* its ``acc1``/``std1`` are hard-coded to 0 and its device handling passes a list of GPU ids to ``.to()``.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import attrs
from torch import nn

from tface.core.config import option, options
from tface.core.protocol import EvalContext, Result
from tface.eval.verification import bin_set_metrics, model_input

__all__ = ["GROUPS", "RFW", "rfw_summary", "skewed_error_ratio"]

#: The four RFW test groups, in the order of the RFW paper and the CIFP tables.
GROUPS: tuple[str, ...] = ("African", "Asian", "Caucasian", "Indian")


def skewed_error_ratio(accuracies: Sequence[float]) -> float:
    """``max(100 − acc) / min(100 − acc)`` over accuracies in percent.

    1.0 when every group is error-free (no skew), ``inf`` when only some are.
    """
    errors = [100.0 - a for a in accuracies]
    lo, hi = min(errors), max(errors)
    if lo <= 0.0:
        return 1.0 if hi <= 0.0 else math.inf
    return hi / lo


def rfw_summary(accuracies: Sequence[float]) -> dict[str, float]:
    """``mean``, ``std`` (sample, ``ddof = 1``, as the CIFP tables) and ``ser`` of group accuracies (percent)."""
    n = len(accuracies)
    if n < 2:
        raise ValueError(f"an RFW summary needs at least 2 groups, got {n}")
    mean = math.fsum(accuracies) / n
    var = math.fsum((a - mean) ** 2 for a in accuracies) / (n - 1)
    return {"mean": mean, "std": math.sqrt(var), "ser": skewed_error_ratio(accuracies)}


def _groups_valid(_inst: Any, _attr: Any, value: list[str] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("at least one group is needed")
    if len(set(value)) != len(value):
        raise ValueError(f"groups must be distinct, got {value}")
    for g in value:
        if not g or any(c in g for c in "/\\"):
            raise ValueError(f"a group is a file-name prefix without slashes, got {g!r}")


@options
class RFW:
    """The ``rfw`` protocol: one result per group (``accuracy``, ``accuracy_std``, ``xnorm``, ``pairs``)
    and, with two or more groups, a summary result (``dataset = "RFW"``: ``mean``, ``std``, ``ser``)."""

    name = "rfw"

    def __init__(
        self,
        # Folder holding ``<Group>_test.bin`` (or the lower-case ``<group>_test.bin``) for every group. Unset: the
        # per-group sets the training data provides (SynthFace with ``groups``).
        root: pathlib.Path | None = None,
        # Images per forward pass.
        batch_size: int = option(64, attrs.validators.gt(0)),
        # Flip test: embed each image and its mirror and add the two embeddings.
        flip: bool = True,
        # Groups to evaluate, in this order; the summary (mean, std, SER) needs at least two. Unset: with
        # ``root`` the four RFW groups (GROUPS), without it every provided group in the source's order.
        groups: Sequence[str] | None = option(None, _groups_valid),
        # Side of the square model input; other crops are resized (short side) and centre-cropped. Unset: the
        # backbone's declared ``input_size`` (a set value must equal it).
        image_size: int | None = option(None, attrs.validators.optional(attrs.validators.gt(0))),
    ):
        self.config = self.Config(
            root=pathlib.Path(root) if root is not None else None,
            batch_size=batch_size,
            flip=flip,
            groups=list(groups) if groups is not None else None,
            image_size=image_size,
        )

    def _find(self) -> tuple[list[tuple[str, pathlib.Path]], str | None]:
        """``(group, file)`` of every group found, and what is missing (None when nothing is)."""
        root = self.config.root
        assert root is not None
        if not root.is_dir():
            return [], f"root folder {root} does not exist"
        found, missing = [], []
        for group in self.config.groups if self.config.groups is not None else GROUPS:
            for name in dict.fromkeys((f"{group}_test.bin", f"{group.lower()}_test.bin")):
                if (root / name).is_file():
                    found.append((group, root / name))
                    break
            else:
                missing.append(f"{group}_test.bin")
        if missing:
            return found, f"{root} lacks {', '.join(missing)} (the lower-case spelling is accepted too)"
        return found, None

    def _provided(self, ctx: EvalContext | None) -> list[tuple[str, pathlib.Path]]:
        """``(group, file)`` from the training data's per-group sets, in their order or the order of ``groups``."""
        provided = {str(g): pathlib.Path(p) for g, p in ((ctx.provided if ctx else {}).get(self.name) or {}).items()}
        if not provided:
            raise ValueError("rfw: no groups to evaluate: set `root` (a folder of <Group>_test.bin files), or train "
                             "on SynthFace with `groups`, which provides one held-out set per group")
        names = self.config.groups if self.config.groups is not None else list(provided)
        missing = [g for g in names if g not in provided]
        if missing:
            raise ValueError(f"rfw: groups {', '.join(missing)} not provided by the training data (it provides "
                             f"{', '.join(provided)}); fix `groups` or set `root`")
        for group in names:
            if not provided[group].is_file():
                raise FileNotFoundError(f"rfw: {provided[group]} (group {group!r}) does not exist")
        return [(g, provided[g]) for g in names]

    def files(self, ctx: EvalContext | None = None) -> list[tuple[str, pathlib.Path]]:
        """``(group, file)`` for every group: from ``root`` (raising naming every missing file at once), else
        from the sets the training data provides in ``ctx``."""
        if self.config.root is None:
            return self._provided(ctx)
        found, problem = self._find()
        if problem is not None:
            raise FileNotFoundError(f"rfw: {problem}")
        return found

    def check_inputs(self) -> list[str]:
        """The missing root folder or group files, as ``root: ...`` (none without ``root``: the provided sets may
        be written during the run)."""
        if self.config.root is None:
            return []
        problem = self._find()[1]
        return [] if problem is None else [f"root: {problem}"]

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]:
        files = self.files(ctx)  # fail before spending time on the first group
        info = model_input(model, self.config.image_size, self.name)
        results: list[Result] = []
        for group, path in files:
            numbers = bin_set_metrics(model, path, device=ctx.device, batch_size=self.config.batch_size,
                                      flip=self.config.flip, image_size=info.input_size, mean=info.mean, std=info.std)
            results.append(
                {
                    "protocol": self.name,
                    "dataset": group,
                    "step": ctx.step,
                    "accuracy": numbers["accuracy"],
                    "accuracy_std": numbers["accuracy_std"],
                    "xnorm": numbers["xnorm"],
                    "pairs": numbers["pairs"],
                }
            )
        if len(results) >= 2:
            summary = rfw_summary([r["accuracy"] for r in results])
            results.append({"protocol": self.name, "dataset": "RFW", "step": ctx.step, **summary})
        return results
