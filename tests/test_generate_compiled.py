"""generate's compiled decoding step gives the eager step's tokens and logits."""

from __future__ import annotations

import re

import pytest
import torch
from torch._dynamo import register_backend

from seqarch.mixers.base import STEP_CONSTANTS
from seqarch.models import LanguageModel, ModelConfig


# An in-place KV cache; fixed SSM states, with step constants passed in: diagonal, DPLR, selective,
# and a modal Hyena of order 3 (two convolutions, so tap 0 too).
@pytest.mark.parametrize("mixer", ["attention", "s4d", "s4", "mamba2", "hyena_modal", "h3"])
def test_compiled_step_equals_the_eager_step(mixer):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer=mixer, max_length=32,
                         mixer_options={"s4d": {"d_state": 8}, "s4": {"d_state": 8},
                                        "mamba2": {"head_dim": 8, "d_state": 8},
                                        "hyena_modal": {"order": 3, "d_state": 8}, "h3": {"d_state": 8}})
    model = LanguageModel(config).eval()
    prompt = torch.randint(0, 32, (2, 5))
    # aot_eager: TorchDynamo's capture and AOTAutograd's functionalisation of the in-place cache
    # writes, without inductor's C++ build (too slow for the suite); the benchmark runs inductor.
    eager = model.generate(prompt, 8, temperature=0)
    assert torch.equal(model.generate(prompt, 8, temperature=0, compile_step="aot_eager"), eager)
    with torch.no_grad():
        states = model.backbone.init_state(2, max_length=16)
        _, states = model.backbone.prefill(prompt, states)
        twin = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states]
        token = eager[:, 5]
        compiled = model.compiled_decode_step("aot_eager")
        for _ in range(3):
            logits, states = compiled(token, states)
            expected, twin = model.decode_step(token, twin)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            token = expected.argmax(-1)
    with pytest.raises(ValueError, match="compile_step"):
        model.compiled_decode_step(3)


# Each writes or reads by position differently: a KV cache with rotary tables, rotary linear attention,
# a ring buffer's slot, a long convolution's history buffer.
@pytest.mark.parametrize("mixer", ["attention", "retnet", "sliding_window_attention", "hyena"])
def test_compiled_step_does_not_recompile_per_position(mixer):
    """A step at each new position reuses the compiled graph: nothing in it (the rotary table's size,
    say) is specialised on the position, which would recompile every token until Dynamo gives up."""
    torch.manual_seed(0)
    options = {"sliding_window_attention": {"window": 4}, "retnet": {"n_heads": 2}}
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer=mixer, max_length=32,
                         mixer_options=options.get(mixer, {}))
    model = LanguageModel(config).eval()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    step = torch.compile(model.decode_step, backend=counting_backend)
    with torch.no_grad():
        states = model.backbone.init_state(1, max_length=32)
        _, states = model.backbone.prefill(torch.randint(0, 32, (1, 3)), states)
        token = torch.tensor([1])
        for _ in range(12):
            logits, states = step(token, states)
            token = logits.argmax(-1)
    # One graph at the first position, one with the position made dynamic: none per position after.
    assert 1 <= len(graphs) <= 2, f"{len(graphs)} graphs for 12 positions"


