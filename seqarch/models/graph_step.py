"""Decoding by replaying one CUDA graph of a model's decoding step (as mamba's generation does).

At small batch on a GPU a decoding step is a few hundred small kernels, each launched from Python,
and launching them takes longer than running them.  A CUDA graph records the step's kernels once and
launches them all with one call.  A graph replays fixed work on fixed memory, so

- every layer's step must do the same work at every position (:attr:`~seqarch.mixers.Mixer.has_graph_step`):
  one that does not read the position (fixed-size states), or one that reads it from the device
  (:meth:`~seqarch.mixers.Mixer.graph_state`: attention's KV-cache slot, rotary angle and mask);
- the graph reads the token from one buffer and the states from the tensors it was captured on,
  and writes each new state back into those tensors (a state updated in place needs no copy);
- the states' token counters (plain ints, which no kernel reads) advance outside the graph.

The first :attr:`GraphDecodeStep.warmup_steps` calls run the graph's work eagerly, on its buffers
(on a side stream, as CUDA graph capture asks), so that every operator has run and what a step
makes once (cached constants, lazily made buffers) is made before the capture; the next call
captures and every later one replays.  Off a GPU the same buffers and
write-backs run eagerly, call after call (``capture=False``), which is what the CPU tests check.

A captured step serves later sequences of the same shape (:meth:`GraphDecodeStep.restart`: their
states are copied into its buffers) while the model is as it was at the capture
(:meth:`GraphDecodeStep.matches`: every parameter's identity, storage and version, every module's
training flag); it keeps every value of the parameter caches that it read alive, so the graph
never reads freed memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..mixers.base import State
from ..modules.parameter_cache import cached_values
from .compiled_step import module_signature


def layers_without_graph_step(model: nn.Module) -> list[str]:
    """``"<layer index>: <mixer name>"`` for each layer of ``model`` whose step no CUDA graph can replay
    at every position."""
    return [f"{i}: {block.mixer.name}" for i, block in enumerate(model.backbone.blocks)
            if not block.mixer.has_graph_step]


def write_back(old: State, new: State, layer: int) -> dict[str, int]:
    """Copy ``new``'s tensors into ``old``'s (where they are not already the same tensor); returns how
    much each plain-int counter moved.  Raises a RuntimeError where the state is not one of fixed
    tensors: an entry added or dropped, a tensor of another shape or dtype, another non-int value."""
    if set(new) != set(old):
        raise RuntimeError(f"cuda_graph: layer {layer}'s step changed its state's entries from {sorted(old)} "
                           f"to {sorted(new)}; a graph needs a state of fixed entries")
    moved: dict[str, int] = {}
    for key, value in new.items():
        before = old[key]
        if isinstance(value, torch.Tensor):
            if not isinstance(before, torch.Tensor) or value.shape != before.shape or value.dtype != before.dtype:
                was = (tuple(before.shape), before.dtype) if isinstance(before, torch.Tensor) else type(before).__name__
                raise RuntimeError(f"cuda_graph: layer {layer}'s state entry {key!r} changed from {was} to "
                                   f"{(tuple(value.shape), value.dtype)}; a graph needs a state of fixed shapes")
            if value is before or (value.data_ptr() == before.data_ptr() and value.stride() == before.stride()):
                continue  # updated in place
            if value.untyped_storage().data_ptr() == before.untyped_storage().data_ptr():
                value = value.clone()  # another view of the same memory: copy_ must not read what it writes
            before.copy_(value)
        elif value != before:
            if isinstance(value, bool) or not isinstance(value, int) or not isinstance(before, int):
                raise RuntimeError(f"cuda_graph: layer {layer}'s state entry {key!r} changed from {before!r} to "
                                   f"{value!r}; outside its tensors a graph's state may only count tokens")
            moved[key] = value - before
    return moved


class GraphDecodeStep:
    """``model.decode_step`` replayed from one CUDA graph; called as it is, on the states it returns.

    Args:
        model: a :class:`~seqarch.models.LanguageModel` whose every layer has a graph step
            (:attr:`~seqarch.mixers.Mixer.has_graph_step`; a ValueError names the layers that do not).
        capture: record a CUDA graph (default: when the model is on a CUDA device); ``False`` runs
            the same buffers and write-backs eagerly.

    A call returns the logits in a buffer the next call overwrites (sample from them first) and the
    states it was given, updated; it must be given back the states it returned.
    """

    #: Eager calls before the capture (mamba's generation warms up twice too).
    warmup_steps = 2

    def __init__(self, model: nn.Module, *, capture: bool | None = None) -> None:
        without = layers_without_graph_step(model)
        if without:
            raise ValueError("cuda_graph: every layer's step must do the same work at every position "
                             "(Mixer.has_graph_step); these layers' steps read the position in Python: "
                             f"{', '.join(without)}; generate without cuda_graph")
        device = next(model.parameters()).device
        self.capture = device.type == "cuda" if capture is None else bool(capture)
        if self.capture and device.type != "cuda":
            raise ValueError(f"cuda_graph: expected a model on a CUDA device, got one on {device}")
        self.model = model
        self.mixers = [block.mixer for block in model.backbone.blocks]  # a replaced one fails matches()
        self.calls = 0
        self.side_stream = torch.cuda.Stream(device) if self.capture else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.token: torch.Tensor | None = None
        self.states: list[State] | None = None
        self.logits: torch.Tensor | None = None
        self.counters: list[dict[str, int]] = []
        self.steps_left: int | None = None  # tokens the states take (a replayed graph checks nothing)
        self.modules = list(model.modules())
        self.signature = self._signature()
        self.restarting = False
        self.kept: list = []  # the parameter caches' values when the graph was captured (it reads some)

    def _signature(self) -> tuple:
        versions = [p._version for m in self.modules for p in m._parameters.values() if p is not None]
        return module_signature(self.modules), tuple(versions)

    def matches(self) -> bool:
        """Whether the model is as it was when this step was made (parameters, their storage and
        versions, training flags, submodules): a graph captured then still computes its step."""
        return self._signature() == self.signature

    def restart(self) -> None:
        """Take the next call's states as a new sequence's (from another ``init_state`` and ``prefill``
        of the same shapes): copied into this step's buffers, so a captured graph replays on them."""
        self.restarting = True

    @contextlib.contextmanager
    def _warmup_stream(self) -> Iterator[None]:
        if self.side_stream is None:
            yield
            return
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            yield
        torch.cuda.current_stream().wait_stream(self.side_stream)

    def _step_in_place(self) -> None:
        """One step on the buffers: the logits, and each new state written back into the old one."""
        logits, new_states = self.model.decode_step(self.token, self.states, check=False)
        self.logits = logits
        self.counters = [write_back(old, new, i) for i, (old, new) in enumerate(zip(self.states, new_states))]

    def _prepare(self, token: torch.Tensor, states: list[State]) -> None:
        """The buffers: the token's, and dicts of this step's own (the counters move in them) in the form
        each layer's graph step reads (:meth:`~seqarch.mixers.Mixer.graph_state`)."""
        self.token = token.clone()
        self.states = [mixer.graph_state(dict(state)) for mixer, state in zip(self.mixers, states)]
        self._count_steps_left()

    def _count_steps_left(self) -> None:
        bounds = [left for mixer, state in zip(self.mixers, self.states)
                  if (left := mixer.graph_steps_left(state)) is not None]
        self.steps_left = min(bounds) if bounds else None

    def _reload(self, states: list[State]) -> None:
        """A new sequence's ``states`` copied into the buffers (counters set to theirs)."""
        for i, (mixer, mine, given) in enumerate(zip(self.mixers, self.states, states)):
            for key, moved in write_back(mine, mixer.graph_state(dict(given)), i).items():
                mine[key] += moved
        self._count_steps_left()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step_in_place()
        except RuntimeError as error:
            raise RuntimeError(f"cuda_graph: capturing the decoding step failed ({error}); generate without "
                               "cuda_graph") from error
        self.graph = graph
        self.kept = cached_values(self.model)

    def __call__(self, token: torch.Tensor, states: list[State], *, check: bool = True
                 ) -> tuple[torch.Tensor, list[State]]:
        """``model.decode_step(token, states)``; ``check`` is accepted for the same signature (the buffers
        are this step's own, so nothing is checked again)."""
        if self.states is None:
            self._prepare(token, states)
        elif self.restarting:
            self._reload(states)
        elif states is not self.states:
            raise ValueError("states: expected the states this graph step returned last (a graph reads and "
                             "writes those tensors), got others")
        self.restarting = False
        if self.steps_left is not None:
            if self.steps_left <= 0:
                raise ValueError("states: full; expected at most the tokens the states were made for "
                                 "(pass a larger max_length to init_state)")
            self.steps_left -= 1
        self.token.copy_(token)
        if self.graph is None and self.capture and self.calls >= self.warmup_steps:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:  # the warm-up calls (every call without capture): the very work the graph will hold
            with self._warmup_stream():
                self._step_in_place()
            self.calls += 1
        for state, counters in zip(self.states, self.counters):
            for key, moved in counters.items():
                state[key] += moved
        return self.logits, self.states
