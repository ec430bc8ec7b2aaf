"""Plain text for language models: files read into documents, a byte-level BPE tokenizer, and token
windows packed from them.

The pieces, in the order a pipeline uses them:

* :func:`read_texts` reads local ``.txt`` (one document per file), ``.jsonl`` and ``.parquet``
  files (one document per record, from the field ``text_field``) with Hugging Face ``datasets``,
  offline, through a temporary cache that is removed afterwards;
* :func:`pydoc_texts` is a corpus that every Python installation has offline: the standard
  library's documentation topics;
* :func:`train_bpe_tokenizer` trains a byte-level BPE tokenizer (GPT-2 style) with ``tokenizers``
  and wraps it as a ``transformers`` tokenizer that ``save_pretrained`` and
  ``AutoTokenizer.from_pretrained`` round-trip;
* :func:`tokenize_and_pack` tokenizes documents, puts an end-of-text token after each, and cuts the
  stream with :func:`pack` into non-overlapping windows ``(n_windows, seq_len)``.

The ``text`` data set (:mod:`layerprune.data.textset`) splits the text and builds the windows of
each split with these; calibration windows are drawn from a split like any calibration samples
(:class:`~layerprune.calibration.Calibration`). Bad input raises
:class:`~layerprune.errors.DatasetError` with a one-line message naming the file, field or
argument. Only :func:`pack` needs nothing beyond torch; the rest need the optional extra ``[hf]``
(``datasets``, ``tokenizers``, ``transformers``).

>>> texts = pydoc_texts()
>>> tokenizer = train_bpe_tokenizer(texts, vocab_size=4096)  # doctest: +SKIP
>>> windows = tokenize_and_pack(texts, tokenizer, seq_len=256)  # doctest: +SKIP
"""
from __future__ import annotations

import codecs
import contextlib
import importlib
import numbers
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

import torch

from layerprune.errors import DatasetError, MissingExtraError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PathLike = Union[str, "os.PathLike[str]"]

#: The file types :func:`read_texts` reads, and the ``datasets`` builder that reads each.
BUILDERS = {".txt": "text", ".jsonl": "json", ".parquet": "parquet"}
FORMATS = {".txt": "text", ".jsonl": "JSON lines", ".parquet": "Parquet"}
#: The special tokens of :func:`train_bpe_tokenizer`: GPT-2's end of text (also beginning of text
#: and unknown token: byte-level BPE never needs one) and a padding token.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
BYTE_TOKENS = 256
EXTRA = "text data needs the optional extra [hf]: pip install 'layerprune[hf]'"
NO_TOKENIZER = ("a tokenizer is needed: pass one trained with train_bpe_tokenizer(texts) or loaded with "
                "transformers.AutoTokenizer.from_pretrained(folder)")
_CHUNK = 1 << 20  # bytes read at a time when checking that a file is UTF-8


def _require(name: str) -> Any:
    """The module ``name`` (from the extra ``[hf]``), or :class:`MissingExtraError` saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingExtraError(f"{EXTRA} ({name} is missing)") from None


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# -- reading files ------------------------------------------------------------------------------------


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        files = [Path(p) for p in paths]
    except TypeError:
        raise DatasetError(f"read_texts: paths must be a file or a list of files, got {paths!r}") from None
    if not files:
        raise DatasetError("read_texts: no files given")
    return files


def _scan_utf8(path: Path) -> bool:
    """Whether the file holds anything but whitespace; :class:`DatasetError` at its first byte that
    is not UTF-8 (read in chunks, so a large file is never held whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0  # bytes read before this chunk, and the newlines among them
    has_text = False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            pending = len(decoder.getstate()[0])  # the undecoded end of the last chunk, put before this one
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                where = offset - pending + exc.start
                line = lines + exc.object[:exc.start].count(b"\n") + 1
                raise DatasetError(f"text: {path}: not UTF-8 text (byte {where}, line {line}: {exc.reason}); "
                                   "re-encode it as UTF-8") from None
            if not chunk:
                return has_text
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _check_file(path: Path) -> None:
    """:class:`DatasetError` for a file that is missing, of another type, empty or not UTF-8."""
    if not path.exists():
        raise DatasetError(f"text: {path}: no such file")
    if not path.is_file():
        raise DatasetError(f"text: {path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise DatasetError(f"text: {path}: unsupported file type {path.suffix or '(no suffix)'!r} "
                           f"(supported: {', '.join(BUILDERS)})")
    if path.stat().st_size == 0:
        raise DatasetError(f"text: {path}: the file is empty")
    if suffix != ".parquet" and not _scan_utf8(path):
        raise DatasetError(f"text: {path}: no text (only whitespace)")


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """``datasets`` kept off the network, without progress bars or error logs, until the block ends.

    ``load_dataset`` pings the Hub's download counter (``s3.amazonaws.com``) even for local files
    unless offline mode is on, and it reads ``HF_DATASETS_OFFLINE`` from the environment only when
    first imported, so the settings are switched in ``datasets.config`` itself and restored
    afterwards (not thread-safe: do not load datasets in another thread meanwhile). The errors
    :func:`read_texts` raises carry the reason that ``datasets`` would have logged.
    """
    config = datasets.config
    switched = {"HF_HUB_OFFLINE": True, "HF_DATASETS_OFFLINE": True, "HF_UPDATE_DOWNLOAD_COUNTS": False}
    saved = {key: getattr(config, key) for key in switched if hasattr(config, key)}
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    for key in saved:
        setattr(config, key, switched[key])
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
        if bars:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)


