"""Linear attention and the shared shell of every mixer with a matrix-valued recurrent state.

:class:`MatrixStateMixer` is the shell: a subclass projects ``x`` into per-head queries, keys,
values (and a log-decay, or the delta rule's ``beta``), the shell runs the chunked parallel form
(:func:`seqarch.kernels.chunked_linear_attention.chunked_linear_attention`, Triton on GPUs) in
``forward`` and ``prefill`` and the exact O(1) recurrence in ``step``, with a ``d_k x d_v`` state per
head, and the subclass maps the per-head outputs back to ``d_model`` (norms, output gates).
RetNet, GLA, DeltaNet and Based are subclasses, one file each.

:class:`LinearAttention` (Katharopoulos et al., "Transformers are RNNs", ICML 2020): feature maps
``identity``, ``elu`` (elu + 1) and ``taylor`` (Based's second-order Taylor map), and the
paper's normaliser ``o_t = phi(q_t)^T S_t / phi(q_t)^T z_t`` with ``z_t = sum_s phi(k_s)``, computed by
the same op as one extra value column of ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_divides, check_positive_int, check_positive_real
from ..kernels.chunked_linear_attention import (
    chunked_linear_attention,
    linear_attention_step,
    state_dtype,
    twin_matmul_flops,
)
from ..modules.feature_maps import FEATURE_MAPS, feature_dim, feature_map, feature_map_flops
from .base import Mixer, State, register_mixer


def default_heads(d_model: int, n_heads: int | None) -> int:
    """``n_heads``, checked, or one head per 64 channels (at least one)."""
    return max(1, d_model // 64) if n_heads is None else check_positive_int("n_heads", n_heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(batch, heads, length, d)`` -> ``(batch, length, heads * d)``."""
    batch, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d)


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """Token-major ``(batch, length, heads, ...)`` -> the ops' ``(batch, heads, length, ...)`` (a view)."""
    return x.transpose(1, 2)


