"""A model's decoding step through ``torch.compile``: graphs of its own, few guards, never stale.

Dynamo keeps compiled graphs per code object and, before each call, evaluates every guard of a
graph: on a decoding step of a small model, most of them (several hundred) check its modules
(types, attributes, hooks, parameter metadata), and in a profile of a 4-layer model on a CPU
checking them took longer than the Python work of the step around the graph.  So this step

- compiles a copy of ``decode_step``'s code object, bound to the model: its graphs are its own,
  not shared with every other model's ``decode_step`` (whose guards a call would check first, and
  whose graphs would count against Dynamo's recompile limit);
- drops the guards on modules (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``), and
  checks instead, per call, what they stood for (:func:`module_signature`): every module's training
  flag, every parameter's storage (a new ``nn.Parameter``, ``model.to(...)`` to another dtype or
  device) and every submodule's identity.  When that changes it compiles again.  Parameters are
  graph inputs, read at every call, so an in-place update needs no new graph.

Hooks registered on the modules after the first call are not seen by the compiled step.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..mixers.base import STEP_CONSTANTS


def own_method(model: nn.Module, name: str) -> Callable:
    """``getattr(model, name)`` through a copy of the function's code object (Dynamo's cache key)."""
    function = getattr(type(model), name)
    code = function.__code__.replace()  # an equal code object, not the same one
    copy = types.FunctionType(code, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return types.MethodType(copy, model)


def module_signature(modules: list[nn.Module]) -> tuple:
    """What the dropped module guards checked, cheaply (a decoding step asks every token): each
    module's training flag, the storage of its parameters (a new parameter, or ``.to()`` to another
    dtype or device, moves it) and the identity of its submodules (one replaced).  ``modules``: the
    model's, listed when it was compiled."""
    flags = [m.training for m in modules]
    storages = [p.data_ptr() for m in modules for p in m._parameters.values() if p is not None]
    children = [id(c) for m in modules for c in m._modules.values()]
    return (*flags, *storages, *children)


class CompiledDecodeStep:
    """``model.decode_step`` through ``torch.compile(backend=backend)``; called as it is.

    Before each call it gives every layer its step constants (the tensors a step derives from the
    parameters alone, :meth:`~seqarch.mixers.Mixer.step_constants`: cached, so fresh after any
    parameter change) as inputs of the graph, which would otherwise derive them again on every
    token (inside a traced call the parameter cache does not apply), and strips them from the
    states it returns.
    """

    def __init__(self, model: nn.Module, backend: str) -> None:
        self.model, self.backend = model, backend
        self.modules: list[nn.Module] = []
        self.signature: tuple | None = None
        self.graph: Callable | None = None

    def _compile(self) -> Callable:
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)  # torch >= 2.7
        options = {"guard_filter_fn": skip} if skip is not None else None
        return torch.compile(own_method(self.model, "decode_step"), backend=self.backend, options=options)

    def __call__(self, token: torch.Tensor, states: list, *, check: bool = True) -> tuple[torch.Tensor, list]:
        signature = module_signature(self.modules)
        if signature != self.signature:
            self.modules = list(self.model.modules())
            self.graph, self.signature = self._compile(), module_signature(self.modules)
        given: list[Any] = []
        for block, state in zip(self.model.backbone.blocks, states):
            constants = block.mixer.step_constants(state) if isinstance(state, dict) else {}
            given.append({**state, STEP_CONSTANTS: constants} if constants else state)
        logits, states = self.graph(token, given, check=check)
        # Returned without them: a later call gets fresh ones, never these.
        return logits, [{k: v for k, v in s.items() if k != STEP_CONSTANTS} if STEP_CONSTANTS in s else s
                        for s in states]
