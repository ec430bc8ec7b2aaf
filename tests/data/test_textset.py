"""The ``text`` data set: a corpus split contiguously (or by file, or the hub's splits), tokenized
with a given or a freshly trained tokenizer and packed into (ids, labels) windows; bad input is one
line naming what is wrong."""

import pytest
import torch

pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune.data import build_dataset  # noqa: E402
from layerprune.data.text import pydoc_texts, train_bpe_tokenizer  # noqa: E402
from layerprune.data.textset import _cut  # noqa: E402
from layerprune.errors import DatasetError, DatasetFetchError  # noqa: E402


def test_the_cut_is_contiguous_at_line_ends_and_keeps_every_character():
    texts = ["".join(f"doc {d} line {i}\n" for i in range(40)) for d in range(5)]
    parts = _cut(texts, 0.1, 0.2)
    assert "".join(parts["train"] + parts["val"] + parts["test"]) == "".join(texts)
    assert all(piece.endswith("\n") for name in ("train", "val") for piece in parts[name][-1:])
    whole = sum(map(len, texts))
    assert sum(map(len, parts["test"])) == pytest.approx(0.2 * whole, abs=20)
    assert sum(map(len, parts["val"])) == pytest.approx(0.1 * whole, abs=20)


@pytest.fixture(scope="module")
def pydoc():
    return build_dataset("text", corpus="pydoc", seq_len=64, vocab_size=512)


def test_the_pydoc_corpus_is_packed_into_id_label_windows(pydoc):
    assert pydoc.input_size == (64,) and pydoc.num_classes == len(pydoc.tokenizer) <= 512
    ids, labels = pydoc.test[0]
    assert ids.dtype == torch.long and ids.shape == (64,) and torch.equal(ids, labels)
    sizes = {s: len(getattr(pydoc, s)) for s in ("train", "val", "test")}
    assert sizes["val"] > 10 and sizes["test"] > 10 and sizes["train"] > 15 * sizes["test"]
    # The test split is the end of the text: its last window decodes to a piece of the last topic.
    assert pydoc.tokenizer.decode(pydoc.windows("test")[-1], skip_special_tokens=True)[-60:] in pydoc_texts()[-1]


def test_files_by_fraction_and_by_split_with_a_saved_tokenizer(tmp_path, pydoc):
    texts = pydoc_texts()
    for i, name in enumerate(("a", "b", "c")):
        (tmp_path / f"{name}.txt").write_text("".join(texts[i::3]), encoding="utf-8")
    files = [str(tmp_path / f"{n}.txt") for n in ("a", "b", "c")]
    by_fraction = build_dataset("text", files=files, seq_len=64, vocab_size=512, val_fraction=0.1, test_fraction=0.1)
    assert len(by_fraction.val) == pytest.approx(len(by_fraction.test), rel=0.3)
    pydoc.tokenizer.save_pretrained(tmp_path / "tok")
    by_split = build_dataset("text", splits={"train": files[:1], "val": files[1:2], "test": files[2:]}, seq_len=64,
                             tokenizer=str(tmp_path / "tok"))
    assert by_split.num_classes == pydoc.num_classes
    assert by_split.tokenizer("def f(): pass")["input_ids"] == pydoc.tokenizer("def f(): pass")["input_ids"]


@pytest.mark.parametrize("options, message", [
    ({}, r"text: give exactly one of files, splits, corpus or hub"),
    ({"corpus": "pydoc", "files": ["x.txt"]}, r"exactly one of .*\(got files, corpus\)"),
    ({"corpus": "shakespeare"}, r"text: unknown corpus 'shakespeare' \(one of pydoc\)"),
    ({"corpus": "pydoc", "val_fraction": 0.0}, r"val_fraction and test_fraction must be > 0"),
    ({"corpus": "pydoc", "seq_len": 1}, r"seq_len must be an integer >= 2"),
    ({"corpus": "pydoc", "seq_len": 200_000}, r"text: the train split: .*fewer than seq_len=200000"),
    ({"corpus": "pydoc", "tokenizer": "/nonexistent/tokenizer"}, r"text: tokenizer '/nonexistent/tokenizer': no tokenizer"),
    ({"splits": {"train": ["a.txt"]}}, r"text: splits must name train, val and test"),
])
def test_bad_options_are_one_line_naming_them(options, message):
    with pytest.raises(DatasetError, match=message) as info:
        build_dataset("text", **options)
    assert "\n" not in str(info.value)


def test_a_hub_data_set_offline_says_so_and_what_to_do(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(DatasetFetchError, match=r"hub data set 'wikitext' \(wikitext-2-raw-v1\): could not be loaded.*"
                                                r"give local files"):
        build_dataset("text", hub="wikitext", hub_config="wikitext-2-raw-v1", tokenizer="unused")
