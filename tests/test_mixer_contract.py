"""The mixer contract, run over every registered mixer and a causal-only test mixer.

Tests follow the capabilities each class declares: ``has_bidirectional_form`` (the
``causal=False`` tests run only where it is True; elsewhere ``causal=False`` must be
refused), ``has_fixed_size_state`` (a step costs the same at every position),
``step_reads_position`` (a step's tensor work depends on the position, not only counts it)
and ``has_graph_step`` (a CUDA graph of the step replays at every position).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import seqarch

from conftest import D_MODEL, CausalEMA, small_mixer
from helpers import relative_rms, run_steps

# Test-only mixers the contract runs over too, registered for the duration of each test.
TEST_ONLY = {"causal_ema_for_test": CausalEMA}


CLASSES = {**seqarch.MIXERS, **TEST_ONLY}
# Tests of a capability run over the mixers that declare it (and the refusals over the
# others): a mixer without a bidirectional form gets no skipped tests, it gets other ones.
BIDIRECTIONAL = sorted(n for n, cls in CLASSES.items() if cls.has_bidirectional_form)
CAUSAL_ONLY = sorted(n for n, cls in CLASSES.items() if not cls.has_bidirectional_form)
MODES = [(name, True) for name in sorted(CLASSES)] + [(name, False) for name in BIDIRECTIONAL]


def _use(request, registered, name: str) -> str:
    if name in TEST_ONLY:
        registered(name, TEST_ONLY[name])
    return name


@pytest.fixture(params=sorted(CLASSES))
def mixer_name(request, registered) -> str:
    return _use(request, registered, request.param)


@pytest.fixture(params=BIDIRECTIONAL)
def bidirectional_name(request, registered) -> str:
    return _use(request, registered, request.param)


@pytest.fixture(params=CAUSAL_ONLY)
def causal_only_name(request, registered) -> str:
    return _use(request, registered, request.param)


@pytest.fixture(params=MODES, ids=[f"{name}-{'causal' if causal else 'bidirectional'}" for name, causal in MODES])
def mixer_mode(request, registered) -> tuple[str, bool]:
    name, causal = request.param
    return _use(request, registered, name), causal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forward_shape_and_dtype(mixer_mode, dtype):
    mixer_name, causal = mixer_mode
    mixer = small_mixer(mixer_name, causal=causal, dtype=dtype)
    x = torch.randn(2, 33, D_MODEL, dtype=dtype)
    y = mixer(x)
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("dtype", [None, torch.float64, torch.bfloat16])
def test_parameters_take_the_requested_dtype(mixer_name, dtype):
    mixer = small_mixer(mixer_name, dtype=dtype)
    expected = dtype if dtype is not None else torch.get_default_dtype()
    for name, param in mixer.named_parameters():
        assert param.dtype == expected, name
    state = mixer.init_state(2)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype in (expected, torch.float32, torch.complex64, torch.complex128), key
    if expected == torch.float32:
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype in (torch.float32, torch.complex64), key


def test_causal_mixer_never_sees_the_future(mixer_name):
    mixer = small_mixer(mixer_name, dtype=torch.float64)
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    y = mixer(x)
    for t in (1, 17, 39):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, D_MODEL, dtype=torch.float64)
        y2 = mixer(x2)
        assert (y2[:, :t] - y[:, :t]).abs().max() <= 1e-12 * y.abs().max()
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-6


def test_bidirectional_mixer_sees_the_future(bidirectional_name):
    mixer_name = bidirectional_name
    mixer = small_mixer(mixer_name, causal=False, dtype=torch.float64)
    x = torch.randn(1, 30, D_MODEL, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20] += 1.0
    assert (mixer(x2)[:, :20] - mixer(x)[:, :20]).abs().max() > 1e-6


@pytest.mark.parametrize("length", [1, 37, 256])
def test_step_equals_forward_float64(mixer_name, length):
    mixer = small_mixer(mixer_name, dtype=torch.float64)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        stepped, _ = run_steps(mixer, x, mixer.init_state(2, max_length=length))
    assert (stepped - expected).abs().max() <= 1e-8 * max(1.0, float(expected.abs().max()))


def test_steps_with_autograd_equal_steps_without_and_keep_the_states_they_were_given(mixer_name):
    """Without autograd a step may update its state in place (the contract allows it, and it spares a
    state-sized tensor per token); with autograd it must leave the old state intact, which the
    gradient may need.  Both give the same outputs."""
    mixer = small_mixer(mixer_name, dtype=torch.float64)
    x = torch.randn(2, 12, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, state = mixer.prefill(x[:, :5], mixer.init_state(2, max_length=12))
        without, _ = run_steps(mixer, x[:, 5:], {k: v.clone() if isinstance(v, torch.Tensor) else v
                                                  for k, v in state.items()})
    kept = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    with_grad, _ = run_steps(mixer, x[:, 5:], state)
    assert (with_grad - without).abs().max() <= 1e-10 * max(1.0, float(without.abs().max()))
    for key, value in kept.items():
        if key not in ("k", "v", "buffer", "cache"):  # caches written in place by design (their own test)
            assert torch.equal(state[key], value), key


def test_step_equals_forward_float32(mixer_name):
    mixer = small_mixer(mixer_name, dtype=torch.float32)
    x = torch.randn(2, 256, D_MODEL)
    with torch.no_grad():
        expected = mixer(x)
        stepped, _ = run_steps(mixer, x, mixer.init_state(2, max_length=256))
        state = mixer.init_state(2, max_length=256)
        y_prompt, state = mixer.prefill(x[:, :100], state)
        y_more, state = mixer.prefill(x[:, 100:200], state)
        y_rest, _ = run_steps(mixer, x[:, 200:], state)
    assert relative_rms(stepped, expected) <= 1e-4
    assert relative_rms(torch.cat([y_prompt, y_more, y_rest], 1), expected) <= 1e-4


def test_prefill_then_step_equals_forward(mixer_name):
    mixer = small_mixer(mixer_name, dtype=torch.float64)
    x = torch.randn(2, 48, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        expected = mixer(x)
        state = mixer.init_state(2, max_length=48)
        y_prompt, state = mixer.prefill(x[:, :20], state)
        y_more, state = mixer.prefill(x[:, 20:30], state)
        y_rest, _ = run_steps(mixer, x[:, 30:], state)
    got = torch.cat([y_prompt, y_more, y_rest], 1)
    assert (got - expected).abs().max() <= 1e-8 * max(1.0, float(expected.abs().max()))


def test_base_prefill_loop_equals_forward(mixer_name):
    """The base class's step loop (the default ``prefill``) agrees with the override."""
    mixer = small_mixer(mixer_name, dtype=torch.float64)
    x = torch.randn(1, 12, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        looped, _ = seqarch.Mixer.prefill(mixer, x, mixer.init_state(1, max_length=12))
    assert (looped - mixer(x)).abs().max() <= 1e-8


def test_every_parameter_gets_a_gradient(mixer_mode):
    mixer_name, causal = mixer_mode
    mixer = small_mixer(mixer_name, causal=causal)
    x = torch.randn(2, 24, D_MODEL)
    mixer(x).square().mean().backward()
    for name, param in mixer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


def test_step_on_bidirectional_mixer_raises(bidirectional_name):
    mixer_name = bidirectional_name
    mixer = small_mixer(mixer_name, causal=False)
    assert mixer.causal is False
    with pytest.raises(ValueError, match="causal"):
        mixer.step(torch.randn(2, D_MODEL), {"batch_size": 2})
    with pytest.raises(ValueError, match="causal"):
        mixer.prefill(torch.randn(2, 5, D_MODEL))
    with pytest.raises(ValueError, match="init_state: .*causal=False"):  # the base class's guard
        mixer.init_state(2)


def test_mixer_without_bidirectional_form_refuses_causal_false(causal_only_name):
    mixer_name = causal_only_name
    with pytest.raises(ValueError, match="causal: .*no bidirectional form"):
        small_mixer(mixer_name, causal=False)


class ElementCounter(TorchDispatchMode):
    """Counts the tensor elements every op reads and writes: a deterministic cost measure."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.elements += sum(t.numel() for t in tensors)
        return out


def step_cost(mixer, position: int) -> int:
    """Elements touched by one step after ``position`` tokens (prefilled).  A step on a throwaway
    state comes first: constants made once per parameter version (kernels, discretised
    matrices, rotary tables; seqarch.modules.parameter_cache) are not a step's cost."""
    state = mixer.init_state(1, max_length=256)
    with torch.no_grad():
        mixer.step(torch.randn(1, D_MODEL), mixer.init_state(1, max_length=256))
        if position:
            _, state = mixer.prefill(torch.randn(1, position, D_MODEL), state)
        x_t = torch.randn(1, D_MODEL)
        with ElementCounter() as counter:
            mixer.step(x_t, state)
    return counter.elements


def test_step_cost_is_flat_in_position_exactly_for_fixed_state_mixers(mixer_name):
    mixer = small_mixer(mixer_name).eval()
    early, late = step_cost(mixer, 0), step_cost(mixer, 200)
    if type(mixer).has_fixed_size_state:
        assert early == late > 0
        assert mixer.state_size(1) == mixer.state_size(200)
    else:  # the state grows, and so does what a step reads (the declaration is not idle)
        assert late > early
        assert mixer.state_size(200) > mixer.state_size(1)


# Plain ints of a state that are not counters: set once by init_state.
FIXED_ENTRIES = ("batch_size", "max_length")


def copy_state(state, shift: int = 0):
    """A copy of ``state`` (tensors cloned) with its token counters moved on by ``shift``."""
    return {k: v.clone() if isinstance(v, torch.Tensor)
            else v + shift if isinstance(v, int) and k not in FIXED_ENTRIES else v
            for k, v in state.items()}


def test_a_step_reads_the_position_exactly_when_it_says_so(mixer_name):
    """``step_reads_position=False``: a step from a state whose token counters are moved on gives the same
    outputs and tensors.  A mixer saying True gives other outputs there (the declaration is not idle)."""
    mixer = small_mixer(mixer_name, dtype=torch.float64).eval()
    x = torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, state = mixer.prefill(x[:, :5], mixer.init_state(2, max_length=32))
        y, after = mixer.step(x[:, 5], copy_state(state))
        y_moved, after_moved = mixer.step(x[:, 5], copy_state(state, shift=3))
    if mixer.step_reads_position:
        assert not torch.allclose(y, y_moved)
    else:
        assert torch.equal(y, y_moved)
        for key, value in after.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, after_moved[key]), key


