"""Losses shared by the tasks: the severity cross-entropy every classifier trains with."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target without a label (torch's own ignore_index default)


def severity_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: Sequence[float]) -> torch.Tensor:
    """Class-weighted cross-entropy over 3-class logits of any leading shape (``(..., 3)``), targets equal to
    :data:`IGNORE_INDEX` left out; a batch with no label at all gives a zero loss that still has a gradient path."""
    logits = logits.float().reshape(-1, 3)
    target = target.reshape(-1)
    if not (target != IGNORE_INDEX).any():  # a validation batch without any label
        return logits.sum() * 0.0
    weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
