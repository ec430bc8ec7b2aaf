import torch

from layerprune.data import CropFlip


def test_crop_output_is_a_shifted_window_of_the_zero_padded_input():
    x = torch.rand(16, 3, 8, 8)
    out = CropFlip(padding=2, flip=False)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_crops_differ_between_samples():
    x = torch.rand(1, 1, 8, 8).expand(64, -1, -1, -1)
    out = CropFlip(padding=2, flip=False)(x)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_flip_only_mirrors_about_half():
    x = torch.rand(200, 1, 4, 4)
    out = CropFlip(padding=0, flip=True)(x)
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 60 < sum(mirrored) < 140
