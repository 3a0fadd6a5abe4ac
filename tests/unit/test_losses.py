"""The TinyLLM objective against hand computations with torch's own cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyllm_ray.losses import IGNORE_INDEX, multi_task_loss, per_sequence_loss

VOCAB = 7


def manual_sequence_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Loop over sequences: mean token cross-entropy over the non-ignored positions."""
    out = []
    for row_logits, row_labels in zip(logits, labels):
        if shift:
            row_logits, row_labels = row_logits[:-1], row_labels[1:]
        keep = row_labels != IGNORE_INDEX
        if keep.sum() == 0:
            out.append(torch.tensor(0.0))
            continue
        out.append(F.cross_entropy(row_logits[keep].float(), row_labels[keep], reduction="mean"))
    return torch.stack(out)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, VOCAB, generator=gen)
    labels = torch.tensor([
        [IGNORE_INDEX, IGNORE_INDEX, 3, 1, 4, IGNORE_INDEX],
        [IGNORE_INDEX, 2, 5, 6, 0, 1],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX],
    ])
    return logits, labels


@pytest.mark.parametrize("shift", [True, False])
def test_per_sequence_loss_matches_manual(batch, shift):
    logits, labels = batch
    got = per_sequence_loss(logits, labels, shift=shift)
    assert got.shape == (3,)
    torch.testing.assert_close(got, manual_sequence_loss(logits, labels, shift))


def test_shift_predicts_next_token():
    # Logits at position t put all mass on labels[t+1]: loss ~ 0 with shift, large without.
    labels = torch.tensor([[IGNORE_INDEX, 2, 4, 1]])
    logits = torch.full((1, 4, VOCAB), -20.0)
    for t in range(3):
        logits[0, t, labels[0, t + 1]] = 20.0
    assert per_sequence_loss(logits, labels, shift=True).item() < 1e-4
    assert per_sequence_loss(logits, labels, shift=False).item() > 10.0


def test_ignored_positions_do_not_matter(batch):
    logits, labels = batch
    base = per_sequence_loss(logits, labels, shift=False)
    perturbed = logits.clone()
    perturbed[labels == IGNORE_INDEX] += 100 * torch.randn_like(perturbed[labels == IGNORE_INDEX])
    torch.testing.assert_close(per_sequence_loss(perturbed, labels, shift=False), base)


def test_fully_ignored_sequence_is_zero_not_nan():
    logits = torch.randn(2, 4, VOCAB)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[1, 2] = 3
    out = per_sequence_loss(logits, labels, shift=False)
    assert out[0].item() == 0.0 and torch.isfinite(out).all()


def test_half_precision_logits_are_upcast(batch):
    logits, labels = batch
    out = per_sequence_loss(logits.to(torch.bfloat16), labels, shift=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, manual_sequence_loss(logits.to(torch.bfloat16), labels, True))


# ---------------------------------------------------------------- multi-task

def test_multi_task_loss_matches_hand_computation():
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0])
    task_ids = torch.tensor([0, 1, 0, 1, 1])
    weights = torch.tensor([1.0, 0.5])
    total, per_task = multi_task_loss(losses, task_ids, weights)
    expected = 1.0 * (1.0 + 3.0) / 2 + 0.5 * (2.0 + 5.0 + 8.0) / 3
    assert total.item() == pytest.approx(expected)
    assert set(per_task) == {0, 1}
    assert per_task[0].item() == pytest.approx(2.0)
    assert per_task[1].item() == pytest.approx(5.0)
    assert all(isinstance(k, int) for k in per_task)
    assert not per_task[0].requires_grad


def test_multi_task_loss_mean_not_sum_per_task():
    # Doubling a task's sequences (same values) must not change its contribution.
    weights = torch.tensor([1.0, 2.0])
    one, _ = multi_task_loss(torch.tensor([1.0, 4.0]), torch.tensor([0, 1]), weights)
    two, _ = multi_task_loss(torch.tensor([1.0, 4.0, 4.0, 4.0]), torch.tensor([0, 1, 1, 1]), weights)
    assert one.item() == pytest.approx(two.item()) == pytest.approx(9.0)


def test_absent_tasks_contribute_nothing():
    losses = torch.tensor([2.0, 4.0])
    task_ids = torch.tensor([0, 2])
    weights = torch.tensor([1.0, 100.0, 3.0])
    total, per_task = multi_task_loss(losses, task_ids, weights)
    assert total.item() == pytest.approx(2.0 + 3.0 * 4.0)
    assert set(per_task) == {0, 2}


def test_zero_weight_removes_task_gradient():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, VOCAB, generator=gen, requires_grad=True)
    labels = torch.randint(0, VOCAB, (4, 5), generator=gen)
    task_ids = torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 0.0, 0.5])
    total, per_task = multi_task_loss(per_sequence_loss(logits, labels, shift=True), task_ids, weights)
    total.backward()
    grad = logits.grad
    assert grad is not None
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[3]) == 0
    assert torch.count_nonzero(grad[0]) > 0 and torch.count_nonzero(grad[2]) > 0
    assert per_task[1].item() > 0  # still logged


def test_gradient_scales_with_weight():
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    labels = torch.randint(0, VOCAB, (2, 4))
    task_ids = torch.tensor([0, 1])

    def grads(w1: float) -> torch.Tensor:
        logits.grad = None
        total, _ = multi_task_loss(per_sequence_loss(logits, labels, shift=False), task_ids, torch.tensor([1.0, w1]))
        total.backward()
        return logits.grad.clone()

    g1, g3 = grads(1.0), grads(3.0)
    torch.testing.assert_close(g3[0], g1[0])
    torch.testing.assert_close(g3[1], 3.0 * g1[1])


def test_multi_task_loss_end_to_end_with_manual():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 6, VOCAB, generator=gen)
    labels = torch.randint(0, VOCAB, (5, 6), generator=gen)
    labels[:, :2] = IGNORE_INDEX
    task_ids = torch.tensor([0, 0, 1, 2, 2])
    weights = torch.tensor([1.0, 0.1, 2.0])
    seq = manual_sequence_loss(logits, labels, True)
    expected = seq[:2].mean() + 0.1 * seq[2] + 2.0 * seq[3:].mean()
    total, _ = multi_task_loss(per_sequence_loss(logits, labels, shift=True), task_ids, weights)
    torch.testing.assert_close(total, expected)
