"""generate(cuda_graph=True): one captured decoding step replayed, giving the eager step's tokens.

The capture itself needs a GPU (the test named ``gpu``); on a CPU the same buffers, write-backs and
counters run eagerly (``GraphDecodeStep(capture=False)``), which is what the other tests check.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import seqarch
from seqarch.models import LanguageModel, ModelConfig
from seqarch.models import language_model as language_model_module
from seqarch.models.graph_step import GraphDecodeStep, write_back
from seqarch.modules.parameter_cache import cached_values

from conftest import SMALL_OPTIONS, CausalEMA

# The contract suite's small layers; a modal Hyena of order 3 (two convolutions).
OPTIONS = {**SMALL_OPTIONS, "hyena_modal": {"d_state": 8, "order": 3}}


def graph_step_mixers() -> list[str]:
    """Every registered mixer (with the options above) whose step a CUDA graph can replay."""
    return [name for name in sorted(seqarch.MIXERS)
            if seqarch.build_mixer(name, 16, **OPTIONS.get(name, {})).has_graph_step]


def hybrid(mixers: list[str], device=None) -> LanguageModel:
    """One layer of each of ``mixers``: a graph step of it covers every one at once."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=16, n_layers=len(mixers), mixer=mixers, max_length=64,
                         mixer_options={name: OPTIONS[name] for name in mixers if name in OPTIONS})
    return LanguageModel(config, device=device).eval()


class EagerGraphStep(GraphDecodeStep):
    """The graph step with its buffers and write-backs but no capture (there is no GPU here)."""

    def __init__(self, model, *, capture=None):
        super().__init__(model, capture=False)


class SimulatedGraph(TorchDispatchMode):
    """What a CUDA graph holds, on a CPU: the ATen operators of one call (recorded while they run), each
    replayed on the very tensors it had (the graph's fixed memory) without the Python that issued it,
    so an int the Python read at the capture stays the one recorded.  A fresh result is copied into the
    tensor recorded for it, a mutating operator runs again, a view stays the recorded view of its
    (updated) base.  A host read of a tensor's value, which a capture refuses, fails the recording."""

    def __init__(self):
        super().__init__()
        self.operators, self.recorded = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a host read of a tensor's value inside the graph's step")
        out = func(*args, **kwargs)
        self.operators.append((func, args, kwargs, out))
        return out

    def replay(self):
        if not self.recorded:  # the recording ran them, as a capture followed by its first replay
            self.recorded = True
            return
        for func, args, kwargs, out in self.operators:
            schema = func._schema
            if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
                func(*args, **kwargs)
            elif all(r.alias_info is None for r in schema.returns):
                for kept, fresh in zip(tree_leaves(out), tree_leaves(func(*args, **kwargs))):
                    if isinstance(kept, torch.Tensor):
                        kept.copy_(fresh)


class SimulatedGraphStep(GraphDecodeStep):
    """The graph step with :class:`SimulatedGraph` for the CUDA graph: warm-up, capture and replays."""

    def __init__(self, model, *, capture=None):
        super().__init__(model, capture=False)
        self.capture = True

    def _capture(self):
        self.graph = SimulatedGraph()
        with self.graph:
            self._step_in_place()
        self.kept = cached_values(self.model)


def test_every_registered_mixer_has_a_graph_step():
    assert set(graph_step_mixers()) == set(seqarch.MIXERS)
    # These read the position, from the device in a graph state: a KV-cache slot, a ring buffer's slot,
    # rotary angles, an explicit long convolution's taps and history.
    for name in ("attention", "sliding_window_attention", "retnet", "hyena", "m2"):
        assert seqarch.build_mixer(name, 16, **OPTIONS[name]).step_reads_position, name


class PositionReadingEMA(CausalEMA):
    """A researcher's mixer that says its step reads the position and offers no graph state."""

    step_reads_position = True


