"""The training loss: cross-entropy, optionally blended with knowledge distillation.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network": the student also
matches the teacher's temperature-softened class probabilities. The KL term is scaled by ``T²``
because its gradients shrink as ``1/T²``; the scaling keeps the two terms' balance independent of
the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    alpha: float = 0.0,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    The KL divergence is averaged over the batch; without a teacher (or with ``α = 0``) this is the
    plain cross-entropy with ``label_smoothing``.

    >>> s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    >>> loss = distillation_loss(s, t, y, alpha=0.5, temperature=4.0)
    """
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean")
    return (1 - alpha) * ce + alpha * t * t * kd
