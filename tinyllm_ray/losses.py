"""The TinyLLM objective: L = w_answer * L_answer + sum_m alpha_m * L_rationale_m. Pure torch.

Each task's loss is the mean over its sequences of the per-sequence token-mean cross-entropy, so a teacher's
weight does not depend on how many of its rationales survived filtering or on rationale length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Token-mean cross-entropy per sequence; ``shift`` for decoder-only models (predict token t+1 at t)."""
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    token_loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    mask = (labels != IGNORE_INDEX).float()
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def multi_task_loss(
    sequence_losses: torch.Tensor, task_ids: torch.Tensor, task_weights: torch.Tensor
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Weighted sum over tasks of each task's mean sequence loss; tasks absent from the batch contribute 0.

    ``task_ids[i]`` indexes ``task_weights`` (0 = answer task, m = teacher m). Returns the total and the
    detached per-task means for logging.
    """
    total = sequence_losses.new_zeros(())
    per_task: dict[int, torch.Tensor] = {}
    for task in torch.unique(task_ids).tolist():
        selected = sequence_losses[task_ids == task]
        mean = selected.mean()
        per_task[int(task)] = mean.detach()
        total = total + task_weights[task].to(sequence_losses.dtype) * mean
    return total, per_task
