"""Text for language models: files read offline, a byte-level BPE tokenizer, packed windows and
their splits, all with the real libraries on small local files."""

import json
import re
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from layerprune.data.text import (
    EOS_TOKEN, PAD_TOKEN, pack, pydoc_texts, read_texts,
    tokenize_and_pack, train_bpe_tokenizer,
)
from layerprune.errors import DatasetError

DOC_A = "First line of a document.\nSecond line, with ünïcödé — and \"quotes\" .\n\n  indented; don't stop\n"
DOC_B = "Another file: 3 + 4 == 7\n\tdef f(x): return x * 2 ,\n"


@pytest.fixture(scope="module")
def corpus():
    """A few of the standard library's documentation topics: real prose and code, offline."""
    return pydoc_texts()[:8]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer(corpus, vocab_size=300)


def _match(*parts):
    """A regex that finds each of ``parts`` literally, in order."""
    return ".*".join(re.escape(str(p)) for p in parts)


# -- read_texts -----------------------------------------------------------------------------------------


def test_txt_files_are_one_document_each_with_their_newlines(tmp_path):
    (tmp_path / "a.txt").write_text(DOC_A, encoding="utf-8")
    (tmp_path / "b.txt").write_text(DOC_B, encoding="utf-8")
    assert read_texts([tmp_path / "a.txt", str(tmp_path / "b.txt")]) == [DOC_A, DOC_B]
    assert read_texts(tmp_path / "b.txt") == [DOC_B]


def test_txt_windows_line_endings_are_read_as_newlines(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    assert read_texts(tmp_path / "crlf.txt") == ["one\ntwo\n"]


def test_jsonl_gives_one_document_per_record_from_the_text_field(tmp_path):
    records = [{"text": DOC_A, "id": 1}, {"text": "", "id": 2}, {"text": DOC_B, "id": 3}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert read_texts([tmp_path / "d.jsonl"]) == [DOC_A, DOC_B]  # the empty document is left out
    (tmp_path / "body.jsonl").write_text(json.dumps({"body": DOC_B}) + "\n", encoding="utf-8")
    assert read_texts([tmp_path / "body.jsonl"], text_field="body") == [DOC_B]


def test_parquet_gives_one_document_per_row(tmp_path):
    pq.write_table(pa.table({"text": [DOC_A, DOC_B], "n": [1, 2]}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"text": pa.array([DOC_B], pa.large_string())}), tmp_path / "large.parquet")
    assert read_texts([tmp_path / "d.parquet", tmp_path / "large.parquet"]) == [DOC_A, DOC_B, DOC_B]


def test_formats_mix_in_the_order_given_without_touching_the_network(tmp_path, monkeypatch):
    import datasets

    (tmp_path / "a.txt").write_text(DOC_A, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": DOC_B}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["parquet doc"]}), tmp_path / "c.parquet")
    attempts = []

    def refuse_connect(sock, address, *args):
        attempts.append(address)
        raise OSError("network access in a test")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    before = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS,
              datasets.logging.get_verbosity())
    texts = read_texts([tmp_path / "c.parquet", tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert texts == ["parquet doc", DOC_A, DOC_B]
    assert attempts == []
    after = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS,
             datasets.logging.get_verbosity())
    assert after == before  # the offline switch is undone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.jsonl", "c.parquet"]  # no cache left here


# -- read_texts: errors -------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    (tmp_path / "a.txt").write_text(DOC_A, encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(tmp_path / "gone.txt", "no such file")):
        read_texts([tmp_path / "a.txt", tmp_path / "gone.txt"])


def test_folder_is_not_a_file(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(DatasetError, match=_match(tmp_path / "dir.txt", "not a file")):
        read_texts(tmp_path / "dir.txt")


def test_unsupported_suffix_is_named_with_the_supported_ones(tmp_path):
    (tmp_path / "d.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(tmp_path / "d.csv", "'.csv'", ".txt, .jsonl, .parquet")):
        read_texts([tmp_path / "d.csv"])


@pytest.mark.parametrize("name", ["e.txt", "e.jsonl", "e.parquet"])
def test_empty_file_is_named(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetError, match=_match(tmp_path / name, "empty")):
        read_texts([tmp_path / name])


@pytest.mark.parametrize("name", ["w.txt", "w.jsonl"])
def test_whitespace_only_file_has_no_text(tmp_path, name):
    (tmp_path / name).write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(tmp_path / name, "no text")):
        read_texts([tmp_path / name])


def test_jsonl_and_parquet_without_any_text_are_named(tmp_path):
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(tmp_path / "blank.jsonl", "no text in field 'text'")):
        read_texts([tmp_path / "blank.jsonl"])
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "rows0.parquet")
    with pytest.raises(DatasetError, match=_match(tmp_path / "rows0.parquet", "no text (no records)")):
        read_texts([tmp_path / "rows0.parquet"])


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_file_that_is_not_utf8_is_named_with_its_line(tmp_path, name):
    body = "caf\u00e9\n" if name.endswith(".txt") else json.dumps({"text": "ok"}) + "\n" + '{"text": "caf\u00e9"}\n'
    (tmp_path / name).write_bytes(body.encode("latin-1"))
    line = 1 if name.endswith(".txt") else 2
    with pytest.raises(DatasetError, match=_match(tmp_path / name, "not UTF-8", f"line {line}")):
        read_texts([tmp_path / name])


def test_utf8_character_across_read_chunks_is_accepted(tmp_path, monkeypatch):
    import layerprune.data.text as text

    monkeypatch.setattr(text, "_CHUNK", 3)  # "é" is 2 bytes: some fall across two chunks
    (tmp_path / "u.txt").write_text("héé é\nééé\n", encoding="utf-8")
    assert read_texts(tmp_path / "u.txt") == ["héé é\nééé\n"]
    (tmp_path / "bad.txt").write_bytes("héé é\nééé\n".encode("utf-8") + b"\xff")
    with pytest.raises(DatasetError, match=_match(tmp_path / "bad.txt", "byte 16, line 3")):
        read_texts(tmp_path / "bad.txt")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_missing_text_field_names_the_field_and_the_file(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"body": "hello"}) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"body": ["hello"]}), path)
    with pytest.raises(DatasetError, match=_match(path, "no field 'content'", "fields: body")):
        read_texts([path], text_field="content")


