"""Text: tokenizers, local sources, the stdlib corpus, packing, and the token cache."""

import json
import pickle

import numpy as np
import pytest
import torch

from seqarch.data import (
    ByteTokenizer,
    HFTokenizer,
    build_data,
    load_texts,
    stdlib_files,
)
from seqarch.data.stdlib_corpus import stdlib_root
from seqarch.data.text import stdlib_corpus
from seqarch.data.tokenizers import token_dtype

DOCUMENTS = [
    "def f(x):\n    return x + 1\n",
    "héllo wörld — ünïcode ✓ 日本語 🙂\n" * 3,
    "plain ascii text " * 40,
    "another document, with\ttabs and\r\nwindows newlines\n" * 5,
]


def write_txt_corpus(directory, documents=DOCUMENTS, copies=20):
    directory.mkdir()
    for i in range(copies):
        for j, text in enumerate(documents):
            (directory / f"doc_{i:02d}_{j}.txt").write_text(text, encoding="utf-8")
    return directory


def stream_of(dataset) -> np.ndarray:
    return np.asarray(dataset.stream.array())


def split_documents(stream: np.ndarray, eod_id: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(stream == eod_id)
    return np.split(stream, cuts + 1)[: len(cuts)]


def test_byte_tokenizer_round_trips_any_unicode():
    tokenizer = ByteTokenizer()
    for text in ["", "a", *DOCUMENTS, "\x00\U0010ffff\u200d👩‍👩‍👧", "e\u0301"]:
        ids = tokenizer.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode([*ids, tokenizer.eod_id]) == text
    assert tokenizer.vocab_size == 257 and tokenizer.eod_id == 256


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(257) == np.uint16 and token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32


def test_packed_blocks_are_shifted_next_token_pairs(tmp_path):
    corpus = write_txt_corpus(tmp_path / "corpus")
    bundle = build_data({"task": "text", "path": str(corpus), "seq_len": 32, "val_fraction": 0.2},
                        seed=0, cache_dir=tmp_path / "cache")
    assert bundle.kind == "lm" and bundle.vocab_size == 257 and bundle.seq_len == 32
    stream = stream_of(bundle.train)
    assert len(bundle.train) == len(stream) // 33
    for index in (0, 1, len(bundle.train) - 1):
        inputs, targets = bundle.train[index]
        assert inputs.dtype == targets.dtype == torch.long and inputs.shape == targets.shape == (32,)
        block = torch.from_numpy(stream[index * 33:(index + 1) * 33].astype(np.int64))
        assert torch.equal(inputs, block[:-1]) and torch.equal(targets, block[1:])
        assert (targets != -100).all()


def test_local_split_is_by_document_disjoint_and_round_trips(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [f"document number {i}: " + "é✓ " * (i % 7) for i in range(200)]
    for i, text in enumerate(texts):
        (corpus / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    bundle = build_data({"task": "text", "path": str(corpus), "seq_len": 16, "val_fraction": 0.2},
                        seed=0, cache_dir=tmp_path / "cache")
    tokenizer = ByteTokenizer()
    decoded = {
        name: [tokenizer.decode(doc.tolist()) for doc in split_documents(stream_of(dataset), tokenizer.eod_id)]
        for name, dataset in (("train", bundle.train), ("val", bundle.val))
    }
    assert sorted(decoded["train"] + decoded["val"]) == sorted(texts)  # every document, exactly once
    assert not set(decoded["train"]) & set(decoded["val"])
    assert 20 <= len(decoded["val"]) <= 60  # ~20% by hash
    assert list(load_texts(corpus, split="validation", val_fraction=0.2)) == decoded["val"]


def test_one_text_file_is_split_by_position(tmp_path):
    lines = [f"line {i}: to be or not to be, ünïcode\n" for i in range(400)]
    (tmp_path / "input.txt").write_text("".join(lines), encoding="utf-8")
    train = list(load_texts(tmp_path / "input.txt", val_fraction=0.1))
    val = list(load_texts(tmp_path / "input.txt", split="validation", val_fraction=0.1))
    assert len(train) == len(val) == 1 and train[0] + val[0] == "".join(lines)
    assert val[0].startswith("line ") and 30 <= val[0].count("\n") <= 41
    bundle = build_data({"task": "text", "path": str(tmp_path / "input.txt"), "seq_len": 64, "val_fraction": 0.1},
                        seed=0, cache_dir=tmp_path / "cache")
    assert len(bundle.val) > 0 and bundle.info["val_tokens"] == len(val[0].encode()) + 1


def test_jsonl_with_a_custom_field_and_parquet(tmp_path):
    import pyarrow as pa  # a dependency of datasets
    import pyarrow.parquet as pq

    texts = [f"record {i} ünïcode" for i in range(100)]
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "a.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": text, "id": 1}) + "\n" for text in texts[:50])
    pq.write_table(pa.table({"body": texts[50:]}), tmp_path / "data" / "b.parquet")
    train = list(load_texts(tmp_path / "data", text_field="body", val_fraction=0.1))
    val = list(load_texts(tmp_path / "data", split="validation", text_field="body", val_fraction=0.1))
    assert sorted(train + val) == sorted(texts) and val and not set(train) & set(val)
    with pytest.raises(ValueError, match="data.text_field: expected a string field 'text'"):
        list(load_texts(tmp_path / "data" / "a.jsonl"))


