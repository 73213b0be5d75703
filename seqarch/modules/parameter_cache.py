"""Values derived from a module's parameters, computed once per parameter version.

An SSM layer's convolution kernel, its discretised matrices, an implicit filter's taps:
each is a pure function of the parameters, yet a forward, a prefill or a recurrent step
would rebuild it on every call.  :func:`cached` keeps the value while the parameters are
unchanged and recomputes it after they change, so it is never stale:

- a parameter changes in place (an optimizer step, ``load_state_dict``, ``nn.init``,
  ``with torch.no_grad(): p.copy_(...)``): its ``_version`` counter moves;
- a parameter is replaced (``module.weight = nn.Parameter(...)``, ``module.to(...)``, a
  ``.data`` assignment): the cache holds the old parameter objects and their storage
  addresses and compares both.

What no counter sees is a write through ``p.data`` (``p.data.copy_(x)``: ``.data`` is a
new tensor with its own version counter); call :func:`clear_cache` after one.

The cache is used only where the value carries no autograd graph: when grad mode is off
(validation, ``generate``, ``prefill`` under ``no_grad``) or no parameter requires grad.
A training forward computes the value afresh, with its graph, every time, and so does a
traced (``torch.compile``) call, where the value becomes part of the graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

# Entries per module (one per length and dtype a module runs at); the oldest goes first.
MAX_ENTRIES = 8
# The caches, by module, outside the modules themselves: a pickled (``torch.save(model)``) or copied
# module carries none of these derived values (some of them views of one storage in two dtypes, which
# torch.save refuses), and a module that is garbage collected takes its entries with it.
_STORES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _fingerprint(params: tuple[nn.Parameter, ...]) -> tuple:
    return tuple((p._version, p.data_ptr()) for p in params)


def cache_applies(params: tuple[nn.Parameter, ...]) -> bool:
    """Whether a value derived from ``params`` now can be cached: no graph is being built
    through them and no compiler is tracing."""
    if torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(p.requires_grad for p in params)


def cached(module: nn.Module, key: Hashable, compute: Callable[[], Any],
           params: tuple[nn.Parameter, ...] | None = None) -> Any:
    """``compute()``, reused while ``module``'s parameters are unchanged (see the module).

    ``key`` names the value and its arguments (e.g. ``("kernel", length, dtype)``); the
    autocast state is added to it.  Outside :func:`cache_applies` it calls ``compute()``.
    ``params``: the parameters the value derives from, read by the caller at the call (so a
    replaced one is seen); default every parameter of ``module``.  Naming them is cheaper per
    call: gathering a layer's parameters costs several microseconds, which a decoding step
    that asks every token in every layer pays each time.
    """
    if params is None:
        # Read from each submodule's own table: cheaper than module.parameters() (no memo set to hash into).
        params = tuple(p for m in module.modules() for p in m._parameters.values() if p is not None)
    if not cache_applies(params):
        return compute()
    device = params[0].device.type if params else "cpu"
    # Values made under inference_mode are inference tensors, which autograd may not save: kept apart.
    full_key = (key, torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device),
                torch.is_inference_mode_enabled())
    store = _STORES.get(module)
    if store is None:
        store = _STORES[module] = {}
    entry = store.get(full_key)
    fingerprint = _fingerprint(params)
    if entry is not None:
        owners, seen, value = entry
        if len(owners) == len(params) and all(a is b for a, b in zip(owners, params)) and seen == fingerprint:
            return value
        del store[full_key]
    value = compute()
    if len(store) >= MAX_ENTRIES:
        del store[next(iter(store))]
    store[full_key] = (params, fingerprint, value)
    return value


def cached_values(module: nn.Module) -> list:
    """Every value cached now for ``module`` and its submodules (references: a holder keeps them alive
    after the cache lets them go, as a CUDA graph that reads them must)."""
    return [entry[2] for sub in module.modules() for entry in _STORES.get(sub, {}).values()]


def clear_cache(module: nn.Module) -> None:
    """Drop every cached value of ``module`` and its submodules (needed only after a write
    through ``p.data``, which no version counter sees)."""
    for sub in module.modules():
        _STORES.pop(sub, None)
