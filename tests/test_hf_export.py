"""``seqarch export`` and ``seqarch eval`` on a tiny byte-level model trained here (the ``hf`` extra);
lm-eval runs on local task YAMLs over a local jsonl (one loglikelihood, one generate_until task)."""

from __future__ import annotations

import json
import os

# No downloads anywhere: the tasks read a local jsonl, the model and tokenizer a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from transformers import AutoModelForCausalLM, AutoTokenizer

import seqarch.hf  # noqa: F401  registers the auto classes
from seqarch.data.tokenizers import ByteTokenizer
from seqarch.hf.export import byte_tokenizer, export_run, load_run_model
from seqarch.training.cli import main

PATTERN = "abcd efgh abcd efgh\n"
TASK_LOGLIK = """\
task: seqarch_test_loglik
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
metric_list: [{{metric: acc}}]
"""
TASK_GENERATE = """\
task: seqarch_test_generate
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs: {{until: [" ", "\\n"], max_gen_toks: 4, do_sample: false}}
metric_list: [{{metric: exact_match}}]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-layer byte-level model trained on a repeating pattern: (run folder, exported folder)."""
    root = tmp_path_factory.mktemp("hf_export")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"doc{i}.txt").write_text(PATTERN * 20)
    config = {"name": "tiny_lm", "data": {"task": "text", "source": "files", "path": str(corpus), "seq_len": 32,
                                          "tokenizer": "bytes", "val_fraction": 0.5},
              "model": {"d_model": 32, "n_layers": 2, "mixer": ["s4d", "attention"]},
              "train": {"steps": 30, "batch_size": 8, "eval_every": 40, "checkpoint_every": 40, "lr": 1e-2,
                        "warmup_steps": 4},
              "trainer": {"accelerator": "cpu"}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--output", str(root / "runs"), "--quiet",
                 "--cache-dir", str(root / "cache")]) == 0
    run = root / "runs" / "tiny_lm-train"  # seqarch train writes NAME-train
    out = root / "exported"
    assert main(["export", str(run), str(out)]) == 0
    return run, out


def test_export_writes_weights_tokenizer_and_code_that_match_the_run(trained):
    run, out = trained
    for name in ("model.safetensors", "config.json", "tokenizer.json", "seqarch_code.py", "modeling_seqarch.py"):
        assert (out / name).is_file(), name
    ours, _ = load_run_model(run)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.tensor([list(PATTERN[:12].encode())])
    torch.testing.assert_close(model(tokens).logits, ours(tokens).logits)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "héllo, wörld\n  x"
    assert tokenizer(text)["input_ids"] == ByteTokenizer().encode(text)
    assert tokenizer.decode(ByteTokenizer().encode(text)) == text
    assert tokenizer.eos_token_id == model.config.eos_token_id == ByteTokenizer.eod_id
    # The trained model continues its pattern.
    prompt = tokenizer("abcd efgh ab", return_tensors="pt")["input_ids"]
    continued = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(continued[0, prompt.shape[1]:]) == "cd "


def test_export_bad_input_is_named_and_writes_nothing(trained, tmp_path):
    run, _ = trained
    with pytest.raises(ValueError, match="holds no checkpoints"):
        export_run(tmp_path, tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="OUT_DIR: .* is not an empty folder"):
        export_run(run, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    # A run whose tokenizer file has gone: the export names it and leaves nothing behind.
    moved = tmp_path / "run"
    (moved / "checkpoints").mkdir(parents=True)
    for ckpt in (run / "checkpoints").iterdir():
        (moved / "checkpoints" / ckpt.name).symlink_to(ckpt)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"]["tokenizer"] = str(tmp_path / "gone" / "tokenizer.json")
    (moved / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ValueError, match="tokenizer .*gone.* which is not found"):
        export_run(moved, tmp_path / "b")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "c")]) == 2


def test_byte_tokenizer_ids_are_the_bytes():
    tokenizer = byte_tokenizer()
    assert len(tokenizer) == ByteTokenizer.vocab_size
    assert tokenizer("\x00\xff é")["input_ids"] == list("\x00\xff é".encode())


