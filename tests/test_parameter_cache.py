"""Constants derived from parameters (SSM kernels, discretised matrices, filter taps, rotary
tables) are made once per parameter version outside training, and never go stale."""

from __future__ import annotations

import pytest
import torch

import seqarch
from seqarch.models import LanguageModel, ModelConfig
from seqarch.modules.parameter_cache import cached, clear_cache

from helpers import relative_rms

MIXERS = ["s4", "s4d", "m2", "attention", "mamba", "mamba2", "gated_deltanet"]


def small_model(mixer: str) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=2, mixer=mixer, max_length=32,
                         mixer_options={"s4": {"d_state": 8}, "s4d": {"d_state": 8}, "m2": {"filter_order": 8},
                                       "mamba2": {"head_dim": 8, "d_state": 8}})
    return LanguageModel(config, dtype=torch.float64).eval()


def generate_both(model: LanguageModel, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens from the cached recurrent path and from full forwards, with logits compared too."""
    fast = model.generate(prompt, 6, temperature=0)
    slow = model.generate(prompt, 6, temperature=0, use_cache=False)
    return fast, slow


def bump(model: LanguageModel) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3).add_(0.05)


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_after_weights_change_in_place_uses_the_new_weights(mixer):
    model = small_model(mixer)
    prompt = torch.randint(0, 32, (2, 5))
    first, reference = generate_both(model, prompt)
    assert torch.equal(first, reference)
    bump(model)
    second, reference = generate_both(model, prompt)
    assert torch.equal(second, reference)
    with torch.no_grad():
        logits = model(second)
    clear_cache(model)
    with torch.no_grad():
        assert torch.equal(model(second), logits)  # nothing stale was served before the clear


@pytest.mark.parametrize("mixer", ["s4", "s4d", "m2"])
def test_no_grad_forward_follows_an_optimizer_step_and_load_state_dict(mixer):
    model = small_model(mixer)
    tokens = torch.randint(0, 32, (2, 12))
    with torch.no_grad():
        before = model(tokens)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model.loss(tokens, tokens).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = model(tokens)
    fresh = small_model(mixer)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(tokens), after_step)  # a model that never cached agrees
    assert relative_rms(after_step, before) > 1e-3
    model.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(model(tokens), before)


def test_training_forward_builds_the_graph_every_time():
    """Grad mode with trainable parameters computes the kernel afresh: its parameters get gradients."""
    mixer = seqarch.build_mixer("s4d", 8, d_state=4, dtype=torch.float64)
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        mixer(x)  # fills the cache
    mixer(x).square().sum().backward()
    assert mixer.kernel.log_dt.grad is not None and mixer.kernel.log_dt.grad.abs().sum() > 0


def counting_weight_sum(layer):
    """A value of ``layer.weight`` and the list its computations append to."""
    calls = []

    def compute():
        calls.append(1)
        return layer.weight.sum()
    return compute, calls


def test_values_are_reused_until_a_parameter_changes_or_is_replaced():
    layer = torch.nn.Linear(3, 3)
    compute, calls = counting_weight_sum(layer)

    with torch.no_grad():
        cached(layer, "sum", compute)
        cached(layer, "sum", compute)
        assert len(calls) == 1
        layer.weight.add_(1.0)  # in place: the version counter moves
        cached(layer, "sum", compute)
        assert len(calls) == 2
        layer.weight = torch.nn.Parameter(torch.zeros(3, 3))  # replaced
        assert cached(layer, "sum", compute) == 0 and len(calls) == 3
    cached(layer, "sum", compute)  # grad mode, trainable parameters: computed every time
    cached(layer, "sum", compute)
    assert len(calls) == 5


def test_values_of_named_parameters_follow_those_parameters_only():
    layer = torch.nn.Linear(3, 3)
    compute, calls = counting_weight_sum(layer)

    def ask():
        return cached(layer, "weight sum", compute, params=(layer.weight,))

    with torch.no_grad():
        ask()
        layer.bias.add_(1.0)  # not named: the value does not derive from it
        ask()
        assert len(calls) == 1
        layer.weight.mul_(2.0)
        ask()
        assert len(calls) == 2
        layer.weight = torch.nn.Parameter(torch.zeros(3, 3))  # replaced: the caller names the new one
        assert ask() == 0 and len(calls) == 3


def test_a_cached_ssm_step_equals_the_forward():
    """The step's cached discretisation gives the forward's outputs, before and after a weight change."""
    for name in ("s4", "s4d"):
        mixer = seqarch.build_mixer(name, 8, d_state=4, dtype=torch.float64, **({"max_length": 16} if name == "s4"
                                                                                 else {}))
        x = torch.randn(2, 16, 8, dtype=torch.float64)
        for _ in range(2):
            with torch.no_grad():
                state = mixer.init_state(2)
                steps = []
                for t in range(16):
                    y, state = mixer.step(x[:, t], state)
                    steps.append(y)
                assert relative_rms(torch.stack(steps, 1), mixer(x)) < 1e-9
                for p in mixer.parameters():
                    p.mul_(0.9)


def prefill_then_step(mixer, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs and the final state of a no-grad prefill of ``x`` then one step, as a flat list."""
    with torch.no_grad():
        y, state = mixer.prefill(x[:, :-1], mixer.init_state(x.shape[0], max_length=x.shape[1]))
        y_t, state = mixer.step(x[:, -1], state)
    return [y, y_t] + [v for _, v in sorted(state.items()) if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("mixer", ["s4", "s4d", "h3", "hyena_modal"])
def test_prefill_follows_a_weight_change_an_optimizer_step_and_load_state_dict(mixer):
    """A prefill keeps what it derives from the parameters alone (S4's recurrent output matrix and
    chunk operators, the diagonal SSMs' discretisation and decay powers): after each kind of change
    it equals a prefill of a new layer holding the same weights, which has cached nothing."""
    options = {"max_length": 16} if mixer == "s4" else {}
    torch.manual_seed(0)
    layer = seqarch.build_mixer(mixer, 8, d_state=4, dtype=torch.float64, **options).eval()
    x = torch.randn(2, 13, 8, dtype=torch.float64)

    def equals_a_fresh_copy() -> list[torch.Tensor]:
        fresh = seqarch.build_mixer(mixer, 8, d_state=4, dtype=torch.float64, **options).eval()
        fresh.load_state_dict(layer.state_dict())
        ours, theirs = prefill_then_step(layer, x), prefill_then_step(fresh, x)
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
        return ours

    before = equals_a_fresh_copy()
    saved = {k: v.clone() for k, v in layer.state_dict().items()}
    bump(layer)
    bumped = equals_a_fresh_copy()
    assert relative_rms(bumped[0], before[0]) > 1e-3
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    layer(x).square().mean().backward()
    optimizer.step()
    layer.eval()
    stepped = equals_a_fresh_copy()
    assert relative_rms(stepped[0], bumped[0]) > 1e-6
    layer.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(prefill_then_step(layer, x), before))


# The SSMs cache complex kernels with real views of them; attention caches nothing but compiles.
@pytest.mark.parametrize("mixer", ["s4", "s4d", "attention"])
def test_a_model_that_has_cached_and_compiled_saves_whole_and_copies(mixer, tmp_path):
    """torch.save(model) and copy.deepcopy after no-grad forwards, generate and a compiled step: the
    derived values (cached kernels, some views of one storage in two dtypes, which torch.save refuses;
    compiled steps) stay behind, and the loaded and copied models decode as the original."""
    import copy

    model = small_model(mixer)
    prompt = torch.randint(0, 32, (2, 5))
    with torch.no_grad():
        model(prompt)
    expected = model.generate(prompt, 6, temperature=0)
    assert torch.equal(model.generate(prompt, 6, temperature=0, compile_step="aot_eager"), expected)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert "_compiled_steps" not in loaded.__dict__
    for other in (loaded, copy.deepcopy(model)):
        assert torch.equal(other.generate(prompt, 6, temperature=0), expected)
