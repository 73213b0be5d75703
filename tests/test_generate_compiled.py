"""generate's compiled decoding step gives the eager step's tokens and logits."""

from __future__ import annotations

import pytest
import torch

from seqarch.models import LanguageModel, ModelConfig


@pytest.mark.parametrize("mixer", ["attention", "s4d"])  # an in-place KV cache; a fixed SSM state
def test_compiled_step_equals_the_eager_step(mixer):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=1, mixer=mixer, max_length=32,
                         mixer_options={"s4d": {"d_state": 8}})
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
