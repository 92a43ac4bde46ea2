"""The severity loss shared by the classifier and baseline tasks, against hand-computed values."""
import math

import torch

from rsna2024.training.losses import IGNORE_INDEX, severity_loss


def test_weighted_cross_entropy_by_hand_with_ignored_targets():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])
    target = torch.tensor([[2, 0], [IGNORE_INDEX, IGNORE_INDEX]])
    # row 1: -log(1/3) weighted 4; row 2: -log(2/4) weighted 1; mean weighted by the weights of the kept rows
    expected = (4 * math.log(3.0) + 1 * math.log(2.0)) / (4 + 1)
    assert math.isclose(severity_loss(logits, target, (1.0, 2.0, 4.0)).item(), expected, rel_tol=1e-6)


def test_a_batch_without_labels_is_a_zero_loss_with_a_gradient_path():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = severity_loss(logits, torch.full((4,), IGNORE_INDEX), (1.0, 2.0, 4.0))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