def test_a_graph_step_is_the_step_whatever_the_counters_say(mixer_name):
    """``has_graph_step`` (what lets one CUDA graph of a step replay at every position, where nothing
    reads the plain-int counters): steps from ``graph_state(state)``, its counters moved on, give the
    steps' outputs, and ``graph_steps_left`` says how many tokens are left.  Without one, the step
    reads the position."""
    mixer = small_mixer(mixer_name, dtype=torch.float64).eval()
    if not mixer.has_graph_step:
        assert mixer.step_reads_position
        return
    x = torch.randn(2, 8, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, state = mixer.prefill(x[:, :5], mixer.init_state(2, max_length=8))
        expected, _ = run_steps(mixer, x[:, 5:], copy_state(state))
        left = mixer.graph_steps_left(mixer.graph_state(copy_state(state)))
        got, _ = run_steps(mixer, x[:, 5:], copy_state(mixer.graph_state(copy_state(state)), shift=3))
    assert relative_rms(got, expected) < 1e-12
    assert left in (None, 3)  # 8 slots, 5 filled


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_init_state_checks_its_arguments(mixer_name, bad):
    mixer = small_mixer(mixer_name)
    with pytest.raises(ValueError, match="batch_size"):
        mixer.init_state(bad)
    with pytest.raises(ValueError, match="max_length"):
        mixer.init_state(2, max_length=bad)
    assert mixer.init_state(3)["batch_size"] == 3


def test_layer_idx_is_checked_and_kept(mixer_name):
    assert small_mixer(mixer_name, layer_idx=3).layer_idx == 3
    assert small_mixer(mixer_name).layer_idx is None
    with pytest.raises(ValueError, match="layer_idx"):
        small_mixer(mixer_name, layer_idx=-1)


def test_bad_input_names_the_argument(mixer_name):
    mixer = small_mixer(mixer_name)
    with pytest.raises(ValueError, match=r"x: expected rank 3"):
        mixer(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match=rf"x: expected last dimension d_model={D_MODEL}, got 7"):
        mixer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"x_t: expected rank 2"):
        mixer.step(torch.randn(2, 3, D_MODEL), mixer.init_state(2))
    with pytest.raises(ValueError, match=r"state: expected a state for batch_size=3"):
        mixer.step(torch.randn(3, D_MODEL), mixer.init_state(2))