def test_record_without_the_field_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(path, "record 2 has no 'text'")):
        read_texts([path])


def test_field_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=_match(path, "field 'text' holds", "int64", "not strings")):
        read_texts([path])


@pytest.mark.parametrize("name, body", [("bad.jsonl", b'{"text": "a"}\n{"text": \n'), ("bad.parquet", b"not parquet")])
def test_unparsable_file_is_named_with_the_reason(tmp_path, name, body):
    (tmp_path / name).write_bytes(body)
    with pytest.raises(DatasetError, match=_match(tmp_path / name, "cannot read it as")) as info:
        read_texts([tmp_path / name])
    assert "\n" not in str(info.value)


def test_no_files_given():
    with pytest.raises(DatasetError, match="read_texts: no files given"):
        read_texts([])


# -- tokenizer ----------------------------------------------------------------------------------------


def test_tokenizer_has_the_special_tokens_and_round_trips_text(tokenizer):
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in (DOC_A, DOC_B, "never seen: 漢字 ☃ \x00 \U0001F600"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_tokenizer_training_is_deterministic(corpus, tokenizer):
    again = train_bpe_tokenizer(corpus, vocab_size=300)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_saved_tokenizer_loads_back_with_the_same_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(DOC_A)["input_ids"] == tokenizer(DOC_A)["input_ids"]
    plain = {"add_special_tokens": False}
    assert loaded(DOC_A, **plain)["input_ids"] == tokenizer(DOC_A, **plain)["input_ids"]
    assert (loaded.eos_token_id, loaded.bos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
        tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    assert loaded.decode(loaded(DOC_B)["input_ids"]) == DOC_B


@pytest.mark.parametrize("vocab_size", [100, 257, 300.0])
def test_tokenizer_vocab_size_too_small_or_not_an_integer(corpus, vocab_size):
    with pytest.raises(DatasetError, match=_match("vocab_size must be an integer >= 258", repr(vocab_size))):
        train_bpe_tokenizer(corpus, vocab_size=vocab_size)


def test_tokenizer_needs_a_list_of_texts():
    with pytest.raises(DatasetError, match=r"texts must be a list of strings, got one string \(wrap it"):
        train_bpe_tokenizer("just one string", vocab_size=300)
    with pytest.raises(DatasetError, match=r"texts\[1\] is a int, not a string"):
        train_bpe_tokenizer(["a", 1], vocab_size=300)
    with pytest.raises(DatasetError, match="no text given"):
        train_bpe_tokenizer(["", "  \n"], vocab_size=300)


# -- pack ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True])
def test_pack_cuts_consecutive_windows_and_drops_the_rest(as_tensor):
    stream = list(range(1000, 1103))
    windows = pack(torch.tensor(stream, dtype=torch.int32) if as_tensor else stream, 10)
    assert windows.shape == (10, 10) and windows.dtype == torch.long
    for i, window in enumerate(windows):
        assert window.tolist() == stream[i * 10:(i + 1) * 10]
    assert windows.flatten().tolist() == stream[:100]


def test_pack_of_exactly_one_window_and_no_shared_memory():
    stream = torch.arange(8)
    windows = pack(stream, 8)
    assert windows.shape == (1, 8)
    windows[0, 0] = 99
    assert stream[0] == 0


def test_pack_text_shorter_than_a_window_names_seq_len():
    with pytest.raises(DatasetError, match=_match("5 tokens are fewer than seq_len=16")):
        pack([1, 2, 3, 4, 5], 16)
    with pytest.raises(DatasetError, match=_match("0 tokens are fewer than seq_len=4")):
        pack([], 4)


@pytest.mark.parametrize("seq_len", [0, -3, 2.5, True])
def test_pack_bad_seq_len(seq_len):
    with pytest.raises(DatasetError, match=_match("seq_len must be an integer >= 1, got", repr(seq_len))):
        pack([1, 2, 3], seq_len)


def test_pack_needs_one_stream_of_integers():
    with pytest.raises(DatasetError, match=r"must be 1-D \(one stream\), got shape \(2, 3\)"):
        pack(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(DatasetError, match="must be integers, got torch.float32"):
        pack(torch.zeros(6), 2)


# -- tokenize_and_pack --------------------------------------------------------------------------------


def test_tokenize_and_pack_decodes_back_to_the_documents(corpus, tokenizer):
    windows = tokenize_and_pack(corpus, tokenizer, 64)
    joined = "".join(doc + EOS_TOKEN for doc in corpus)
    first = tokenizer.decode(windows[0].tolist())
    assert windows.shape[1] == 64 and len(first) > 64
    assert corpus[0].startswith(first)  # the first document is longer than a window
    whole = tokenizer.decode(windows.flatten().tolist())
    assert joined.startswith(whole) and len(whole) > len(joined) - 64 * 8
    stream_length = sum(len(ids) + 1 for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"])
    assert windows.shape[0] == stream_length // 64


def test_tokenize_and_pack_puts_eos_between_documents(tokenizer):
    docs = ["alpha beta", "gamma", "delta epsilon zeta"]
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = ids[0] + [tokenizer.eos_token_id] + ids[1] + [tokenizer.eos_token_id] + ids[2] + [tokenizer.eos_token_id]
    windows = tokenize_and_pack(docs, tokenizer, 3)
    assert windows.flatten().tolist() == stream[: len(stream) // 3 * 3]
    plain = tokenize_and_pack(docs, tokenizer, 1, add_eos=False)
    assert plain.flatten().tolist() == ids[0] + ids[1] + ids[2]


def test_tokenize_and_pack_without_a_tokenizer_says_how_to_get_one():
    with pytest.raises(DatasetError, match=_match("a tokenizer is needed", "train_bpe_tokenizer",
                                                  "AutoTokenizer.from_pretrained")) as info:
        tokenize_and_pack(["some text"], None, 8)
    assert "\n" not in str(info.value)


def test_tokenize_and_pack_too_little_text_names_seq_len(tokenizer):
    with pytest.raises(DatasetError, match=_match("fewer than seq_len=4096")):
        tokenize_and_pack(["short"], tokenizer, 4096)


# -- pydoc_texts --------------------------------------------------------------------------------------


def test_pydoc_texts_are_the_topics_in_sorted_order():
    from pydoc_data.topics import topics

    texts = pydoc_texts()
    assert texts == [topics[name] for name in sorted(topics)]
    assert len(texts) > 50 and all(isinstance(t, str) and t.strip() for t in texts)
    # 464,970 characters with Python 3.11.7: less than 500 KB, so the bound leaves room for other versions
    assert sum(map(len, texts)) > 400_000
