import math

import pytest
import torch
import torch.nn.functional as F

from layerprune.train import distillation_loss


def _log_softmax(row):
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


def test_loss_equals_a_hand_computation():
    student = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    teacher = [[1.0, 1.5, -0.5], [-1.0, 2.0, 0.5]]
    labels = [0, 2]
    alpha, t, eps = 0.3, 2.0, 0.1
    ce = kl = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        log_p = _log_softmax(s_row)
        # label smoothing: the target is (1 - eps) on the label plus eps spread evenly over all classes
        ce += -(1 - eps) * log_p[y] - eps * sum(log_p) / len(log_p)
        log_ps = _log_softmax([v / t for v in s_row])
        log_pt = _log_softmax([v / t for v in t_row])
        kl += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    expected = (1 - alpha) * ce / 2 + alpha * t * t * kl / 2

    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels),
                            alpha=alpha, temperature=t, label_smoothing=eps)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_pure_distillation_from_identical_logits_is_zero():
    logits = torch.randn(16, 10)
    loss = distillation_loss(logits, logits.clone(), torch.randint(0, 10, (16,)), alpha=1.0, temperature=4.0)
    assert abs(float(loss)) < 1e-5  # zero up to float32 rounding (the KL is scaled by T² = 16)


def test_without_teacher_it_is_plain_cross_entropy():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.equal(distillation_loss(logits, None, labels, alpha=0.5), F.cross_entropy(logits, labels))


def test_label_smoothing_penalises_confident_correct_predictions():
    logits, labels = torch.tensor([[12.0, 0.0, 0.0], [0.0, 12.0, 0.0]]), torch.tensor([0, 1])
    plain = distillation_loss(logits, None, labels)
    smoothed = distillation_loss(logits, None, labels, label_smoothing=0.1)
    assert float(plain) < 1e-4 < 0.5 < float(smoothed)
