"""The single-process classifier: all class centres in this process, and the softmax cross-entropy over them.

Cross-entropy is computed here, not in the head, so that a head never needs to know whether the softmax
runs over one process or many.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tface.core.classifier.contract import HeadInput, HeadOutput

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """Class centres ``[C·K, D]`` plus the softmax cross-entropy over them.

    Centres are L2-normalised at every forward, so their scale never matters to the head.
    """

    def __init__(self, num_classes: int, embedding_size: int, head: nn.Module, init_std: float = 0.01):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.head = head
        self.k = int(getattr(head, "centres_per_class", 1))
        self.weight = nn.Parameter(torch.randn(num_classes * self.k, embedding_size) * init_std)

    def _cosines(self, unit: Tensor, centres: Tensor) -> Tensor:
        cos = F.linear(unit, F.normalize(centres, dim=1, eps=1e-12)).clamp(-1.0, 1.0)
        if self.k > 1:
            cos = cos.view(cos.shape[0], self.num_classes, self.k)
        return cos

    def head_input(self, embeddings: Tensor, labels: Tensor) -> HeadInput:
        norms = embeddings.norm(dim=1)
        unit = embeddings / norms.clamp_min(1e-12).unsqueeze(1)
        cos = self._cosines(unit, self.weight)
        flat = cos if self.k == 1 else cos.max(dim=2).values
        target_cos = flat.gather(1, labels.view(-1, 1)).view(-1).detach()
        return HeadInput(
            cos=cos,
            target_col=labels,
            target_cos=target_cos,
            norms=norms,
            num_classes=self.num_classes,
            detached=lambda: self._cosines(unit, self.weight.detach()),
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy loss (plus the head's own term) and the margin-free cosines ``[N, C]``."""
        batch = self.head_input(embeddings, labels)
        out = self.head(batch)
        if not isinstance(out, HeadOutput):
            out = HeadOutput(out)
        logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # fp32 softmax under AMP
        loss = F.cross_entropy(logits, labels)
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        cos = batch.cos if self.k == 1 else batch.cos.max(dim=2).values
        return loss, cos.detach()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, centres_per_class={self.k}"

