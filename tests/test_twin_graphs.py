"""The chunked twins' autograd graphs grow linearly with the sequence: no per-chunk slice of a whole-sequence
tensor, whose backward would write a full-size zero gradient for every chunk (a cost quadratic in the length)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqarch.kernels.chunked_linear_attention import chunked_linear_attention_reference
from seqarch.kernels.delta_rule import delta_rule_reference
from seqarch.kernels.ssd import ssd_reference


def slice_nodes(output: torch.Tensor) -> int:
    """How many SliceBackward nodes the graph behind ``output`` has."""
    seen, stack, count = set(), [output.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__.startswith("SliceBackward")
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


def linear_inputs(length: int, decay: str | None):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 8, generator=gen, requires_grad=True) for _ in range(3))
    beta = torch.rand(1, 2, length, generator=gen, requires_grad=True)
    log_decay = {None: None, "head": -torch.rand(1, 2, length, generator=gen) * 0.1,
                 "channel": -torch.rand(1, 2, length, 8, generator=gen) * 0.1}[decay]
    return q, F.normalize(k, dim=-1), v, beta, log_decay


CASES = [("linear_attention", None), ("linear_attention", "head"), ("linear_attention", "channel"),
         ("delta_rule", None), ("delta_rule", "head"), ("ssd", None)]  # SSD: its own decay from dt


@pytest.mark.parametrize(("twin", "decay"), CASES)
def test_slices_in_the_graph_do_not_grow_with_the_chunk_count(twin, decay):
    def graph_slices(length: int) -> int:
        q, k, v, beta, log_decay = linear_inputs(length, decay)
        if twin == "linear_attention":
            out, state = chunked_linear_attention_reference(q, k, v, log_decay, chunk_size=16)
        elif twin == "delta_rule":
            out, state = delta_rule_reference(q, k, v, beta, log_decay, chunk_size=16)
        else:
            dt = F.softplus(beta.unsqueeze(-1).expand(-1, -1, -1, 2).transpose(1, 2).reshape(1, length, 4))
            x = v.transpose(1, 2).reshape(1, length, 4, 4)
            out, state = ssd_reference(x, dt, -torch.ones(4), q.transpose(1, 2)[:, :, :1], k.transpose(1, 2)[:, :, :1],
                                       chunk_size=16)
        return slice_nodes(out.sum() + state.sum())

    assert graph_slices(16 * 16) == graph_slices(16 * 4)  # 16 chunks against 4: the same slices
