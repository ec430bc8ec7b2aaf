"""The ``text`` data set: a corpus tokenized and cut into windows of ``seq_len`` tokens for a
language model (``data: {dataset: text, ...}`` in a recipe).

The text comes from one of:

* ``files``: local ``.txt``, ``.jsonl`` or ``.parquet`` files, split into train / val / test by
  ``val_fraction`` and ``test_fraction`` of their characters, contiguously (the last part of the
  text is the test split, the part before it the val split, cut at line ends): neighbouring
  windows never straddle two splits;
* ``splits``: ``{train: [files], val: [files], test: [files]}``, each split its own files;
* ``corpus: pydoc``: the standard library's documentation topics, which every Python has offline
  (split by fraction like ``files``);
* ``hub``: a data set on the Hugging Face Hub by name, with ``hub_config`` (WikiText-2 is
  ``hub: wikitext, hub_config: wikitext-2-raw-v1``), its own train / validation / test splits;
  this needs a network (offline, one line says so).

``tokenizer`` is a folder or hub id of a ``transformers`` tokenizer (a language model's own); left
out, a byte-level BPE tokenizer of ``vocab_size`` tokens is trained on the train split. Each split
is tokenized (an end-of-text token after each document) and packed into non-overlapping windows;
a sample is ``(window, window)``: the ids and their labels (:class:`~layerprune.tasks.CausalLM`
predicts each next token).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from layerprune.data.base import DatasetBundle, check_fractions
from layerprune.data.text import pydoc_texts, read_texts, tokenize_and_pack, train_bpe_tokenizer
from layerprune.errors import DatasetError, DatasetFetchError, first_line

SPLITS = ("train", "val", "test")
CORPORA = ("pydoc",)


@dataclass
class TextBundle(DatasetBundle):
    """A text data set's windows (``input_size`` is ``(seq_len,)``, ``num_classes`` the tokenizer's
    vocabulary) and the tokenizer that made them (saved with a pruned model)."""

    tokenizer: Any = None
    seq_len: int = 0

    def windows(self, split: str) -> torch.Tensor:
        """The ``(n, seq_len)`` token ids of a split."""
        return self.split(split).tensors[0]

    def describe(self) -> dict[str, object]:  # noqa: D102
        sizes = {s: len(getattr(self, s)) for s in SPLITS}
        return dict(name=self.name, seq_len=self.seq_len, vocab_size=self.num_classes,
                    tokens={s: n * self.seq_len for s, n in sizes.items()}, **sizes)


def _cut(texts: list[str], val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """The documents split contiguously by characters: train first, then val, then test, each cut
    moved on to the next line end (a document may be cut in two)."""
    joined = "".join(texts)
    bounds = [0]
    for share in (1 - val_fraction - test_fraction, 1 - test_fraction):
        end = joined.find("\n", max(bounds[-1], round(len(joined) * share)))
        bounds.append(len(joined) if end < 0 else end + 1)
    bounds.append(len(joined))
    parts: dict[str, list[str]] = {name: [] for name in SPLITS}
    start = 0
    for text in texts:
        for name, lo, hi in zip(SPLITS, bounds, bounds[1:]):
            piece = text[max(lo - start, 0):max(min(hi - start, len(text)), 0)]
            if piece:
                parts[name].append(piece)
        start += len(text)
    return parts


def _hub(hub: str, hub_config: str | None, text_field: str) -> dict[str, list[str]]:
    import datasets

    try:
        loaded = datasets.load_dataset(hub, hub_config)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name: whatever the library raises
        raise DatasetFetchError(f"hub data set {hub!r}" + (f" ({hub_config})" if hub_config else ""),
                                f"could not be loaded ({type(exc).__name__}: {first_line(exc, '')})",
                                "with no network, give local files instead (files: [...])", subject="text") from None
    names = {"train": "train", "val": "validation" if "validation" in loaded else "val", "test": "test"}
    missing = [names[s] for s in SPLITS if names[s] not in loaded]
    if missing:
        raise DatasetError(f"text: hub data set {hub!r} has no {', '.join(missing)} split (it has "
                           f"{', '.join(loaded)})")
    return {s: ["\n".join(t for t in loaded[names[s]][text_field] if t is not None)] for s in SPLITS}


def _tokenizer(tokenizer: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer)
    except Exception as exc:  # noqa: BLE001 - a missing folder, no network: whatever the library raises
        where = "folder" if Path(tokenizer).exists() else "folder or hub id"
        raise DatasetError(f"text: tokenizer {tokenizer!r}: no tokenizer could be loaded from this {where} "
                           f"({type(exc).__name__}: {first_line(exc, '')})") from None


def build_text(*, files: list[str] | None = None, splits: dict[str, list[str]] | None = None,
               corpus: str | None = None, hub: str | None = None, hub_config: str | None = None,
               text_field: str = "text", seq_len: int = 128, tokenizer: str | None = None, vocab_size: int = 4096,
               val_fraction: float = 0.05, test_fraction: float = 0.05) -> TextBundle:
    """Text for a language model, tokenized and packed into windows of ``seq_len`` tokens."""
    given = {k: v for k, v in dict(files=files, splits=splits, corpus=corpus, hub=hub).items() if v}
    if len(given) != 1:
        raise DatasetError("text: give exactly one of files, splits, corpus or hub"
                           + (f" (got {', '.join(given)})" if given else ""))
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise DatasetError(f"text: seq_len must be an integer >= 2 (a window predicts its next tokens), got {seq_len!r}")
    if splits is not None:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown or set(splits) != set(SPLITS):
            raise DatasetError(f"text: splits must name train, val and test, got {', '.join(map(str, splits))}")
        texts = {s: read_texts(splits[s], text_field=text_field) for s in SPLITS}
    elif hub is not None:
        texts = _hub(hub, hub_config, text_field)
    else:
        if corpus is not None and corpus not in CORPORA:
            raise DatasetError(f"text: unknown corpus {corpus!r} (one of {', '.join(CORPORA)})")
        check_fractions("text", val_fraction=val_fraction, test_fraction=test_fraction)
        if not val_fraction or not test_fraction:
            raise DatasetError("text: val_fraction and test_fraction must be > 0 (a language model is measured on "
                               "held-out text)")
        texts = _cut(pydoc_texts() if corpus else read_texts(files, text_field=text_field), val_fraction, test_fraction)
    tok = _tokenizer(tokenizer) if tokenizer else train_bpe_tokenizer(texts["train"], vocab_size)
    windows = {}
    for split in SPLITS:
        try:
            windows[split] = tokenize_and_pack(texts[split], tok, seq_len)
        except DatasetError as exc:
            given = splits[split] if splits is not None else files
            source = f" (of {', '.join(map(str, [given] if isinstance(given, str) else given))})" if given else ""
            raise DatasetError(f"text: the {split} split{source}: {str(exc).split(': ', 1)[-1]}") from None
    name = corpus or hub or "text"
    data = {s: TensorDataset(w, w) for s, w in windows.items()}
    return TextBundle(name=name, train=data["train"], val=data["val"], test=data["test"], num_classes=len(tok),
                      input_size=(seq_len,), mean=(), std=(), tokenizer=tok, seq_len=seq_len)