def test_graph_decoding_gives_the_eager_tokens_and_counters(monkeypatch):
    mixers = graph_step_mixers()
    model = hybrid(mixers)
    prompt = torch.randint(0, 32, (2, 5))
    eager = model.generate(prompt, 12, temperature=0)
    monkeypatch.setattr(language_model_module, "GraphDecodeStep", EagerGraphStep)
    assert torch.equal(model.generate(prompt, 12, temperature=0, cuda_graph=True), eager)
    # Step by step: the logits, and the states' counters and tensors, are the eager step's.
    with torch.no_grad():
        states = model.backbone.init_state(2, max_length=16)
        _, states = model.backbone.prefill(prompt, states)
        twin = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states]
        step, token = EagerGraphStep(model), eager[:, 5]
        for _ in range(GraphDecodeStep.warmup_steps + 3):
            logits, states = step(token, states, check=False)
            expected, twin = model.decode_step(token, twin)
            # Attention's graph step attends over the whole cache, masked, by SDPA: the same numbers to
            # rounding.
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
            token = expected.argmax(-1)
        for layer, (got, want) in enumerate(zip(states, twin)):
            assert set(got) - set(want) <= {"graph_position"}, layer
            for key, value in want.items():
                if key == "v" and "buffer" in want:  # a long convolution's history: the whole buffer there
                    filled = value.shape[-1]
                    torch.testing.assert_close(got[key][..., :filled], value, rtol=1e-5, atol=1e-6)
                    assert not got[key][..., filled:].any()
                elif isinstance(value, torch.Tensor):
                    torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
                else:
                    assert got[key] == value, (layer, mixers[layer], key)
            if "graph_position" in got:
                counter = got["length"] if "length" in got else got["position"]
                assert got["graph_position"].tolist() == [counter], (layer, mixers[layer])
        with pytest.raises(ValueError, match="states: expected the states this graph step returned"):
            step(token, twin)


def test_replaying_the_recorded_step_gives_the_eager_tokens(monkeypatch):
    """Every mixer's graph step, replayed as a CUDA graph would replay it (no Python after the capture),
    continues each sequence as eager decoding does: nothing it reads is an int baked at the capture."""
    model = hybrid(graph_step_mixers())
    prompts = [torch.randint(0, 32, (2, 5)) for _ in range(2)]
    eager = [model.generate(prompt, 12, temperature=0) for prompt in prompts]
    monkeypatch.setattr(language_model_module, "GraphDecodeStep", SimulatedGraphStep)
    for prompt, tokens in zip(prompts, eager):  # the second replays the first's graph on its own states
        assert torch.equal(model.generate(prompt, 12, temperature=0, cuda_graph=True), tokens)
    assert isinstance(model.__dict__["_graph_decode_step"][1].graph, SimulatedGraph)


class CountingEMA(CausalEMA):
    """A mixer that wrongly says its step does not read the position: it adds its token count."""

    def _init_state(self, batch_size, *, device, dtype, max_length):
        return {**super()._init_state(batch_size, device=device, dtype=dtype, max_length=max_length), "length": 0}

    def _step(self, x_t, state):
        y, state = super()._step(x_t, state)
        return y + state["length"], {**state, "length": state["length"] + 1}


def test_the_replay_catches_a_position_read_in_python(registered):
    """The control: the recorded step of a mixer that reads an int position replays that position, so
    the replays after the capture part from the eager steps."""
    registered("counting_ema", CountingEMA)
    model = hybrid(["counting_ema"])
    prompt = torch.randint(0, 32, (1, 3))
    with torch.no_grad():
        _, states = model.backbone.prefill(prompt, model.backbone.init_state(1, max_length=10))
        twin = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states]
        step, token, agree = SimulatedGraphStep(model), prompt[:, -1], []
        for _ in range(6):
            logits, states = step(token, states)
            expected, twin = model.decode_step(token, twin)
            agree.append(torch.allclose(logits, expected))
            token = expected.argmax(-1)
    # two warm-ups and the capture ran the Python; the three replays did not
    assert agree == [True, True, True, False, False, False]


def test_one_graph_step_serves_later_calls_until_the_model_or_the_shape_changes(monkeypatch):
    monkeypatch.setattr(language_model_module, "GraphDecodeStep", EagerGraphStep)
    model = hybrid(["attention", "mamba2", "hyena"])  # a KV cache, a fixed state, a history buffer
    first, second = torch.randint(0, 32, (2, 5)), torch.randint(0, 32, (2, 5))

    def graphed(prompt, new_tokens=6):
        tokens = model.generate(prompt, new_tokens, temperature=0, cuda_graph=True)
        assert torch.equal(tokens, model.generate(prompt, new_tokens, temperature=0))
        return model.__dict__["_graph_decode_step"][1]

    made = graphed(first)
    assert graphed(second) is made  # the second sequence's states copied into the same buffers
    assert graphed(first) is made
    with torch.no_grad():  # an in-place weight update: the cached decays the step read are stale
        model.backbone.blocks[1].mixer.A_log.add_(0.5)
    remade = graphed(second)
    assert remade is not made and graphed(first) is remade
    model.train()  # another mode: captured in eval, a graph would replay without dropout
    assert graphed(first) is not remade
    model.eval()
    again = graphed(first)
    single = graphed(first[:1])
    assert single is not again  # another batch size
    assert graphed(first, new_tokens=7) not in (single, again)  # another length
    assert model.__dict__["_graph_decode_step"][0] == (2, 12)  # one kept: the last


