"""The tests' cache of trained fixtures (trained_cache.py, used by conftest.py): a model is trained once per key of the
code that decides it, then loaded."""

import torch

from trained_cache import cached_training, code_key


def tiny():
    return torch.nn.Linear(3, 2)


def test_a_trained_fixture_is_loaded_the_second_time_as_it_was_trained(tmp_path):
    calls = []

    def train(model):
        calls.append(model)
        with torch.no_grad():
            model.weight.add_(1.0)

    first = cached_training(tmp_path, tiny, train)
    second = cached_training(tmp_path, tiny, train)
    assert len(calls) == 1
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert not second.training
    assert [p.suffix for p in (tmp_path / "fixtures").iterdir()] == [".pt"]  # one file, no partial left


def test_other_training_code_trains_afresh(tmp_path):
    calls = []

    def train(model):
        calls.append("a")

    def train_longer(model):
        calls.append("b")
        calls.append("b")

    cached_training(tmp_path, tiny, train)
    cached_training(tmp_path, tiny, train_longer)
    assert calls == ["a", "b", "b"]
    assert len(list((tmp_path / "fixtures").iterdir())) == 2


def test_the_code_key_is_stable_and_names_a_folder():
    key = code_key()
    assert key == code_key() and len(key) == 16 and all(c in "0123456789abcdef" for c in key)