@pytest.mark.parametrize("mixer", ["s4d", "mamba2"])
def test_compiled_step_reads_step_constants_fresh_after_a_weight_change(mixer):
    """The constants a compiled step is given come from the parameter cache before every call: after an
    in-place weight change the compiled step follows the new weights, as the eager one does."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer=mixer, max_length=32,
                         mixer_options={"s4d": {"d_state": 8}, "mamba2": {"head_dim": 8, "d_state": 8}})
    model = LanguageModel(config).eval()
    prompt = torch.randint(0, 32, (2, 5))
    compiled = model.compiled_decode_step("aot_eager")

    def first_logits(step):
        with torch.no_grad():
            states = model.backbone.init_state(2, max_length=16)
            _, states = model.backbone.prefill(prompt, states)
            logits, states = step(prompt[:, -1], states)
            logits, states = step(logits.argmax(-1), states)  # the second token: from the stepped state
        return logits, states

    before, _ = first_logits(compiled)
    layer = model.backbone.blocks[0].mixer
    with torch.no_grad():  # every decay of the step changes
        (layer.kernel.log_dt if mixer == "s4d" else layer.A_log).add_(1.5)
    after, returned = first_logits(compiled)
    expected, _ = first_logits(model.decode_step)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)
    # The states it returns hold no constants: no later call can read them stale.
    assert all(STEP_CONSTANTS not in state for state in returned)
    assert torch.equal(model.generate(prompt, 8, temperature=0, compile_step="aot_eager"),
                       model.generate(prompt, 8, temperature=0))


def test_a_compiled_step_graph_does_not_derive_the_ssm_matrices():
    """S4D's step matrices come from ``exp`` and ``expm1`` of the discretised eigenvalues: the graph of
    generate's compiled step reads them as inputs, where a graph of ``decode_step`` itself derives them.
    And it holds no complex tensor (inductor would run complex operators uncompiled): the state and
    the constants enter as real and imaginary parts."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer="s4d", max_length=32,
                         mixer_options={"s4d": {"d_state": 8}})
    model = LanguageModel(config).eval()
    codes = []

    inputs = []

    def recording_backend(graph_module, example_inputs):
        codes.append(graph_module.code)
        inputs.append(example_inputs)
        return graph_module.forward

    torch._dynamo.reset()
    register_backend(name="seqarch_recording", compiler_fn=recording_backend)
    with torch.no_grad():
        for step in (model.compiled_decode_step("seqarch_recording"), torch.compile(model.decode_step,
                                                                                     backend=recording_backend)):
            states = model.backbone.init_state(1, max_length=16)
            _, states = model.backbone.prefill(torch.randint(0, 32, (1, 3)), states)
            codes.append("--")
            step(torch.tensor([1]), states)
    given, traced = "\n".join(codes).split("--")[1:]
    derives = re.compile(r"torch\.(exp|expm1)\(")
    assert not derives.search(given), given
    assert derives.search(traced)
    assert "complex" not in given
    assert not any(t.is_complex() for t in inputs[0] if isinstance(t, torch.Tensor))


def counting(name: str) -> list:
    """A registered backend ``name`` that records each graph it is given and runs it as traced."""
    graphs: list = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    register_backend(name=name, compiler_fn=backend)
    return graphs


def decode_a_few(model: LanguageModel, step, dtype=torch.float32) -> list[torch.Tensor]:
    with torch.no_grad():
        states = model.backbone.init_state(2, max_length=16)
        _, states = model.backbone.prefill(torch.tensor([[1, 2, 3], [4, 5, 6]]), states)
        token, out = torch.tensor([7, 8]), []
        for _ in range(3):
            logits, states = step(token, states, check=False)
            out.append(logits)
            token = logits.argmax(-1)
    return out


@torch._dynamo.config.patch(recompile_limit=2)
def test_compiled_steps_of_many_models_have_graphs_of_their_own():
    """Each model's compiled step has its own graphs: with Dynamo's recompile limit at 2, a shared
    ``decode_step`` code object would leave the later models decoding eagerly, without a graph."""
    graphs = counting("seqarch_counting_models")
    torch._dynamo.reset()
    for seed, mixer in enumerate(["attention", "s4d", "gla", "mamba", "attention"]):
        torch.manual_seed(seed)
        config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer=mixer, max_length=32,
                             mixer_options={"s4d": {"d_state": 8}, "mamba": {"d_state": 4}})
        model = LanguageModel(config).eval()
        before = len(graphs)
        compiled = decode_a_few(model, model.compiled_decode_step("seqarch_counting_models"))
        assert len(graphs) > before, f"model {seed} ({mixer}) was not compiled"
        for got, expected in zip(compiled, decode_a_few(model, model.decode_step)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_compiled_step_compiles_again_after_a_change_of_mode_dtype_or_parameter():
    """Without guards on the modules, the step checks their training flags and the parameters'
    storage and metadata itself: a change compiles anew (and the step follows it); an in-place
    update of the weights does not."""
    graphs = counting("seqarch_counting_changes")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer="s4d", max_length=32,
                         mixer_options={"s4d": {"d_state": 8}})
    model = LanguageModel(config).eval()
    step = model.compiled_decode_step("seqarch_counting_changes")

    def agrees() -> None:
        for got, expected in zip(decode_a_few(model, step), decode_a_few(model, model.decode_step)):
            assert got.dtype == expected.dtype
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    agrees()
    first = len(graphs)
    with torch.no_grad():
        model.head.weight.mul_(1.5)  # in place: the graph reads the parameter, no new graph
    agrees()
    assert len(graphs) == first
    model.double()
    agrees()
    assert len(graphs) > first
    doubled = len(graphs)
    model.head.weight = torch.nn.Parameter(torch.randn_like(model.head.weight))
    agrees()
    model.train()  # dropout 0: the same logits, from a graph traced in training mode
    agrees()
    assert len(graphs) > doubled