def test_graph_decoding_refuses_layers_without_a_graph_step_before_any_work(registered):
    registered("ema_reading_position", PositionReadingEMA)
    model = hybrid(["s4d", "ema_reading_position"])
    with pytest.raises(ValueError, match=r"cuda_graph: .*read the position in Python: 1: ema_reading_position"):
        model.generate(torch.randint(0, 32, (1, 3)), 4, cuda_graph=True)
    with pytest.raises(ValueError, match="1: ema_reading_position"):
        GraphDecodeStep(model, capture=False)


@pytest.mark.parametrize("bounded", ["attention", "hyena"])  # a KV cache, a history buffer
def test_a_graph_step_past_the_cache_is_refused(bounded):
    model = hybrid([bounded, "mamba"])
    with torch.no_grad():
        prompt = torch.randint(0, 32, (1, 3))
        _, states = model.backbone.prefill(prompt, model.backbone.init_state(1, max_length=3 + 4))
        step, token = EagerGraphStep(model), prompt[:, -1]
        for _ in range(4):
            _, states = step(token, states)
        with pytest.raises(ValueError, match="states: full"):
            step(token, states)


def test_bad_cuda_graph_arguments_are_named():
    model = hybrid(["mamba"])
    prompt = torch.randint(0, 32, (1, 3))
    with pytest.raises(ValueError, match="cuda_graph: expected a model on a CUDA device, got one on cpu"):
        model.generate(prompt, 4, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph: expected a bool, got 'yes'"):
        model.generate(prompt, 4, cuda_graph="yes")
    with pytest.raises(ValueError, match="cuda_graph: expected False with compile_step"):
        model.generate(prompt, 4, cuda_graph=True, compile_step="aot_eager")
    with pytest.raises(ValueError, match="cuda_graph: expected False with compile_step or use_cache=False"):
        model.generate(prompt, 4, cuda_graph=True, use_cache=False)


def test_write_back_copies_new_tensors_keeps_in_place_ones_and_refuses_other_changes():
    old = {"h": torch.zeros(2, 3), "S": torch.zeros(2), "position": 4, "batch_size": 2}
    in_place = old["S"].add_(1.0)
    new = {"h": torch.ones(2, 3), "S": in_place, "position": 5, "batch_size": 2}
    h = old["h"]
    assert write_back(old, new, 0) == {"position": 1}
    assert old["h"] is h and torch.equal(h, torch.ones(2, 3)) and old["S"] is in_place
    # A new view of the old tensor's own memory (a shift) is copied through a clone.
    buffer = {"conv": torch.arange(4.0)}
    assert write_back(buffer, {"conv": torch.cat([buffer["conv"][1:], torch.tensor([9.0])])}, 0) == {}
    assert buffer["conv"].tolist() == [1.0, 2.0, 3.0, 9.0]
    with pytest.raises(RuntimeError, match=r"layer 3's state entry 'h' changed from \(\(2, 3\)"):
        write_back(old, {**new, "h": torch.ones(2, 4)}, 3)
    with pytest.raises(RuntimeError, match="changed its state's entries"):
        write_back(old, {**new, "extra": 1}, 0)
    with pytest.raises(RuntimeError, match="may only count tokens"):
        write_back(old, {**new, "position": "five"}, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_cuda_graph_decoding_replays_the_eager_buffers_exactly(monkeypatch):
    model = hybrid(graph_step_mixers(), device="cuda")
    first, second = (torch.randint(0, 32, (2, 5), device="cuda") for _ in range(2))
    graphed = [model.generate(prompt, 24, temperature=0, cuda_graph=True) for prompt in (first, second)]
    # A later call replays the captured graph on its own states, copied into the graph's buffers.
    assert torch.equal(model.generate(first, 24, temperature=0, cuda_graph=True), graphed[0])
    # The replayed kernels are those of the same step run eagerly on the same buffers.  (Against the
    # plain eager step, the graph steps of the layers that read the position differ to rounding, as
    # attention's SDPA over the masked cache against the fused kernel, which may flip a greedy token of
    # this random model; the model below has none of them.)
    model.__dict__.pop("_graph_decode_step")
    with monkeypatch.context() as patch:
        patch.setattr(language_model_module, "GraphDecodeStep", EagerGraphStep)
        for prompt, tokens in zip((first, second), graphed):
            assert torch.equal(model.generate(prompt, 24, temperature=0, cuda_graph=True), tokens)
    fixed_state = hybrid([block.mixer.name for block in model.backbone.blocks if not block.mixer.step_reads_position],
                         device="cuda")
    for prompt in (first, second):
        assert torch.equal(fixed_state.generate(prompt, 24, temperature=0, cuda_graph=True),
                           fixed_state.generate(prompt, 24, temperature=0))
