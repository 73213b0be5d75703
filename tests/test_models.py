"""Models: language model, generation through the recurrent path, hybrids, classifier, config errors."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

import seqarch
from seqarch.budget import flops_breakdown
from seqarch.losses import IGNORE_INDEX
from seqarch.models.presets import PRESETS, build_preset, register_preset

from conftest import SMALL_OPTIONS


def small_config(mixer, **changes):
    names = [mixer] if isinstance(mixer, str) else mixer
    options = {name: SMALL_OPTIONS.get(name, {}) for name in names}
    base = {"vocab_size": 40, "d_model": 16, "n_layers": len(names) if not isinstance(mixer, str) else 2,
            "mixer": mixer, "mixer_options": options, "max_length": 64}
    return seqarch.ModelConfig(**{**base, **changes})


@pytest.mark.parametrize("mixer", sorted(seqarch.MIXERS) + [["s4d", "s4d", "attention"]])
def test_generate_with_recurrent_path_equals_full_recompute(mixer):
    torch.manual_seed(0)
    model = seqarch.LanguageModel(small_config(mixer), dtype=torch.float64).eval()
    prompt = torch.randint(0, 40, (2, 9))
    greedy = model.generate(prompt, 12, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 12, temperature=0, use_cache=False))
    assert greedy.shape == (2, 21) and torch.equal(greedy[:, :9], prompt)
    sampled = model.generate(prompt, 12, top_k=5, generator=torch.Generator().manual_seed(3))
    recomputed = model.generate(prompt, 12, top_k=5, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(sampled, recomputed)


def test_unchecked_decoding_steps_equal_checked_ones_and_checks_still_name_a_bad_state():
    torch.manual_seed(0)
    model = seqarch.LanguageModel(small_config(["s4d", "attention"]), dtype=torch.float64).eval()
    backbone = model.backbone
    prompt = torch.randint(0, 40, (2, 5))
    _, states = backbone.prefill(prompt, backbone.init_state(2, max_length=16))
    token = torch.tensor([3, 7])
    checked, checked_states = backbone.step(token, states)
    _, states = backbone.prefill(prompt, backbone.init_state(2, max_length=16))
    unchecked, unchecked_states = backbone.step(token, states, check=False)
    assert torch.equal(checked, unchecked)
    assert [s["length"] for s in checked_states[1:]] == [s["length"] for s in unchecked_states[1:]] == [6]
    with pytest.raises(ValueError, match="state"):
        backbone.step(torch.tensor([3, 7, 1]), checked_states)  # states made for a batch of 2


def test_hybrid_config_builds_one_mixer_per_layer():
    model = seqarch.LanguageModel(small_config(["s4d", "s4d", "attention"]))
    kinds = [type(block.mixer).name for block in model.backbone.blocks]
    assert kinds == ["s4d", "s4d", "attention"]
    assert model.backbone.blocks[2].mixer.n_heads == 2


def test_language_model_loss_and_tied_embeddings():
    model = seqarch.LanguageModel(small_config("attention"))
    tokens = torch.randint(0, 40, (3, 10))
    targets = tokens.clone()
    targets[:, :5] = -100
    loss = model.loss(tokens, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.head.weight is model.backbone.embedding.weight
    untied = seqarch.LanguageModel(small_config("attention", tie_embeddings=False))
    assert untied.num_params() == model.num_params() + 40 * 16
    assert model.flops_per_token(32) > 0


def test_one_loss_and_one_head_flops_formula():
    model = seqarch.LanguageModel(small_config("attention"))
    tokens = torch.randint(0, 40, (3, 10))
    targets = tokens.clone()
    targets[:, :5] = IGNORE_INDEX
    logits = model(tokens)
    scored = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[scored], targets[scored])
    torch.testing.assert_close(model.loss(tokens, targets), expected)
    torch.testing.assert_close(model.loss_from_logits(logits, targets), expected)
    assert torch.equal(model.scored(targets), scored)
    assert model.head_flops(10) == 2 * 16 * 40 * 10
    assert flops_breakdown(model.config, 10)["head"] == model.head_flops(10)
    classifier = seqarch.SequenceClassifier(small_config("s4d", causal=False, num_classes=5))
    labels = torch.tensor([0, 4, 2])
    torch.testing.assert_close(classifier.loss(tokens, labels),
                               torch.nn.functional.cross_entropy(classifier(tokens), labels))
    assert classifier.head_flops(10) == 2 * 16 * 5 == flops_breakdown(classifier.config, 10)["head"]


def test_presets_name_architectures_with_overrides():
    m2 = build_preset("m2", {"d_model": 32, "channel_mixer": "glu"})
    assert (m2.mixer, m2.channel_mixer, m2.d_model) == ("m2", "monarch", 32)  # the preset wins over the base
    assert build_preset("m2", d_model=32, monarch_blocks=2).monarch_blocks == 2  # overrides win over the preset
    assert build_preset("transformer").mixer == "attention" and build_preset("hyena").channel_mixer == "glu"
    # Mixer options merge: the preset's rotary and the base's heads both hold.
    transformer = build_preset("transformer", {"mixer_options": {"attention": {"n_heads": 2}, "dropout": 0.1}})
    assert transformer.mixer_options == {"attention": {"n_heads": 2, "rotary": True}, "dropout": 0.1}
    assert {"transformer", "s4", "s4d", "m2", "hyena"} <= set(PRESETS)
    with pytest.raises(ValueError, match="preset: unknown preset 'm3'; expected one of"):
        build_preset("m3")
    with pytest.raises(ValueError, match=r"register_preset\('bad'\): unknown ModelConfig field\(s\) \['width'\]"):
        register_preset("bad", "no such field", mixer="s4d", width=3)
    with pytest.raises(ValueError, match="channel_mixer: expected one of"):
        register_preset("bad", "a bad value", mixer="s4d", channel_mixer="moe")
    with pytest.raises(ValueError, match="preset name 'm2' is already registered"):
        register_preset("m2", "another m2", mixer="m2")
    assert "bad" not in PRESETS


def test_classifier_pools_real_tokens():
    config = small_config("s4d", causal=False, num_classes=5)
    model = seqarch.SequenceClassifier(config).eval()
    tokens = torch.randint(0, 40, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False
    logits = model(tokens, mask)
    assert logits.shape == (2, 5)
    assert model.loss(tokens, torch.tensor([1, 4]), mask).ndim == 0
    last = seqarch.SequenceClassifier(config.replace(pool="last"))
    assert last(tokens, mask).shape == (2, 5)


@pytest.mark.parametrize("changes,argument", [
    ({"mixer": "lstm"}, "mixer: unknown mixer 'lstm'"),
    ({"mixer": ["s4d"], "n_layers": 2}, "mixer: expected a list of n_layers=2"),
    ({"channel_mixer": "moe"}, "channel_mixer"),
    ({"d_model": 0}, "d_model"),
    ({"norm": "batchnorm"}, "norm"),
])
def test_bad_config_names_the_argument(changes, argument):
    with pytest.raises(ValueError, match=argument):
        seqarch.ModelConfig(**changes)


def test_incompatible_options_name_the_argument():
    with pytest.raises(ValueError, match="n_heads: expected a divisor of d_model=16, got 3"):
        seqarch.LanguageModel(small_config("attention", mixer_options={"n_heads": 3}))
    with pytest.raises(ValueError, match="nblocks"):
        seqarch.LanguageModel(small_config("attention", channel_mixer="monarch", monarch_blocks=3))


def test_bad_tokens_name_the_argument():
    model = seqarch.LanguageModel(small_config("attention"))
    with pytest.raises(ValueError, match="tokens: expected ids in"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="tokens: expected an integer tensor of shape"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model.loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="causal"):
        seqarch.LanguageModel(small_config("attention", causal=False))


def test_config_round_trips_and_rejects_unknown_keys():
    config = small_config(["s4d", "attention"])
    assert seqarch.ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key"):
        seqarch.ModelConfig.from_dict({"widht": 3})


@pytest.mark.parametrize("mixer", sorted(seqarch.MIXERS))
def test_every_mixer_learns_a_task_that_needs_mixing(mixer):
    """Gradients are not just present but useful: predicting the previous token needs the
    sequence mixer (with the mixer's output zeroed, the same run stalls near loss 1.8)."""
    torch.manual_seed(0)
    model = seqarch.LanguageModel(small_config(mixer, d_model=32))
    tokens = torch.randint(0, 40, (8, 32))
    targets = torch.roll(tokens, 1, dims=1)
    targets[:, 0] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.loss(tokens, targets)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5


def test_a_mixer_declares_its_presets_in_its_own_file():
    from seqarch.models.presets import all_presets

    @seqarch.register_mixer("declares_presets_for_test")
    class WithPresets(seqarch.Mixer):
        presets: ClassVar[dict[str, dict[str, Any]]] = {
            "with-presets-for-test": {"description": "a test family, no channel mixer",
                                      "channel_mixer": "none", "n_layers": 3}}

        def forward(self, x):
            return x

        def flops_breakdown(self, length):
            return {"matmul": 0, "fft": 0, "other": 0}

        def state_size(self, length):
            return 0

    try:
        preset = all_presets()["with-presets-for-test"]
        assert preset.fields == {"channel_mixer": "none", "n_layers": 3, "mixer": "declares_presets_for_test"}
        config = build_preset("with-presets-for-test", d_model=8)
        assert (config.mixer, config.channel_mixer, config.n_layers) == ("declares_presets_for_test", "none", 3)
    finally:
        seqarch.MIXERS.pop("declares_presets_for_test")
        PRESETS.pop("with-presets-for-test", None)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("nan")}, "temperature: expected a finite number >= 0"),
    ({"temperature": float("inf")}, "temperature: expected a finite number >= 0"),
    ({"temperature": "hot"}, "temperature: expected a finite number >= 0 .*'hot'"),
    ({"top_k": 2.5}, "top_k: expected a positive integer or None, got 2.5"),
    ({"top_k": True}, "top_k: expected a positive integer or None, got True"),
])
def test_generate_names_a_bad_sampling_argument(kwargs, message):
    model = seqarch.LanguageModel(seqarch.ModelConfig(vocab_size=12, d_model=16, mixer="s4d"))
    with pytest.raises(ValueError, match=message):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, **kwargs)


def test_generate_refuses_an_empty_prompt():
    model = seqarch.LanguageModel(seqarch.ModelConfig(vocab_size=12, d_model=16, mixer="m2"))
    with pytest.raises(ValueError,
                       match=r"prompt: expected at least one sequence of at least one token, got shape \(1, 0\)"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)


def test_attention_names_an_input_dtype_other_than_its_weights():
    mixer = seqarch.build_mixer("attention", 16)
    with pytest.raises(ValueError, match="x: expected dtype torch.float32 .* got torch.float64"):
        mixer(torch.randn(2, 5, 16, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixer(torch.randn(2, 5, 16)).shape == (2, 5, 16)