def test_hugging_face_tokenizer_from_a_local_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(DOCUMENTS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))

    loaded = HFTokenizer(tmp_path / "tok")  # a directory holding tokenizer.json
    assert loaded.eod_id == tokenizer.token_to_id("</s>") and loaded.vocab_size == tokenizer.get_vocab_size()
    assert loaded.decode(loaded.encode("plain ascii text")) == "plain ascii text"

    corpus = write_txt_corpus(tmp_path / "corpus")
    bundle = build_data({"task": "text", "path": str(corpus), "tokenizer": str(tmp_path / "tok" / "tokenizer.json"),
                         "seq_len": 8, "val_fraction": 0.2}, seed=0, cache_dir=tmp_path / "cache")
    assert bundle.vocab_size == loaded.vocab_size
    stream = stream_of(bundle.train)
    assert stream.dtype == np.uint16 and int(stream.max()) < bundle.vocab_size
    assert (stream == loaded.eod_id).sum() == bundle.info["train_documents"]


def test_bpe_tokenizer_without_an_eod_token_gets_a_new_id(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(DOCUMENTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    tokenizer.save(str(tmp_path / "bpe.json"))
    loaded = HFTokenizer(tmp_path / "bpe.json")
    assert loaded.eod_id == tokenizer.get_vocab_size() and loaded.vocab_size == loaded.eod_id + 1


def test_second_build_reads_the_cache_without_tokenising(tmp_path, monkeypatch):
    corpus = write_txt_corpus(tmp_path / "corpus")
    spec = {"task": "text", "path": str(corpus), "seq_len": 32, "val_fraction": 0.2}
    first = build_data(spec, seed=0, cache_dir=tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(ByteTokenizer, "encode", refuse)
    monkeypatch.setattr(ByteTokenizer, "encode_batch", refuse)
    second = build_data({**spec, "seq_len": 16}, seed=1, cache_dir=tmp_path / "cache")  # block length is free
    assert np.array_equal(stream_of(first.train), stream_of(second.train))
    # A changed file changes the fingerprint, so that corpus is tokenised again.
    (corpus / "doc_00_0.txt").write_text("changed", encoding="utf-8")
    with pytest.raises(AssertionError, match="tokenised again"):
        build_data(spec, seed=0, cache_dir=tmp_path / "cache")


def test_a_failed_build_leaves_no_cache_behind(tmp_path, monkeypatch):
    corpus = write_txt_corpus(tmp_path / "corpus", copies=70)  # 280 documents: two encode batches of 256
    spec = {"task": "text", "path": str(corpus), "seq_len": 32}
    calls = []
    original = ByteTokenizer.encode_batch

    def fail_on_second_batch(self, texts):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(ByteTokenizer, "encode_batch", fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        build_data(spec, seed=0, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "text").iterdir()) == []  # no partial .bin, no temporary file
    monkeypatch.setattr(ByteTokenizer, "encode_batch", original)
    bundle = build_data(spec, seed=0, cache_dir=tmp_path / "cache")
    assert bundle.info["train_documents"] + bundle.info["val_documents"] == 280


def test_packed_dataset_pickles_without_its_tokens(tmp_path):
    corpus = write_txt_corpus(tmp_path / "corpus")
    bundle = build_data({"task": "text", "path": str(corpus), "seq_len": 32, "val_fraction": 0.2},
                        seed=0, cache_dir=tmp_path / "cache")
    bundle.train[0]  # opens the memory map
    restored = pickle.loads(pickle.dumps(bundle.train))
    assert len(pickle.dumps(bundle.train)) < 2000
    assert torch.equal(restored[3][0], bundle.train[3][0])


def test_stdlib_split_is_deterministic_disjoint_and_limited():
    train, val = stdlib_corpus("train"), stdlib_corpus("validation")
    assert train.files and val.files and not set(train.files) & set(val.files)
    assert stdlib_corpus("train").files == train.files
    root = stdlib_root()
    assert sorted(train.files + val.files) == sorted(p.relative_to(root).as_posix() for p in stdlib_files())
    assert 0.02 < len(val.files) / (len(train.files) + len(val.files)) < 0.1
    assert not any(part in ("site-packages", "test", "tests") for f in train.files for part in f.split("/")[:-1])
    small = stdlib_corpus("train", max_files=10)
    assert len(small.files) == 10 and set(small.files) <= set(train.files)
    assert len(stdlib_corpus("validation", max_files=10).files) == 1


def test_stdlib_default_source_round_trips_bytes(tmp_path):
    bundle = build_data({"task": "text", "max_files": 6, "seq_len": 64}, seed=0, cache_dir=tmp_path)
    assert bundle.info["source"] == "stdlib" and bundle.info["train_files"] == 6
    tokenizer = ByteTokenizer()
    documents = [tokenizer.decode(d.tolist()) for d in split_documents(stream_of(bundle.train), tokenizer.eod_id)]
    assert documents == list(load_texts("stdlib", max_files=6))
    expected = [i for text in documents for i in [*tokenizer.encode(text), tokenizer.eod_id]]
    inputs, targets = bundle.train[1]
    assert inputs.tolist() == expected[65:129] and targets.tolist() == expected[66:130]


def test_max_bytes_caps_the_stream(tmp_path):
    bundle = build_data({"task": "text", "max_bytes": 50_000, "seq_len": 64}, seed=0, cache_dir=tmp_path)
    assert 50_000 <= bundle.info["train_tokens"] < 50_000 + 300_000
    assert bundle.info["val_tokens"] >= 2_500


def test_hub_source_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    splits = {"train": [f"train text {i} " * 5 for i in range(40)], "test": [f"test text {i} " * 5 for i in range(10)]}
    requests = []

    def fake_load_dataset(name, config=None, *, split):
        requests.append((name, config, split))
        return datasets.Dataset.from_dict({"content": splits[split], "other": [0] * len(splits[split])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = {"task": "text", "dataset": "someone/corpus", "dataset_config": "raw", "val_split": "test",
            "text_field": "content", "seq_len": 32}
    bundle = build_data(spec, seed=0, cache_dir=tmp_path)
    assert requests == [("someone/corpus", "raw", "train"), ("someone/corpus", "raw", "test")]
    assert bundle.info["source"] == "hub:someone/corpus/raw" and bundle.info["val_documents"] == 10
    tokenizer = ByteTokenizer()
    decoded = [tokenizer.decode(d.tolist()) for d in split_documents(stream_of(bundle.val), tokenizer.eod_id)]
    assert decoded == splits["test"]
    with pytest.raises(ValueError, match="data.text_field: expected a column of 'someone/corpus'"):
        build_data({**spec, "text_field": "body"}, seed=0, cache_dir=tmp_path)


def test_default_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQARCH_CACHE", str(tmp_path / "env-cache"))
    bundle = build_data({"task": "text", "max_files": 3, "seq_len": 64}, seed=0)
    assert all(path.startswith(str(tmp_path / "env-cache")) for path in bundle.info["cache"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"path": "/no/such/dir"}, "data.path: no such file or directory: '/no/such/dir'"),
        ({"source": "files"}, "data.path: expected a value for source 'files'"),
        ({"source": "web"}, "data.source: expected one of stdlib, files, hub, got 'web'"),
        ({"tokenizer": "/no/tokenizer.json"}, "data.tokenizer: expected 'bytes' or a tokenizer.json"),
        ({"val_fraction": 0.9}, "data.val_fraction"),
        ({"seq_len": 0}, "data.seq_len"),
        ({"dataset": "wikitext", "max_files": 3}, "data.max_files: expected null for source 'hub'"),
        ({"eod_token": "</s>"}, "data.eod_token"),
        ({"vocab_size": 300}, "data.vocab_size: unknown key for task 'text'"),
    ],
)
def test_bad_options_fail_before_anything_is_written(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        build_data({"task": "text", **spec}, seed=0, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_too_little_text_for_one_block_names_seq_len(tmp_path):
    corpus = write_txt_corpus(tmp_path / "corpus", copies=1)
    with pytest.raises(ValueError, match="data.seq_len: expected the (train|validation) split"):
        build_data({"task": "text", "path": str(corpus), "seq_len": 4096}, seed=0, cache_dir=tmp_path / "cache")


def test_a_binary_file_given_as_text_is_refused_with_the_byte_offset(tmp_path):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"plain start\n" * 10 + b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"data.path: expected UTF-8 text.* 0xff .*byte offset 120 of .*weights.txt"):
        build_data({"task": "text", "path": str(binary), "seq_len": 8}, seed=0, cache_dir=tmp_path / "cache")
    records = tmp_path / "records.jsonl"
    records.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    with pytest.raises(ValueError, match=r"byte offset 25 of .*records.jsonl"):
        build_data({"task": "text", "path": str(records), "seq_len": 8}, seed=0, cache_dir=tmp_path / "cache")
