import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerprune import LayerpruneError, create_model, make_loader
from layerprune.train import TrainSettings, train


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resnet20_learns_digits(train_loader):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    history = train(model, train_loader(256), TrainSettings(epochs=3, lr=0.1))
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert history[-1].train_accuracy > history[0].train_accuracy + 0.3


def test_validation_metrics_come_from_the_val_batches(make_mlp, train_loader, val_loader):
    history = train(make_mlp(), train_loader(512), TrainSettings(epochs=3, lr=0.05), val_batches=val_loader)
    assert [r.epoch for r in history] == [0, 1, 2]
    assert history[-1].val_accuracy > 0.7 and history[-1].val_loss < history[0].val_loss


def test_recorded_learning_rates_follow_the_schedule(make_mlp, train_loader):
    settings = TrainSettings(epochs=4, lr=0.05, schedule="step", milestones=(0.75,), warmup_epochs=1)
    history = train(make_mlp(), train_loader(64), settings)
    assert [r.lr for r in history] == pytest.approx([0.005, 0.05, 0.05, 0.005])


def test_each_step_descends_the_configured_loss_at_the_scheduled_learning_rate(digits, make_mlp):
    x, y = digits.val.batch(range(64))
    settings = TrainSettings(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                             warmup_epochs=1, label_smoothing=0.2)  # lr 0.01, then 0.1
    by_hand = make_mlp()
    for epoch in range(2):  # plain gradient descent, one batch per epoch
        by_hand.zero_grad()
        F.cross_entropy(by_hand(x), y, label_smoothing=0.2).backward()
        with torch.no_grad():
            for p in by_hand.parameters():
                p -= settings.lr_at(epoch) * p.grad
    model = make_mlp()
    train(model, [(x, y)], settings)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), by_hand.parameters()))


def test_a_student_distilled_with_alpha_1_follows_the_teacher_not_the_labels(digits, make_mlp, val_loader):
    teacher = make_mlp(seed=1)
    train(teacher, make_loader(digits.train, 64, shuffle=True, seed=0), TrainSettings(epochs=5, lr=0.05))
    # The teacher's classes are shifted by one (a permutation matrix on its logits), so agreeing with
    # it means disagreeing with the labels: only the distillation term can teach that.
    shift = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        shift.weight.copy_(torch.eye(10).roll(1, dims=0))
    teacher = nn.Sequential(teacher, shift).eval()

    @torch.no_grad()
    def agreement_and_accuracy(model):
        x, y = next(iter(val_loader))
        pred = model.eval()(x).argmax(1)
        return float((pred == teacher(x).argmax(1)).float().mean()), float((pred == y).float().mean())

    student = make_mlp(seed=2)
    before, _ = agreement_and_accuracy(student)
    settings = TrainSettings(epochs=3, lr=0.05, distill_alpha=1.0, distill_temperature=2.0)
    train(student, make_loader(digits.train.subset(range(512)), 64, shuffle=True, seed=0), settings,
          teacher=teacher)
    after, accuracy = agreement_and_accuracy(student)
    assert before < 0.3 < 0.7 < after
    assert accuracy < 0.2


def test_distillation_without_a_teacher_is_refused(make_mlp, train_loader):
    with pytest.raises(LayerpruneError, match="^distill_alpha: .*no teacher"):
        train(make_mlp(), train_loader(64), TrainSettings(epochs=1, distill_alpha=0.5))


def test_frozen_parameters_stay_unchanged_despite_weight_decay(make_mlp, train_loader):
    model = make_mlp()
    model[1].requires_grad_(False)
    frozen, trained = model[1].weight.clone(), model[3].weight.clone()
    train(model, train_loader(128), TrainSettings(epochs=1, lr=0.1, weight_decay=0.1))
    assert torch.equal(model[1].weight, frozen)
    assert not torch.equal(model[3].weight, trained)


def test_zero_epochs_returns_nothing_and_leaves_the_model_alone(make_mlp, train_loader, tmp_path):
    model = make_mlp().train()
    before = _state(model)
    assert train(model, train_loader(64), TrainSettings(epochs=0), checkpoint_path=tmp_path / "c.pt") == []
    assert _same_state(_state(model), before) and model.training
    assert list(tmp_path.iterdir()) == []


def test_the_model_ends_in_eval_mode(make_mlp, train_loader):
    model = make_mlp().train()
    train(model, train_loader(64), TrainSettings(epochs=1))
    assert not any(m.training for m in model.modules())


def test_log_gets_one_summary_line_per_epoch(make_mlp, train_loader, val_loader):
    lines = []
    train(make_mlp(), train_loader(64), TrainSettings(epochs=2), val_batches=val_loader, log=lines.append,
          description="finetune")
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[1].startswith("finetune epoch 2/2  lr ") and "val_acc" in lines[1]


def test_progress_bars_do_not_change_the_result(make_mlp, train_loader):
    quiet, shown = make_mlp(), make_mlp()
    train(quiet, train_loader(128), TrainSettings(epochs=2))
    train(shown, train_loader(128), TrainSettings(epochs=2), progress=True)
    assert _same_state(quiet.state_dict(), shown.state_dict())


def test_batches_per_epoch_ends_each_epoch_early_on_other_batches(make_mlp, train_loader):
    model, seen = make_mlp(), []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].sum().item()))
    loader = train_loader(512, batch_size=32)
    assert len(loader) == 16
    history = train(model, loader, TrainSettings(epochs=2, lr=0.05, batches_per_epoch=3))
    assert len(history) == 2 and len(seen) == 6
    assert seen[:3] != seen[3:]  # each epoch draws its own shuffled batches


def test_batches_per_epoch_must_be_a_positive_count():
    with pytest.raises(LayerpruneError, match="batches_per_epoch"):
        TrainSettings(epochs=1, batches_per_epoch=0)