def test_zero_size_inputs_give_an_empty_result_or_name_x(mixer_mode):
    """An empty batch is an empty answer; no positions is an empty answer or an error naming ``x``
    (a long convolution needs a position), never a crash inside a reshape or a kernel."""
    mixer_name, causal = mixer_mode
    mixer = small_mixer(mixer_name, causal=causal)
    empty_batch = torch.randn(0, 9, D_MODEL, requires_grad=True)
    y = mixer(empty_batch)
    assert y.shape == empty_batch.shape
    try:
        y = mixer(torch.randn(2, 0, D_MODEL))
    except ValueError as error:
        assert str(error).startswith("x: expected a length of at least 1"), error
    else:
        assert y.shape == (2, 0, D_MODEL)


def test_accounting_is_positive_and_state_size_is_sensible(mixer_name):
    mixer = small_mixer(mixer_name)
    parts = mixer.flops_breakdown(128)
    # The keys Mixer.flops_breakdown documents: "conv" where there is a short convolution.
    assert {"matmul", "fft", "other"} <= set(parts) <= {"matmul", "conv", "fft", "other"}
    assert all(isinstance(v, int) and v >= 0 for v in parts.values())
    assert mixer.flops(128) == sum(parts.values()) > 0
    assert mixer.flops(256) > mixer.flops(128)
    assert mixer.state_size(64) > 0
    assert mixer.state_size(128) >= mixer.state_size(64)


