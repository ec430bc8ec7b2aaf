import pytest
import torch

from layerprune import CheckpointError, create_model, load_checkpoint
from layerprune.train import TrainSettings, train


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 1e-3)])
def test_a_resumed_run_ends_bitwise_identical_to_an_uninterrupted_one(stop_after, digits, optimizer, lr, tmp_path,
                                                                       train_loader, val_loader):
    settings = TrainSettings(epochs=3, optimizer=optimizer, lr=lr)

    def fresh_model(seed):
        torch.manual_seed(seed)
        return create_model("cifar_resnet20", num_classes=10, in_chans=1)

    whole = fresh_model(0)
    expected = train(whole, train_loader(128), settings, val_batches=val_loader)

    path = tmp_path / "finetune.pt"
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(0), train_loader(128), settings, val_batches=val_loader, checkpoint_path=path,
              log=stop_after(1))
    # As a new process would: a differently initialised model and a fresh loader.
    resumed = fresh_model(1)
    history = train(resumed, train_loader(128), settings, val_batches=val_loader, checkpoint_path=path)

    whole_state, resumed_state = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(whole_state[k], resumed_state[k]) for k in whole_state)
    assert [(r.lr, r.train_loss, r.val_accuracy) for r in history] == \
           [(r.lr, r.train_loss, r.val_accuracy) for r in expected]


@pytest.mark.parametrize("change, message", [
    (dict(settings=TrainSettings(epochs=2, lr=0.05)), "lr: 0.1 in the checkpoint, 0.05 now"),
    (dict(settings=TrainSettings(epochs=3, lr=0.1)), "epochs: 2 in the checkpoint, 3 now"),
    (dict(seed=1), "seed: 0 in the checkpoint, 1 now"),
])
def test_resuming_with_other_settings_is_refused_naming_the_field(stop_after, make_mlp, train_loader, tmp_path, change,
                                                                  message):
    path = tmp_path / "c.pt"
    run = dict(settings=TrainSettings(epochs=2, lr=0.1), seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(make_mlp(), train_loader(64), run["settings"], seed=run["seed"], checkpoint_path=path,
              log=stop_after(1))
    run.update(change)
    with pytest.raises(CheckpointError, match=message):
        train(make_mlp(), train_loader(64), run["settings"], seed=run["seed"], checkpoint_path=path)


def test_the_checkpoint_is_written_atomically_leaving_no_temporary_files(make_mlp, train_loader, tmp_path):
    train(make_mlp(), train_loader(64), TrainSettings(epochs=2), checkpoint_path=tmp_path / "run" / "c.pt")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["c.pt"]


def test_a_finished_run_is_not_trained_again_but_its_weights_are_loaded(make_mlp, train_loader, tmp_path):
    path = tmp_path / "c.pt"
    trained = make_mlp()
    first = train(trained, train_loader(64), TrainSettings(epochs=2), checkpoint_path=path)
    written = path.stat().st_mtime_ns

    lines, again = [], make_mlp(seed=5)
    second = train(again, train_loader(64), TrainSettings(epochs=2), checkpoint_path=path, log=lines.append)
    assert second == first and lines == [] and path.stat().st_mtime_ns == written
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))


def test_the_checkpoint_holds_plain_weights_that_load_checkpoint_reads(make_mlp, train_loader, tmp_path):
    path = tmp_path / "c.pt"
    trained = make_mlp()
    train(trained, train_loader(64), TrainSettings(epochs=1), checkpoint_path=path)
    loaded = load_checkpoint(make_mlp(seed=5), path)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))


def test_a_file_that_is_not_a_training_checkpoint_is_refused(make_mlp, train_loader, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_mlp().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(make_mlp(), train_loader(64), TrainSettings(epochs=1), checkpoint_path=path)
