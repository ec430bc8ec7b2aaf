"""Speed options of the training loop: mixed precision, channels_last, torch.compile, SyncBatchNorm.

Everything runs on the CPU. Where resnet20 would be too slow (fp16 on CPU) or too noisy (PyTorch's
channels_last BatchNorm/conv kernels on CPU differ from the contiguous ones by far more than 1e-4
after a few SGD steps), a small real model stands in.
"""

import pytest
import torch
import torch.nn as nn

from layerprune import CheckpointError, LayerpruneError, create_model, make_loader
from layerprune.train import TrainSettings, train
from layerprune.train.trainer import _sync_batchnorm


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def _resnet20(seed=0):
    torch.manual_seed(seed)
    return create_model("cifar_resnet20", num_classes=10, in_chans=1)


def _small_cnn(seed=0, in_chans=1, batchnorm=False):
    """Two 3×3 convs (the second with 8 input channels, so its weight has a distinct NHWC layout)."""
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, padding=1), norm(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


# -- precision -------------------------------------------------------------------------------------

def test_bf16_trains_resnet20_with_a_finite_loss_and_float32_weights_that_change(train_loader):
    model = _resnet20()
    before = _state(model)
    history = train(model, train_loader(64, batch_size=32), TrainSettings(epochs=1, precision="bf16"))
    assert torch.isfinite(torch.tensor(history[0].train_loss))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert _max_diff(before, _state(model)) > 1e-3


def test_bf16_autocasts_the_forward_so_its_loss_differs_from_full_precision(make_mlp, train_loader):
    full = train(make_mlp(), train_loader(128), TrainSettings(epochs=1))
    bf16 = train(make_mlp(), train_loader(128), TrainSettings(epochs=1, precision="bf16"))
    assert bf16[0].train_loss != full[0].train_loss
    assert bf16[0].train_loss == pytest.approx(full[0].train_loss, rel=0.05)


def test_fp16_trains_on_the_cpu_and_lowers_the_loss(make_mlp, train_loader):
    model = make_mlp()
    history = train(model, train_loader(256), TrainSettings(epochs=2, lr=0.1, precision="fp16"))
    losses = torch.tensor([r.train_loss for r in history])
    assert torch.isfinite(losses).all() and losses[1] < losses[0]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_an_fp16_checkpoint_holds_the_loss_scaler_state(make_mlp, train_loader, tmp_path):
    path = tmp_path / "fp16.pt"
    train(make_mlp(), train_loader(64), TrainSettings(epochs=1, precision="fp16"), checkpoint_path=path)
    scaler = torch.load(path, weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_a_full_precision_checkpoint_has_no_scaler_entry(make_mlp, train_loader, tmp_path):
    path = tmp_path / "fp32.pt"
    train(make_mlp(), train_loader(64), TrainSettings(epochs=1), checkpoint_path=path)
    assert "scaler" not in torch.load(path, weights_only=True)


def test_a_resumed_fp16_run_is_bitwise_identical_to_an_uninterrupted_one(stop_after, train_loader, tmp_path):
    # An output layer scaled up ×30 makes fp16 gradients overflow at the initial loss scale (65536):
    # the scaler skips those steps and backs off, so epoch 2 only matches if its state is restored.
    def model():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            net[3].weight.mul_(30)
        return net

    settings = TrainSettings(epochs=2, lr=0.01, precision="fp16")
    whole = model()
    expected = train(whole, train_loader(128, batch_size=32), settings)

    path = tmp_path / "fp16.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model(), train_loader(128, batch_size=32), settings, checkpoint_path=path, log=stop_after(1))
    assert torch.load(path, weights_only=True)["scaler"]["scale"] < 65536.0  # the scaler did back off
    resumed = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
    history = train(resumed, train_loader(128, batch_size=32), settings, checkpoint_path=path)

    whole_state, resumed_state = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(whole_state[k], resumed_state[k]) for k in whole_state)
    assert [r.train_loss for r in history] == [r.train_loss for r in expected]


def test_an_unknown_precision_is_refused_naming_the_field():
    with pytest.raises(LayerpruneError, match=r"^precision: .* \(got '16'\)$"):
        TrainSettings(epochs=1, precision="16")


@pytest.mark.parametrize("precision, dtype", [("32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_dtype_follows_the_precision(precision, dtype):
    assert TrainSettings(epochs=1, precision=precision).amp_dtype is dtype


# -- channels_last -----------------------------------------------------------------------------------

def test_channels_last_training_ends_close_to_default_training(train_loader):
    init = _state(_small_cnn())
    default, nhwc = _small_cnn(), _small_cnn()
    train(default, train_loader(128, batch_size=32), TrainSettings(epochs=2, lr=0.1))
    train(nhwc, train_loader(128, batch_size=32), TrainSettings(epochs=2, lr=0.1, channels_last=True))
    assert _max_diff(init, _state(default)) > 1e-2  # training moved the weights...
    assert _max_diff(_state(default), _state(nhwc)) < 1e-4  # ...the same way in either layout


def test_channels_last_trains_on_nhwc_weights_and_inputs(digits):
    data = digits.train.subset(range(64))
    rgb = torch.utils.data.TensorDataset(*data.batch(range(64)))
    rgb.tensors = (rgb.tensors[0].expand(-1, 3, -1, -1).contiguous(), rgb.tensors[1])  # 3 channels: NHWC ≠ NCHW
    model = _small_cnn(in_chans=3)
    seen = []

    def record(module, args):
        nhwc = torch.channels_last
        seen.append((args[0].is_contiguous(memory_format=nhwc) and not args[0].is_contiguous(),
                     module.weight.is_contiguous(memory_format=nhwc) and not module.weight.is_contiguous()))

    model[0].register_forward_pre_hook(record)
    train(model, make_loader(rgb, 32), TrainSettings(epochs=1, channels_last=True))
    assert seen == [(True, True)] * 2


def test_channels_last_training_leaves_the_model_contiguous(train_loader):
    model = _small_cnn()
    train(model, train_loader(64, batch_size=32), TrainSettings(epochs=1, channels_last=True))
    assert model[3].weight.dim() == 4 and model[3].weight.shape[1] > 1  # a layout that NHWC would change
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_channels_last_training_keeps_the_parameters_the_optimizer_updated(train_loader):
    model = _small_cnn()
    params = list(model.parameters())
    before = _state(model)
    train(model, train_loader(64, batch_size=32), TrainSettings(epochs=1, channels_last=True))
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert _max_diff(before, _state(model)) > 1e-3


# -- checkpoints across speed options -------------------------------------------------------------

def test_a_checkpoint_resumes_with_another_channels_last(stop_after, make_mlp, train_loader, tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        train(make_mlp(), train_loader(64), TrainSettings(epochs=2, channels_last=False), checkpoint_path=path,
              log=stop_after(1))
    first = torch.load(path, weights_only=True)["history"]
    history = train(make_mlp(seed=5), train_loader(64), TrainSettings(epochs=2, channels_last=True),
                    checkpoint_path=path)
    assert [r.epoch for r in history] == [0, 1] and history[0].train_loss == first[0]["train_loss"]


def test_a_checkpoint_is_refused_with_another_precision(stop_after, make_mlp, train_loader, tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        train(make_mlp(), train_loader(64), TrainSettings(epochs=2, precision="32"), checkpoint_path=path,
              log=stop_after(1))
    with pytest.raises(CheckpointError, match="precision: '32' in the checkpoint, 'bf16' now"):
        train(make_mlp(), train_loader(64), TrainSettings(epochs=2, precision="bf16"), checkpoint_path=path)


def test_an_older_checkpoint_without_the_new_settings_resumes_with_their_defaults(stop_after, make_mlp, train_loader,
                                                                                   tmp_path):
    path = tmp_path / "old.pt"
    settings = TrainSettings(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(make_mlp(), train_loader(64), settings, checkpoint_path=path, log=stop_after(1))
    state = torch.load(path, weights_only=True)
    for key in ("precision", "channels_last", "compile", "sync_batchnorm"):
        del state["settings"][key]
    torch.save(state, path)
    history = train(make_mlp(seed=5), train_loader(64), settings, checkpoint_path=path)
    assert [r.epoch for r in history] == [0, 1]


# -- sync_batchnorm --------------------------------------------------------------------------------

def _batchnorms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_sync_batchnorm_swaps_every_batchnorm_for_one_sharing_its_tensors():
    model = _resnet20()
    original = _batchnorms(model)
    _sync_batchnorm(model, torch.device("meta"))  # the device is only checked, never used
    swapped = _batchnorms(model)
    assert swapped.keys() == original.keys() and len(original) == 19
    assert all(type(m) is nn.SyncBatchNorm for m in swapped.values())
    for name, bn in original.items():
        sync = swapped[name]
        assert sync.weight is bn.weight and sync.bias is bn.bias
        assert sync.running_mean is bn.running_mean and sync.running_var is bn.running_var


def test_sync_batchnorm_undo_puts_back_the_very_same_batchnorm_modules():
    model = _resnet20()
    original = _batchnorms(model)
    undo = _sync_batchnorm(model, torch.device("meta"))
    undo()
    restored = _batchnorms(model)
    assert restored.keys() == original.keys()
    assert all(restored[name] is bn for name, bn in original.items())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_sync_batchnorm_undo_carries_over_the_train_or_eval_mode():
    model = _resnet20().train()
    undo = _sync_batchnorm(model, torch.device("meta"))
    model.eval()  # as the trainer does after training, while the SyncBatchNorms are in place
    undo()
    assert not any(m.training for m in _batchnorms(model).values())


def test_sync_batchnorm_is_refused_on_the_cpu():
    with pytest.raises(LayerpruneError, match="sync_batchnorm"):
        _sync_batchnorm(_resnet20(), torch.device("cpu"))


def test_sync_batchnorm_is_ignored_outside_distributed_training(train_loader):
    model = _small_cnn(batchnorm=True)
    history = train(model, train_loader(64, batch_size=32), TrainSettings(epochs=1, sync_batchnorm=True))
    assert len(history) == 1
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


# -- compile ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_training_runs_an_epoch_with_a_finite_loss(make_mlp, train_loader):
    model = make_mlp()
    before = _state(model)
    history = train(model, train_loader(64, batch_size=32), TrainSettings(epochs=1, compile=True))
    assert torch.isfinite(torch.tensor(history[0].train_loss))
    assert _max_diff(before, _state(model)) > 1e-4