def test_options_are_validated(mixer_name):
    with pytest.raises(ValueError, match="d_model"):
        seqarch.build_mixer(mixer_name, 0)
    with pytest.raises(ValueError, match="causal"):
        seqarch.build_mixer(mixer_name, D_MODEL, causal="yes")


def test_unknown_mixer_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        seqarch.build_mixer("transformerxl", 16)
    message = str(info.value)
    assert "transformerxl" in message
    for name in seqarch.MIXERS:
        assert name in message


def test_registry_has_the_four_families():
    assert {"attention", "s4d", "s4", "m2"} <= set(seqarch.MIXERS)
    for name, cls in seqarch.MIXERS.items():
        assert issubclass(cls, seqarch.Mixer) and cls.name == name


def test_blocks_pass_their_layer_index_to_the_mixer(registered):
    """One registered name, per-layer options: the option list is indexed by the layer."""
    registered("causal_ema_for_test", CausalEMA)
    config = seqarch.ModelConfig(vocab_size=11, d_model=8, n_layers=3, mixer="causal_ema_for_test",
                                 mixer_options={"decays": [0.1, 0.5, 0.9]})
    model = seqarch.LanguageModel(config)
    mixers = [block.mixer for block in model.backbone.blocks]
    assert [m.layer_idx for m in mixers] == [0, 1, 2]
    assert [m.decay for m in mixers] == [0.1, 0.5, 0.9]
    hybrid = seqarch.LanguageModel(seqarch.ModelConfig(vocab_size=11, d_model=16, n_layers=2,
                                                       mixer=["s4d", "attention"]))
    assert [b.mixer.layer_idx for b in hybrid.backbone.blocks] == [0, 1]


def test_input_in_another_dtype_than_the_weights_is_named(mixer_name):
    mixer = small_mixer(mixer_name)  # float32 weights
    with pytest.raises(ValueError, match=r"x: expected dtype torch.float32 \(the weights'"):
        mixer(torch.randn(1, 8, D_MODEL, dtype=torch.float64))
    if mixer.causal:
        state = mixer.init_state(1)
        with pytest.raises(ValueError, match=r"x_t: expected dtype torch.float32"):
            mixer.step(torch.randn(1, D_MODEL, dtype=torch.float64), state)
