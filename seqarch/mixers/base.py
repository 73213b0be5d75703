"""The sequence-mixer contract and the registry of mixers by name.

Every sequence mixer maps ``(batch, length, d_model)`` to the same shape and, when
causal, also runs token by token through ``step`` with a recurrent state.  The
contract:

``forward(x)``
    ``x: (batch, length, d_model)`` -> ``(batch, length, d_model)``.
``causal``
    bool; bidirectional mixers have no recurrent form.
``init_state(batch_size, *, device=None, dtype=None, max_length=None)``
    the empty recurrent state: a ``dict`` of tensors (and plain ints) holding
    ``"batch_size"``.  A template, like ``step``: it checks its arguments (and that the
    mixer is causal) once, here, then calls the mixer's ``_init_state``.
``step(x_t, state)``
    ``x_t: (batch, d_model)`` -> ``(y_t, state)``; equal to ``forward`` position by
    position.
``prefill(x, state=None)``
    ``(y, state)`` for a whole prompt; this base class loops ``step``, mixers
    override it with their parallel form.
``step_constants(state)``
    the tensors a step derives from the parameters alone (discretised SSM matrices, a
    decay ``-exp(A_log)``), computed once per parameter version; ``{}`` when there are
    none.  A compiled decoding step receives them as inputs, under the state's
    :data:`STEP_CONSTANTS` key, instead of deriving them in its graph every token.
``flops(length)``
    forward FLOPs per sequence (a multiply-add counts 2): the work that grows with the
    batch; ``flops_breakdown(length)`` gives the parts by kind (keys below).
``shared_flops_breakdown(length)``
    forward FLOPs done once per call whatever the batch (kernel generation, filter MLPs,
    the filters' FFTs, parameter transforms), by kind; a call on ``(batch, length)``
    costs ``batch * flops(length) + sum(shared_flops_breakdown(length))``
    (:meth:`Mixer.forward_flops_breakdown`).
``masked_flops_breakdown(length)``
    per sequence, what counting causally masked attention scores dense adds (the
    ``dense`` convention of :mod:`seqarch.flops`); zero for mixers without masked scores.
``state_size(length)``
    numbers held in the recurrent state for one sequence after ``length`` tokens.

State updates, one rule for every mixer: ``step`` and ``prefill`` may update the state
they are given in place and return it (the attention KV cache is written in place, so
a token does not copy the whole cache), or return a new one (the SSM states); the
caller always continues with the returned state and never reuses the one it passed.

Capabilities are declared on the class, and the contract tests follow them:

``has_bidirectional_form``
    ``causal=False`` builds a bidirectional mixer (otherwise it is a ValueError);
``has_fixed_size_state``
    the recurrent state has the same size at every position, so a step costs the
    same at position 0 and at position 1000;
``step_reads_position``
    whether ``step``'s tensor work depends on how many tokens the state has read (a
    KV-cache slot, rotary angles, a growing history) rather than only counting them
    (the state's plain-int counters); a property where it depends on the options;
``has_graph_step``
    one CUDA graph of ``step``, captured at one position, replays correctly at every later
    one (``LanguageModel.generate(cuda_graph=True)``): by default where the step does not
    read the position; a mixer whose step does can still offer one by overriding
    ``graph_state(state)`` (the state with its position also as a device tensor,
    :func:`with_graph_position`, that the step reads and advances in place: attention,
    sliding-window attention, rotary RetNet, Hyena's explicit filters) and, where the state
    holds a bounded number of tokens, ``graph_steps_left(state)`` (how many more it takes).

A mixer can learn its place in the model: ``layer_idx`` (the block's index, ``None``
when built alone) lets one registered name take per-layer options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..checks import check_nonnegative_int, check_positive_int

State = dict[str, Any]
#: The state key under which a compiled decoding step passes ``step_constants`` in (they are
#: graph inputs there; see :meth:`seqarch.models.LanguageModel.compiled_decode_step`).
STEP_CONSTANTS = "step_constants"

#: The state key of a graph state's position on the device (:meth:`Mixer.graph_state` of a mixer whose
#: step reads the position): an int64 ``(1,)`` tensor its step reads and advances in place.
GRAPH_POSITION = "graph_position"

MIXERS: dict[str, type[Mixer]] = {}


def with_graph_position(state: State, device: torch.device, counter: str = "length") -> State:
    """``state`` with its token counter ``state[counter]`` also as a device tensor under
    :data:`GRAPH_POSITION`, for a step that reads the position there (a replayed CUDA graph never
    sees the plain int)."""
    return {**state, GRAPH_POSITION: torch.tensor([state[counter]], device=device)}


def register_mixer(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator: register a :class:`Mixer` subclass under ``name``."""

    def decorate(cls: type[Mixer]) -> type[Mixer]:
        if name in MIXERS and MIXERS[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {MIXERS[name].__name__}")
        missing = [m for m in ("forward", "flops_breakdown", "state_size")
                   if getattr(cls, m) is getattr(Mixer, m, None)]
        if missing:
            raise TypeError(f"mixer {cls.__name__} must define {', '.join(missing)} to be registered")
        cls.name = name
        MIXERS[name] = cls
        return cls

    return decorate


def _accepted_options(cls: type[Mixer]) -> set[str] | None:
    """The keyword options ``cls`` takes, or None when it takes any (``**kwargs``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"self", "d_model"}


def build_mixer(name: str, d_model: int, *, layer_idx: int | None = None, **options: Any) -> Mixer:
    """Build the mixer registered as ``name`` with width ``d_model``.

    ``layer_idx`` (the layer's index in its model) reaches the mixer's constructor when it
    takes one; a researcher's mixer that does not still learns it as ``mixer.layer_idx``.
    Raises ``ValueError`` naming the known mixers when ``name`` is unknown, and naming the
    option and the accepted ones when an option is unknown.
    """
    if name not in MIXERS:
        known = ", ".join(sorted(MIXERS))
        raise ValueError(f"name: unknown mixer {name!r}; expected one of: {known}")
    cls = MIXERS[name]
    accepted = _accepted_options(cls)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"{unknown[0]}: not an option of mixer {name!r}; "
                             f"expected one of: {', '.join(sorted(accepted))}")
    if accepted is None or "layer_idx" in accepted:
        return cls(d_model, layer_idx=layer_idx, **options)
    mixer = cls(d_model, **options)
    mixer.layer_idx = None if layer_idx is None else check_nonnegative_int("layer_idx", layer_idx)
    return mixer


class Mixer(nn.Module):
    """Base class of every sequence mixer.

    Subclasses implement ``forward`` (calling :meth:`check_sequence` first),
    ``_init_state`` and ``_step`` (when causal), ``flops_breakdown`` (and
    ``shared_flops_breakdown`` where work is done once per call) and ``state_size``;
    they may override ``prefill`` with a parallel form, and declare their capabilities
    (:attr:`has_bidirectional_form`, :attr:`has_fixed_size_state`).

    Args:
        d_model: width.
        causal: ``False`` builds the bidirectional form (where the class has one).
        layer_idx: the index of the layer in its model, or ``None``.
    """

    name: ClassVar[str] = "mixer"
    has_bidirectional_form: ClassVar[bool] = False
    has_fixed_size_state: ClassVar[bool] = False
    #: See the module: True unless the mixer says (and the contract tests check) that its step
    #: does the same tensor work at every position.
    step_reads_position: bool = True
    #: Architectures built on this mixer, by name: ``{"name": {"description": ..., <ModelConfig
    #: fields>}}`` (``mixer`` defaults to this one). They become presets of ``seqarch.models.presets``
    #: (``seqarch architectures`` lists them), so a family's presets live in the family's one file.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, d_model: int, *, causal: bool = True, layer_idx: int | None = None) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        if not isinstance(causal, bool):
            raise ValueError(f"causal: expected a bool, got {causal!r}")
        if not causal and not self.has_bidirectional_form:
            raise ValueError(f"causal: {type(self).__name__} has no bidirectional form; expected True, got False")
        self.causal = causal
        self.layer_idx = None if layer_idx is None else check_nonnegative_int("layer_idx", layer_idx)

    # -- input checks -----------------------------------------------------------------
    def check_sequence(self, x: torch.Tensor, argument: str = "x") -> None:
        """Raise a ValueError unless ``x`` is ``(batch, length, d_model)`` and floating."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{argument}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(
                f"{argument}: expected rank 3 (batch, length, d_model), got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{argument}: expected last dimension d_model={self.d_model}, got {x.shape[-1]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{argument}: expected a floating dtype, got {x.dtype}")
        self.check_input_dtype(x, argument)

    def check_input_dtype(self, x: torch.Tensor, argument: str = "x") -> None:
        """Raise a ValueError unless ``x`` has the parameters' dtype, or autocast is on.

        Outside autocast the projections need their input in the weights' dtype; saying so
        here beats a dtype error from deep inside a matmul or a kernel.
        """
        # The first parameter found, without building the whole parameter list (a step checks every token).
        weight = next((p for m in self.modules() for p in m._parameters.values() if p is not None), None)
        if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{argument}: expected dtype {weight.dtype} (the weights'; or run under autocast), "
                             f"got {x.dtype}")

    def check_token(self, x_t: torch.Tensor) -> None:
        """Raise a ValueError unless ``x_t`` is ``(batch, d_model)`` and the mixer is causal."""
        if not self.causal:
            raise ValueError(
                f"step: {type(self).__name__} was built with causal=False; a bidirectional "
                "mixer has no recurrent form (expected causal=True)"
            )
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t: expected rank 2 (batch, d_model), got {shape}")
        if x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"x_t: expected last dimension d_model={self.d_model}, got {x_t.shape[-1]}"
            )
        self.check_input_dtype(x_t, "x_t")

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise a ValueError unless ``state`` is a dict made for ``batch_size`` sequences."""
        if not isinstance(state, dict) or "batch_size" not in state:
            raise ValueError(
                f"state: expected the dict returned by {type(self).__name__}.init_state, got "
                f"{type(state).__name__}"
            )
        if state["batch_size"] != batch_size:
            raise ValueError(
                f"state: expected a state for batch_size={batch_size}, got one for "
                f"batch_size={state['batch_size']}"
            )

    def _state_like(self, device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
        ref = next(self.parameters())
        return (torch.device(device) if device is not None else ref.device,
                dtype if dtype is not None else ref.dtype)

    # -- recurrent form ---------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> State:
        """The empty recurrent state for ``batch_size`` sequences (of at most ``max_length``
        tokens, for mixers whose state grows).

        Checks the arguments, fills in ``device`` and ``dtype`` from the parameters, then
        returns ``{"batch_size": batch_size, **self._init_state(...)}``.
        """
        if not self.causal:
            raise ValueError(
                f"init_state: {type(self).__name__} was built with causal=False; a bidirectional "
                "mixer has no recurrent form (expected causal=True)"
            )
        check_positive_int("batch_size", batch_size)
        if max_length is not None:
            check_positive_int("max_length", max_length)
        device, dtype = self._state_like(device, dtype)
        state = self._init_state(batch_size, device=device, dtype=dtype, max_length=max_length)
        return {**state, "batch_size": batch_size}

    def _init_state(self, batch_size: int, *, device: torch.device, dtype: torch.dtype,
                    max_length: int | None) -> State:
        raise ValueError(f"init_state: {type(self).__name__} has no recurrent form")

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: ``x_t: (batch, d_model)`` -> ``(y_t: (batch, d_model), state)``."""
        self.check_token(x_t)
        self.check_state(state, x_t.shape[0])
        return self._step(x_t, state)

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise ValueError(f"step: {type(self).__name__} has no recurrent form")

    def step_constants(self, state: State) -> dict[str, Any]:
        """What a step of ``state`` derives from the parameters alone, in the state's dtype, computed
        once per parameter version (:func:`~seqarch.modules.parameter_cache.cached`; fresh where
        autograd must see it); this default: none.  A mixer that overrides it reads them in ``_step``
        through :meth:`constants_of`."""
        return {}

    def constants_of(self, state: State) -> dict[str, Any]:
        """The step constants passed in ``state`` (a compiled step's inputs, made fresh by its caller
        before every call), else :meth:`step_constants`.

        Inside ``torch.compile`` the parameter cache does not apply, so a graph that called
        ``step_constants`` itself would derive them again on every token; as inputs, the graph only
        reads them."""
        given = state.get(STEP_CONSTANTS)
        return self.step_constants(state) if given is None else given

    def start_prefill(self, x: torch.Tensor, state: State | None, **init_options: Any) -> State:
        """The checks every ``prefill`` makes first; returns the state to start from.

        ``x`` must be ``(batch, length, d_model)`` and the mixer causal; ``state=None``
        becomes ``init_state(batch, **init_options)`` on ``x``'s device and dtype.
        """
        self.check_sequence(x)
        if not self.causal:
            self.check_token(x[:, 0])  # raises the bidirectional error
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype, **init_options)
        self.check_state(state, x.shape[0])
        return state

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a prompt ``x: (batch, length, d_model)``; returns ``(y, state)``.

        This default loops :meth:`step`; mixers with a parallel form override it.
        """
        state = self.start_prefill(x, state)
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    # -- CUDA-graph decoding -----------------------------------------------------------
    @property
    def has_graph_step(self) -> bool:
        """Whether one CUDA graph of :meth:`step` replays correctly at every position (module doc)."""
        return not self.step_reads_position

    def graph_state(self, state: State) -> State:
        """``state`` in the form a CUDA graph of :meth:`step` is captured on; this default: itself (a
        step that does not read the position needs nothing more)."""
        return state

    def graph_steps_left(self, state: State) -> int | None:
        """How many more tokens a state from :meth:`graph_state` takes (a replayed graph checks
        nothing itself); ``None``: any number."""
        return None

    # -- accounting -------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs per sequence of ``length`` tokens, by kind: the work a batch of ``B``
        sequences does ``B`` times (work done once per call is :meth:`shared_flops_breakdown`).

        Keys, the same meaning in every mixer (and in :meth:`shared_flops_breakdown`):

        ``"matmul"``
            dense and batched matrix products, as ``torch.utils.flop_counter`` counts them
            (2 per multiply-add, complex or not); causal attention counts the score pairs
            its kernels compute (each query with the keys it sees);
        ``"conv"``
            short (direct, not FFT) convolutions, as ``torch.utils.flop_counter`` counts
            them, biases excluded; a mixer without any leaves the key out or gives 0 (a family whose
            configurations differ, such as the long-convolution shell, keeps its keys fixed);
        ``"fft"``
            FFTs by the ``5 n log2 n`` formula (half that for a real FFT); 0 for a mixer
            without any;
        ``"other"``
            everything else: elementwise work (gates, activations, biases, skips,
            softmax, the pointwise products of FFT convolutions), kernel generation
            outside its matrix products and FFTs.

        ``"matmul"``, ``"fft"`` and ``"other"`` are always present.
        """
        raise TypeError(f"{type(self).__name__} must define flops_breakdown")

    def shared_flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs done once per call on ``(batch, length)``, whatever the batch, by kind
        (keys as in :meth:`flops_breakdown`): generating long-convolution kernels, the filters'
        FFTs, parameter transforms such as ``A = -exp(A_log)``.  This default: none."""
        check_positive_int("length", length)
        return {"matmul": 0, "fft": 0, "other": 0}

    def masked_flops_breakdown(self, length: int) -> dict[str, int]:
        """Per sequence, the FLOPs of causally masked attention scores that the kernels skip and a
        dense count (the ``dense`` convention) charges, by kind.  This default: none."""
        check_positive_int("length", length)
        return {"matmul": 0, "fft": 0, "other": 0}

    def forward_flops_breakdown(self, length: int, batch_size: int = 1, *, dense: bool = False) -> dict[str, int]:
        """Forward FLOPs of one call on ``(batch_size, length)`` by kind: ``batch_size`` times the
        per-sequence parts (plus the masked scores when ``dense``) plus the shared parts."""
        check_positive_int("batch_size", batch_size)
        parts = [(batch_size, self.flops_breakdown(length)), (1, self.shared_flops_breakdown(length))]
        if dense:
            parts.append((batch_size, self.masked_flops_breakdown(length)))
        totals: dict[str, int] = {}
        for times, breakdown in parts:
            for kind, value in breakdown.items():
                totals[kind] = totals.get(kind, 0) + times * int(value)
        return totals

    def flops(self, length: int) -> int:
        """Forward FLOPs per sequence of ``length`` tokens (a multiply-add counts 2), the shared
        once-per-call work apart (:meth:`shared_flops_breakdown`)."""
        check_positive_int("length", length)
        return int(sum(self.flops_breakdown(length).values()))

    def state_size(self, length: int) -> int:
        """Numbers held in the recurrent state for one sequence after ``length`` tokens."""
        raise TypeError(f"{type(self).__name__} must define state_size")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, causal={self.causal}"