class MatrixStateMixer(Mixer):
    """Shell of the linear-attention family: ``(batch, length, d_model)`` -> same shape.

    Subclasses set ``n_heads``, ``state_key_dim`` and ``state_value_dim`` (the per-head state is
    ``state_key_dim x state_value_dim``) and implement:

    ``_project(x, state) -> (q, k, v, gates, extra)``
        ``x: (*lead, d_model)``, where ``lead`` is ``(batch, length)`` for a sequence and ``(batch,)``
        for one decoding step; per-head and token-major ``q, k: (*lead, heads, d_k)``,
        ``v: (*lead, heads, d_v)``, ``gates`` the op's extra inputs (a dict: ``log_decay``
        ``(*lead, heads)`` or ``(*lead, heads, d_k)``, ``beta (*lead, heads)``); ``state`` is None in
        ``forward`` and the recurrent state otherwise (its ``"length"`` gives the position, its
        short-convolution histories the past), ``extra`` the updated non-matrix state entries;
    ``_combine(o, x) -> y``
        per-head outputs ``(*lead, heads, d_v)`` to ``(*lead, d_model)``;
    ``_mix(q, k, v, gates, initial_state)`` / ``_mix_step``
        the op and its one-token recurrence (linear attention with a decay by default).
    """

    has_fixed_size_state = True
    step_reads_position = False  # "length" only counts tokens, unless a subclass rotates by it (RetNet)
    chunk_size = 64

    n_heads: int
    state_key_dim: int
    state_value_dim: int

    def _mix(self, q, k, v, gates, initial_state):
        return chunked_linear_attention(q, k, v, gates.get("log_decay"), initial_state, chunk_size=self.chunk_size)

    def _mix_step(self, q_t, k_t, v_t, gates_t, state):
        # In place where autograd keeps no old state, as the contract allows: no state-sized tensors per token.
        return linear_attention_step(q_t, k_t, v_t, gates_t.get("log_decay"), state,
                                     inplace=not torch.is_grad_enabled())

    def _extra_state(self, batch_size: int, device, dtype) -> State:
        """Non-matrix state entries (short-convolution histories); none by default."""
        return {}

    def _extra_state_size(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        q, k, v, gates, _ = self._project(x, None)
        o, _ = self._mix_sequence(q, k, v, gates, None)
        return self._combine(o, x)

    def _mix_sequence(self, q, k, v, gates, initial_state):
        """:meth:`_mix` on token-major projections, its per-head output back token-major."""
        o, matrix = self._mix(heads_first(q), heads_first(k), heads_first(v),
                              {name: heads_first(g) for name, g in gates.items()}, initial_state)
        return heads_first(o), matrix

    def _init_state(self, batch_size, *, device, dtype, max_length) -> State:
        """``{"S": (batch, heads, d_k, d_v) zeros (float32 or wider), "length": 0, ...}``."""
        matrix = torch.zeros(batch_size, self.n_heads, self.state_key_dim, self.state_value_dim,
                             device=device, dtype=state_dtype(dtype))
        return {"S": matrix, "length": 0, **self._extra_state(batch_size, device, dtype)}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The whole prompt by the chunked form, starting from ``state``; returns the state after it."""
        state = self.start_prefill(x, state)
        q, k, v, gates, extra = self._project(x, state)
        o, matrix = self._mix_sequence(q, k, v, gates, state["S"])
        return self._combine(o, x), {**state, **extra, "S": matrix, "length": state["length"] + x.shape[1]}

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # The projections at one token are already (batch, heads, d): no length axis to add and take away.
        q, k, v, gates, extra = self._project(x_t, state)
        o_t, matrix = self._mix_step(q, k, v, gates, state["S"])
        return self._combine(o_t, x_t), {**state, **extra, "S": matrix, "length": state["length"] + 1}

    # -- accounting -------------------------------------------------------------------
    def mixing_flops(self, length: int) -> int:
        """Matrix products of the chunked form, per sequence: in each chunk the in-chunk scores and their
        values (counted dense), the state read and the state update (the twin's count)."""
        return twin_matmul_flops(length, self.n_heads, self.state_key_dim, self.state_value_dim, self.chunk_size)

    def state_size(self, length: int) -> int:
        """The ``d_k x d_v`` matrix of every head (plus short-convolution histories): the same at every length."""
        return self.n_heads * self.state_key_dim * self.state_value_dim + self._extra_state_size()


def linear_flops(layer: nn.Linear, tokens: int) -> int:
    return 2 * tokens * layer.in_features * layer.out_features


@register_mixer("linear_attention")
class LinearAttention(MatrixStateMixer):
    """Causal linear attention with a feature map: ``(batch, length, d_model)`` -> same shape.

    ``q, k, v = x W``, split into heads; ``o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)`` with
    ``S_t = sum_{s<=t} phi(k_s) v_s^T`` and ``z_t = sum_{s<=t} phi(k_s)``; ``y = o W_o``.

    Args:
        d_model: width.
        n_heads: heads (default one per 64 channels); must divide d_model.
        feature_map: ``"identity"``, ``"elu"`` (elu + 1) or ``"taylor"`` (Based's Taylor map).
        key_dim: per-head width of queries and keys before the feature map (default
            ``d_model / n_heads``; Based uses 16 with the Taylor map, whose width is ``1 + d + d^2``).
        normalize: divide by ``phi(q_t)^T z_t`` (the paper's normaliser); the identity map has
            signed scores, so it needs ``normalize=False``.
        eps: added to the normaliser.
        bias: biases in the projections.
    """

    # The mixer is named: subclasses (Based's) inherit this attribute, and the preset must stay this layer.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "linear_attention": {"description": "linear attention (Katharopoulos et al. 2020): elu+1 features and "
                                            "the normaliser, with a SwiGLU channel mixer",
                             "mixer": "linear_attention", "channel_mixer": "glu"},
    }

    def __init__(self, d_model: int, *, n_heads: int | None = None, feature_map: str = "elu",
                 key_dim: int | None = None, normalize: bool = True, eps: float = 1e-6, bias: bool = False,
                 causal: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.n_heads = default_heads(d_model, n_heads)
        check_divides("n_heads", self.n_heads, "d_model", d_model)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map: expected one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")
        self.normalize = check_bool("normalize", normalize)
        if feature_map == "identity" and normalize:
            raise ValueError("normalize: the identity feature map gives signed scores, whose sum may vanish; "
                             "expected normalize=False with feature_map='identity', got True")
        self.feature_map = feature_map
        self.eps = check_positive_real("eps", eps)
        self.head_dim = d_model // self.n_heads
        self.key_dim = self.head_dim if key_dim is None else check_positive_int("key_dim", key_dim)
        self.state_key_dim = feature_dim(feature_map, self.key_dim)
        self.state_value_dim = self.head_dim + (1 if normalize else 0)  # the normaliser's column of ones
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, self.n_heads * (2 * self.key_dim + self.head_dim), bias=bias, **factory)
        self.out = nn.Linear(d_model, d_model, bias=bias, **factory)

    def _project(self, x, state):
        width = self.n_heads * self.key_dim
        qk, v = self.qkv(x).split([2 * width, self.n_heads * self.head_dim], dim=-1)
        # q and k side by side, (..., 2, heads, key_dim): one feature map for both
        q, k = feature_map(self.feature_map, qk.unflatten(-1, (2, self.n_heads, self.key_dim))).unbind(-3)
        v = v.unflatten(-1, (self.n_heads, self.head_dim))
        if self.normalize:
            v = F.pad(v, (0, 1), value=1.0)  # the normaliser's column of ones
        return q, k, v, {}, {}

    def _combine(self, o, x):
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.eps)
        return self.out(o.flatten(-2))

    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        maps = 2 * length * self.n_heads * feature_map_flops(self.feature_map, self.key_dim)
        norm = length * self.d_model if self.normalize else 0
        projections = linear_flops(self.qkv, length) + linear_flops(self.out, length)
        return {"matmul": projections + self.mixing_flops(length), "fft": 0, "other": maps + norm}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, feature_map={self.feature_map!r}, "
                f"key_dim={self.key_dim}, normalize={self.normalize}")