def test_lm_eval_runs_through_seqarch_eval_and_plain_lm_eval(trained, tmp_path):
    _, out = trained
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "abcd efgh ab", "target": "cd"}, {"prompt": "efgh abcd ef", "target": "gh"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "loglik.yaml").write_text(TASK_LOGLIK.format(data=data))
    (tasks / "generate.yaml").write_text(TASK_GENERATE.format(data=data))
    results = tmp_path / "results.json"
    assert main(["eval", str(out), "--tasks", "seqarch_test_loglik,seqarch_test_generate",
                 "--include-path", str(tasks), "--output", str(results)]) == 0
    ours = json.loads(results.read_text())
    # The model learnt the pattern: the continuation is the most likely one, and generated.
    assert ours["seqarch_test_loglik"]["acc,none"] == 1.0
    assert ours["seqarch_test_generate"]["exact_match,none"] == 1.0
    # lm-eval's stock hf model with the plain command line's model_args, without seqarch's wrapper (the
    # command line itself only adds its index of every built-in task, seconds of start-up, to this call).
    import lm_eval
    from lm_eval.tasks import TaskManager

    plain = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={out},trust_remote_code=True",
                                    tasks=["seqarch_test_loglik"], device="cpu",
                                    task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    assert plain["results"]["seqarch_test_loglik"]["acc,none"] == 1.0
    assert main(["eval", str(tmp_path), "--tasks", "seqarch_test_loglik"]) == 2  # not an exported folder


def word_tokenizer(path, specials):
    """A tiny WordLevel ``tokenizer.json`` over the words of ``WORDS`` (``specials`` first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(WORDS, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.save(str(path))
    return path


WORDS = ["the cat sat on the mat", "a dog ran in the park", "the bird flew over the tree"]


def test_export_of_a_run_trained_with_its_own_tokenizer(tmp_path):
    from seqarch.data.tokenizers import HFTokenizer

    # No end-of-document token in the vocabulary: seqarch appends one id after it; the export must agree.
    path = word_tokenizer(tmp_path / "tokenizer.json", ["[UNK]"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(WORDS * 4):
        (corpus / f"d{i}.txt").write_text(doc + "\n")
    config = {"name": "words", "data": {"task": "text", "source": "files", "path": str(corpus), "seq_len": 8,
                                        "tokenizer": str(path), "val_fraction": 0.3},
              "model": {"d_model": 16, "n_layers": 1, "mixer": "s4d"},
              "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1},
              "trainer": {"accelerator": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "runs"), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "runs" / "words-train"), str(out)]) == 0
    ours = HFTokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    text = "the cat ran over the park"
    assert tokenizer(text)["input_ids"] == ours.encode(text)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == model.config.eos_token_id == ours.eod_id
    assert len(tokenizer) == ours.vocab_size == model.config.vocab_size
    assert tokenizer.decode(ours.encode(text)) == text
    # A vocabulary with an end-of-document token of its own, found by name or named by data.eod_token.
    from seqarch.hf.export import file_tokenizer

    named = word_tokenizer(tmp_path / "named.json", ["[UNK]", "</s>"])
    for eod_token in (None, "[UNK]"):
        ours = HFTokenizer(named, eod_token=eod_token)
        wrapped = file_tokenizer(str(named), eod_token, tmp_path)
        assert wrapped.eos_token_id == ours.eod_id and wrapped(text)["input_ids"] == ours.encode(text)


def test_export_without_the_runs_config_is_an_error(trained, tmp_path):
    run, _ = trained
    moved = tmp_path / "run"  # the checkpoints alone: which tokenizer the run used is unknown
    (moved / "checkpoints").mkdir(parents=True)
    for ckpt in (run / "checkpoints").iterdir():
        (moved / "checkpoints" / ckpt.name).symlink_to(ckpt)
    with pytest.raises(ValueError, match="RUN_FOLDER: no config.yaml"):
        export_run(moved, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
