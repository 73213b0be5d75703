"""The transformers model over seqarch (the ``hf`` extra): config, forward, generate through
transformers equal to seqarch's own, left padding, save and load without seqarch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoConfig, AutoModelForCausalLM

import seqarch
from seqarch.hf import SeqarchCache, SeqarchConfig, SeqarchForCausalLM
from seqarch.models import ModelConfig

from conftest import SMALL_OPTIONS, CausalEMA

VOCAB = 40
CAUSAL_MIXERS = sorted(seqarch.MIXERS)  # every built-in mixer has a causal (recurrent) form
HYBRID = ["s4d", "attention", "m2"]


def tiny(mixer, *, seed: int = 0, **fields) -> SeqarchForCausalLM:
    torch.manual_seed(seed)
    n_layers = len(mixer) if isinstance(mixer, list) else 1
    names = mixer if isinstance(mixer, list) else [mixer]
    options = {name: SMALL_OPTIONS.get(name, {}) for name in names}
    values = {"vocab_size": VOCAB, "d_model": 16, "n_layers": n_layers, "mixer": mixer, "mixer_options": options,
              "max_length": 64, **fields}
    return SeqarchForCausalLM(SeqarchConfig(values)).eval()


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_holds_the_model_config_and_round_trips(tmp_path):
    config = SeqarchConfig(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, mixer=["s4d", "attention"],
                                       mixer_options={"attention": {"n_heads": 2}}, channel_mixer="mlp"))
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SeqarchConfig) and loaded.model_type == "seqarch"
    assert loaded.seqarch_config == config.seqarch_config
    assert loaded.seqarch_config.layer_mixers == ["s4d", "attention"]
    assert (loaded.vocab_size, loaded.hidden_size, loaded.num_hidden_layers) == (VOCAB, 16, 2)
    with pytest.raises(ValueError, match="mixer: unknown mixer 'nope'"):
        SeqarchConfig({"mixer": "nope"})
    with pytest.raises(ValueError, match="unknown key"):
        SeqarchConfig({"widht": 3})


def test_auto_model_builds_the_registered_class():
    model = AutoModelForCausalLM.from_config(SeqarchConfig({"vocab_size": VOCAB, "d_model": 16, "n_layers": 1}))
    assert isinstance(model, SeqarchForCausalLM)


def test_forward_matches_seqarch_and_shifts_labels():
    model = tiny(HYBRID)
    tokens = prompts(2, 9)
    out = model(tokens, labels=tokens)
    torch.testing.assert_close(out.logits, model.model(tokens))
    assert torch.allclose(out.loss, model.model.loss(tokens[:, :-1], tokens[:, 1:]))
    last2 = model(tokens, logits_to_keep=2).logits
    torch.testing.assert_close(last2, out.logits[:, -2:])
    picked = model(tokens, logits_to_keep=torch.tensor([0, 4])).logits
    torch.testing.assert_close(picked, out.logits[:, [0, 4]])
    with pytest.raises(ValueError, match="labels: expected shape"):
        model(tokens, labels=tokens[:, :3])


@pytest.mark.parametrize("mixer", [*CAUSAL_MIXERS, "hybrid"])
def test_generate_equals_seqarch_generate_greedy_sampled_and_left_padded(mixer):
    model = tiny(HYBRID if mixer == "hybrid" else mixer)
    prompt = prompts(2, 6)
    greedy = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(greedy, model.model.generate(prompt, 5, temperature=0))
    torch.manual_seed(7)
    sampled = model.generate(prompt, max_new_tokens=5, do_sample=True, temperature=0.8, top_k=10)
    ours = model.model.generate(prompt, 5, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, ours)
    # A left-padded batch: each row's tokens are those of the row alone (pads read by no state).
    short, long = prompts(1, 3, seed=2), prompts(1, 7, seed=3)
    pad = 0
    batch = torch.cat([torch.cat([torch.full((1, 4), pad), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 3)], 1), torch.ones(1, 7)]).long()
    padded = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    assert torch.equal(padded[0, 4:], model.model.generate(short, 4, temperature=0)[0])
    assert torch.equal(padded[1], model.model.generate(long, 4, temperature=0)[0])
    # The same rows through a plain (cache-free) forward: the real positions' logits agree.
    logits = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0, 4:], model.model(short)[0], atol=1e-5, rtol=1e-5)


def test_cache_holds_every_layers_state():
    model = tiny(HYBRID)
    cache = SeqarchCache()
    model(prompts(2, 5), cache=cache, use_cache=True)
    assert cache.get_seq_length() == 5 and len(cache) == 3 and len(cache.groups) == 1
    assert cache.groups[0].states[1]["length"] == 5  # the attention layer's KV cache
    model(prompts(2, 1), cache=cache, use_cache=True)
    assert cache.get_seq_length() == 6 and cache.groups[0].states[1]["length"] == 6


def test_bidirectional_model_scores_but_refuses_to_generate():
    model = tiny("s4d", causal=False)
    tokens = prompts(1, 5)
    assert model(tokens).logits.shape == (1, 5, VOCAB)
    with pytest.raises(ValueError, match="bidirectional"):
        model.generate(tokens, max_new_tokens=2)


def test_bad_masks_and_beams_are_named():
    model = tiny("s4d")
    tokens = prompts(1, 4)
    with pytest.raises(ValueError, match="attention_mask: expected each row"):
        model(tokens, attention_mask=torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(tokens, max_new_tokens=2, num_beams=2)


def test_a_mixer_outside_seqarch_is_not_exported_and_nothing_is_written(tmp_path, registered):
    registered("test_ema", CausalEMA)
    model = tiny("test_ema")
    with pytest.raises(ValueError, match="mixer 'test_ema' is defined in module"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    sys.modules["seqarch"] = None  # the editable install is on the path: block it
    import torch
    from transformers import AutoModelForCausalLM
    good, bad = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(good, trust_remote_code=True).eval()
    assert "seqarch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
    prompt = torch.tensor(json.loads(sys.argv[3]))
    tokens = model.generate(prompt, max_new_tokens=5, do_sample=False)
    try:
        AutoModelForCausalLM.from_pretrained(bad, trust_remote_code=True)
        error = None
    except ValueError as caught:
        error = str(caught)
    print("RESULT", json.dumps({"tokens": tokens.tolist(), "module": type(model).__module__, "error": error}))
""")


def test_saved_folder_loads_in_a_process_without_seqarch(tmp_path):
    model = tiny(HYBRID)
    good, bad = tmp_path / "good", tmp_path / "bad"
    model.save_pretrained(good)
    assert (good / "model.safetensors").is_file() and (good / "seqarch_code.py").is_file()
    config = json.loads((good / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_seqarch.SeqarchForCausalLM"
    model.save_pretrained(bad)
    config["model_config"]["mixer_options"]["s4d"]["d_stat"] = 4  # an option the exported code does not know
    (bad / "config.json").write_text(json.dumps(config))
    prompt = prompts(2, 5)
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(good), str(bad), json.dumps(prompt.tolist())],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    assert result["module"].startswith("_seqarch_vendored_")
    assert result["tokens"] == model.model.generate(prompt, 5, temperature=0).tolist()
    assert result["error"] is not None and "d_stat: not an option of mixer 's4d'" in result["error"]
