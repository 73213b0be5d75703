"""Causal language model over any mixer (or a hybrid list of mixers)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..flops import step_flops
from ..losses import IGNORE_INDEX, token_loss
from .backbone import Backbone, check_tokens, num_params
from .compiled_step import CompiledDecodeStep
from .config import ModelConfig
from .graph_step import GraphDecodeStep


class LanguageModel(nn.Module):
    """Next-token model: ``(batch, length)`` ids -> ``(batch, length, vocab_size)`` logits.

    ``generate`` reads the prompt with ``prefill`` and then runs each mixer's
    recurrent ``step``, one token at a time.
    """

    def __init__(self, config: ModelConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("config.causal: expected True for a LanguageModel, got False")
        self.config = config
        self.backbone = Backbone(config, device=device, dtype=dtype)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.head.weight = self.backbone.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(tokens))

    # What generate makes from the model (compiled steps, a captured CUDA graph): neither pickled by
    # torch.save(model) nor copied by copy.deepcopy; a loaded or copied model makes its own.
    _DECODING_CACHES = ("_compiled_steps", "_graph_decode_step")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in self._DECODING_CACHES:
            state.pop(key, None)
        return state

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``targets: (batch, length)``; positions labelled ``IGNORE_INDEX`` (-100) are
        ignored."""
        if targets.shape != tokens.shape:
            raise ValueError(f"targets: expected shape {tuple(tokens.shape)} like tokens, got {tuple(targets.shape)}")
        return self.loss_from_logits(self(tokens), targets)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` of logits already computed (a trainer that also scores them calls this)."""
        return token_loss(logits, targets)

    @staticmethod
    def scored(targets: torch.Tensor) -> torch.Tensor:
        """Where ``targets`` take a loss: a bool tensor of their shape."""
        return targets != IGNORE_INDEX

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, compile_step: bool | str = False, cuda_graph: bool = False
                 ) -> torch.Tensor:
        """Continue ``prompt: (batch, length)`` by ``max_new_tokens`` tokens.

        ``temperature=0`` is greedy; ``top_k`` keeps the k most likely tokens.
        ``use_cache=False`` recomputes the full forward for each token (the slow
        reference the recurrent path must match).  ``compile_step``: run each decoding step
        (every layer's ``step`` and the head) through ``torch.compile`` (``True``: the default
        inductor backend, or a backend's name), compiled once per model and backend with
        dynamic positions, the caches preallocated by ``init_state``; it gives the eager
        step's tokens.  ``cuda_graph``: on a CUDA device, replay one CUDA graph of the decoding step
        for every token after the first few (:class:`~seqarch.models.graph_step.GraphDecodeStep`; every
        layer must have one: ``Mixer.has_graph_step``), captured once and replayed again by later calls
        of the same batch size and total length while the parameters and modes are unchanged.
        Returns ``(batch, length + max_new_tokens)``.
        """
        check_tokens(prompt, self.config, "prompt")
        if prompt.shape[0] == 0 or prompt.shape[1] == 0:
            raise ValueError(f"prompt: expected at least one sequence of at least one token, got shape "
                             f"{tuple(prompt.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
                or math.isinf(temperature):
            raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
            raise ValueError(f"top_k: expected a positive integer or None, got {top_k!r}")
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph: expected a bool, got {cuda_graph!r}")
        if cuda_graph and (compile_step is not False or not use_cache):
            raise ValueError("cuda_graph: expected False with compile_step or use_cache=False (a graph replays "
                             f"the cached eager step), got True with compile_step={compile_step!r}, "
                             f"use_cache={use_cache!r}")
        # Made (and its refusals raised) before any work.
        graph_step = self._graph_step(prompt.shape[0], prompt.shape[1] + max_new_tokens) if cuda_graph else None
        tokens = prompt
        if max_new_tokens == 0:
            return tokens
        if not use_cache:
            for _ in range(max_new_tokens):
                logits = self(tokens)[:, -1]
                tokens = torch.cat([tokens, self._sample(logits, temperature, top_k, generator)[:, None]], 1)
            return tokens
        step = graph_step or (self.decode_step if compile_step is False else self.compiled_decode_step(compile_step))
        total = prompt.shape[1] + max_new_tokens
        states = self.backbone.init_state(prompt.shape[0], max_length=total)
        features, states = self.backbone.prefill(prompt, states)
        logits = self.head(features[:, -1])
        new_tokens = []
        for i in range(max_new_tokens):
            token = self._sample(logits, temperature, top_k, generator)
            new_tokens.append(token[:, None])
            if i + 1 < max_new_tokens:
                # The states came from init_state and prefill, the tokens from _sample: nothing to check
                # again on every token in every layer (those checks were a tenth of a decoding step).
                logits, states = step(token, states, check=False)
        return torch.cat([tokens, *new_tokens], 1)

    def _graph_step(self, batch_size: int, total: int) -> GraphDecodeStep:
        """The CUDA-graph step of ``generate``: the last one made, for the same batch size and length, while
        the model is as it was then (:meth:`GraphDecodeStep.matches`), else a new one (one kept per
        model: its buffers and graph memory go with the next)."""
        key, kept = (batch_size, total), self.__dict__.get("_graph_decode_step")
        if kept is None or kept[0] != key or not kept[1].matches():
            self.__dict__["_graph_decode_step"] = None  # the old graph's memory goes before a new one's comes
            kept = key, GraphDecodeStep(self, capture=True)
            self.__dict__["_graph_decode_step"] = kept
        kept[1].restart()
        return kept[1]

    def decode_step(self, token: torch.Tensor, states: list, *, check: bool = True) -> tuple[torch.Tensor, list]:
        """One decoding step: ``token: (batch,)`` ids -> ``(logits: (batch, vocab_size), states)``;
        ``check=False`` skips the layers' input and state checks (states made by this model)."""
        features, states = self.backbone.step(token, states, check=check)
        return self.head(features), states

    def compiled_decode_step(self, backend: bool | str = True) -> CompiledDecodeStep:
        """:meth:`decode_step` through ``torch.compile`` (``True``: inductor), made once per backend:
        a function of the same arguments and results (:class:`~seqarch.models.compiled_step.CompiledDecodeStep`).

        The graph reads the layers' step constants as inputs, made fresh before every call; one graph
        serves every position (two compilations: the first position, then positions made dynamic).
        The graphs are this model's own (not shared with other models' steps) and checked by few
        guards; a change of training mode or of a parameter's storage, dtype, device or shape compiles
        anew, an in-place update of the weights needs nothing.  Hooks added to the modules after the
        first call are not run by it."""
        if not isinstance(backend, (bool, str)) or backend is False:
            raise ValueError(f"compile_step: expected True or a torch.compile backend name, got {backend!r}")
        name = "inductor" if backend is True else backend
        compiled = self.__dict__.setdefault("_compiled_steps", {})
        if name not in compiled:
            compiled[name] = CompiledDecodeStep(self, name)
        return compiled[name]

    def num_params(self) -> int:
        """Parameters, the tied embedding counted once."""
        return num_params(self)

    def flops_per_token(self, length: int, batch_size: int = 1, attention: str = "causal") -> float:
        """Forward FLOPs per token of a step on ``(batch_size, length)``: blocks plus the head, the
        once-per-step work shared by the batch (:func:`seqarch.flops.step_flops`)."""
        return step_flops(self, batch_size, length, attention).forward_per_token

    def head_flops(self, length: int) -> int:
        """Forward FLOPs of the output head for one sequence: a ``d_model x vocab_size`` product per token."""
        return 2 * self.config.d_model * self.config.vocab_size * length