def _load(datasets: Any, path: Path, text_field: str, cache_dir: str) -> list[str]:
    """The documents of one checked file, read by ``datasets``."""
    suffix = path.suffix.lower()
    options = {"sample_by": "document"} if suffix == ".txt" else {}
    try:
        if suffix == ".parquet" and _require("pyarrow.parquet").read_metadata(path).num_rows == 0:
            raise DatasetError(f"text: {path}: no text (no records)")  # datasets fails on it with an obscure reason
        dataset = datasets.load_dataset(BUILDERS[suffix], data_files=[str(path)], split="train", cache_dir=cache_dir,
                                        **options)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as exc:
        reason = exc.__cause__ or exc  # DatasetGenerationError wraps pyarrow's reason
        raise DatasetError(f"text: {path}: cannot read it as {FORMATS[suffix]}: {first_line(reason)}") from exc
    field = "text" if suffix == ".txt" else text_field
    if field not in dataset.column_names:
        raise DatasetError(f"text: {path}: no field {field!r} (fields: {', '.join(dataset.column_names) or 'none'}); "
                           "name the one that holds the text with text_field=...")
    feature = dataset.features[field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DatasetError(f"text: {path}: field {field!r} holds {feature}, not strings")
    values = dataset.data.column(field).to_pylist()
    missing = next((i for i, value in enumerate(values) if value is None), None)
    if missing is not None:
        raise DatasetError(f"text: {path}: record {missing + 1} has no {field!r} (missing or null)")
    texts = [value for value in values if value]
    if not any(text.strip() for text in texts):
        raise DatasetError(f"text: {path}: no text in field {field!r}" + (" (no records)" if not values else ""))
    return texts


def read_texts(paths: PathLike | Sequence[PathLike], *, text_field: str = "text") -> list[str]:
    """The documents in local ``.txt``, ``.jsonl`` and ``.parquet`` files, file by file in the order given.

    A ``.txt`` file is one document, its lines joined back with their newlines (read as text, so
    ``\\r\\n`` and ``\\r`` become ``\\n``); a ``.jsonl`` or ``.parquet`` file gives one document per
    record, from the string field ``text_field`` (records whose text is the empty string are left
    out). Files are read with ``datasets.load_dataset`` offline (nothing is fetched, not even the
    Hub's download counter), through a temporary cache that is removed before returning.

    Every file is checked before any is read: one that is missing, of another type, empty, or
    (``.txt``, ``.jsonl``) not UTF-8 raises :class:`DatasetError` naming it; so do a field that is
    absent, null in some record or not text, and a file that cannot be parsed.
    """
    files = _as_paths(paths)
    for path in files:
        _check_file(path)
    datasets = _require("datasets")
    texts: list[str] = []
    with _offline(datasets), tempfile.TemporaryDirectory(prefix="layerprune-text-") as cache_dir:
        for path in files:
            texts.extend(_load(datasets, path, text_field, cache_dir))
    return texts


def pydoc_texts() -> list[str]:
    """The standard library's documentation topics (``pydoc_data.topics.topics``), in the order
    of their sorted names: a corpus of English prose and Python code that every Python has offline.

    With Python 3.11.7 these are 79 documents, 464,970 characters in all (466,117 bytes as UTF-8);
    other Python versions have somewhat other texts.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DatasetError("pydoc_texts: this Python has no pydoc_data package (some Linux distributions ship it "
                           "apart from the interpreter); install the full standard library") from None
    return [topics[name] for name in sorted(topics)]


# -- tokenizing ---------------------------------------------------------------------------------------


def _check_texts(caller: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DatasetError(f"{caller}: texts must be a list of strings, got one string (wrap it: [text])")
    try:
        texts = list(texts)
    except TypeError:
        raise DatasetError(f"{caller}: texts must be a list of strings, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DatasetError(f"{caller}: texts[{i}] is a {type(text).__name__}, not a string")
    if not any(text.strip() for text in texts):
        raise DatasetError(f"{caller}: no text given ({len(texts)} document{'s' * (len(texts) != 1)}, "
                           "none with more than whitespace)")
    return texts


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 8192, *,
                        min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``, as a ``transformers`` tokenizer.

    Any text is encoded without unknown tokens (the 256 bytes are all in the vocabulary) and
    decodes back to itself. Special tokens: ``<|endoftext|>`` (id 0) is the end-of-text,
    beginning-of-text and unknown token, ``<pad>`` (id 1) the padding token; encoding adds neither.
    ``vocab_size`` counts them and the 256 byte tokens; training stops early when no pair of
    tokens occurs ``min_frequency`` times, so the vocabulary may come out smaller. The same texts
    give the same tokenizer. ``save_pretrained(folder)`` writes it and
    ``transformers.AutoTokenizer.from_pretrained(folder)`` reads it back.
    """
    texts = _check_texts("train_bpe_tokenizer", texts)
    smallest = BYTE_TOKENS + len(SPECIAL_TOKENS)
    if not _is_int(vocab_size) or vocab_size < smallest:
        raise DatasetError(f"train_bpe_tokenizer: vocab_size must be an integer >= {smallest} ({BYTE_TOKENS} byte "
                           f"tokens + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size!r}")
    if not _is_int(min_frequency) or min_frequency < 0:
        raise DatasetError(f"train_bpe_tokenizer: min_frequency must be an integer >= 0, got {min_frequency!r}")
    tokenizers = _require("tokenizers")
    transformers = _require("transformers")
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = byte_level(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=byte_level.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(texts, trainer, length=len(texts))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False,
    )


# -- windows ------------------------------------------------------------------------------------------


def _check_seq_len(caller: str, seq_len: int) -> None:
    if not _is_int(seq_len) or seq_len < 1:
        raise DatasetError(f"{caller}: seq_len must be an integer >= 1, got {seq_len!r}")


def pack(token_ids: Sequence[int] | torch.Tensor, seq_len: int) -> torch.Tensor:
    """A stream of token ids cut into non-overlapping windows: a ``torch.long`` tensor
    ``(len(token_ids) // seq_len, seq_len)`` whose row ``i`` is ``token_ids[i * seq_len:(i + 1) * seq_len]``;
    the tokens after the last whole window are dropped. The result never shares memory with
    ``token_ids``. A stream shorter than one window raises :class:`DatasetError` naming ``seq_len``.
    """
    _check_seq_len("pack", seq_len)
    try:
        ids = torch.as_tensor(token_ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DatasetError(f"pack: token_ids must be a list of integers or a 1-D tensor: {first_line(exc)}") from None
    if ids.numel() == 0:
        ids = ids.to(torch.long).reshape(0)
    if ids.dim() != 1:
        raise DatasetError(f"pack: token_ids must be 1-D (one stream), got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise DatasetError(f"pack: token_ids must be integers, got {ids.dtype}")
    n = ids.numel() // seq_len
    if n == 0:
        raise DatasetError(f"pack: {ids.numel()} tokens are fewer than seq_len={seq_len}: give more text or a "
                           "smaller seq_len")
    return ids[: n * seq_len].to(torch.long).reshape(n, seq_len).clone()


def tokenize_and_pack(texts: Sequence[str], tokenizer: Any, seq_len: int, *, add_eos: bool = True) -> torch.Tensor:
    """Documents tokenized, joined into one stream and cut into windows by :func:`pack`.

    Each document is encoded without the tokenizer's own special tokens; with ``add_eos`` its end-
    of-text token (``tokenizer.eos_token_id``) follows every document, so it stands between
    documents and after the last. ``tokenizer`` is a ``transformers`` tokenizer, e.g. from
    :func:`train_bpe_tokenizer` or ``AutoTokenizer.from_pretrained(folder)``.
    """
    if tokenizer is None:
        raise DatasetError(f"tokenize_and_pack: {NO_TOKENIZER}")
    _check_seq_len("tokenize_and_pack", seq_len)
    texts = _check_texts("tokenize_and_pack", texts)
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    if add_eos and eos is None:
        raise DatasetError("tokenize_and_pack: the tokenizer has no end-of-text token (eos_token); set "
                           "tokenizer.eos_token or pass add_eos=False")
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if add_eos:
            stream.append(eos)
    return pack(stream, seq_len)
