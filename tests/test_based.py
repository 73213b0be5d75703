"""Based's pieces: the Taylor linear attention defaults, sliding-window attention against its definition
(including prefill across the ring buffer's wrap), BaseConv, the hybrid preset, and the options."""

from __future__ import annotations

import pytest
import torch

import seqarch
from seqarch.models.presets import build_preset

from conftest import D_MODEL, small_mixer


def test_based_is_taylor_linear_attention_on_16_wide_keys():
    mixer = seqarch.build_mixer("based", 32, n_heads=2)
    assert mixer.feature_map == "taylor" and mixer.key_dim == 16 and mixer.normalize
    assert mixer.state_key_dim == 1 + 16 + 256 and mixer.state_size(1) == 2 * 273 * (16 + 1)


def test_sliding_window_attention_equals_its_definition():
    mixer = small_mixer("sliding_window_attention", dtype=torch.float64, rotary=False)
    x = torch.randn(2, 21, D_MODEL, dtype=torch.float64)
    q, k, v = (t.view(2, 21, 2, 8).transpose(1, 2) for t in mixer.qkv(x).chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5
    i, j = torch.arange(21)[:, None], torch.arange(21)[None, :]
    scores = scores.masked_fill(~((j <= i) & (j > i - 8)), float("-inf"))
    expected = mixer.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 21, D_MODEL))
    assert (mixer(x) - expected).abs().max() < 1e-12


def test_sliding_window_prefill_across_the_wrap_of_the_ring_buffer():
    mixer = small_mixer("sliding_window_attention", dtype=torch.float64)
    x = torch.randn(1, 30, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        state = mixer.init_state(1)
        parts = []
        for start, end in ((0, 5), (5, 11), (11, 12), (12, 30)):  # shorter and longer than the window
            y, state = mixer.prefill(x[:, start:end], state)
            parts.append(y)
        assert (torch.cat(parts, 1) - mixer(x)).abs().max() < 1e-12
        assert state["k"].shape[2] == 8 and state["length"] == 30


def test_base_conv_is_a_gated_short_convolution():
    mixer = small_mixer("base_conv", dtype=torch.float64)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    padded = torch.nn.functional.pad(x.transpose(1, 2), (2, 0))
    conv = torch.nn.functional.conv1d(padded, mixer.conv.weight.unsqueeze(1), mixer.conv.bias, groups=D_MODEL)
    assert (mixer(x) - mixer.projection(x) * conv.transpose(1, 2)).abs().max() < 1e-12


def test_based_preset_is_the_papers_hybrid():
    config = build_preset("based", d_model=32, vocab_size=11)
    assert set(config.layer_mixers) == {"base_conv", "based", "sliding_window_attention"}
    assert config.channel_mixer == "glu"
    model = seqarch.LanguageModel(config)
    assert all(type(block.mixer).has_fixed_size_state for block in model.backbone.blocks)
    assert model(torch.randint(0, 11, (2, 13))).shape == (2, 13, 11)


@pytest.mark.parametrize("name, options, argument", [
    ("sliding_window_attention", {"window": 0}, "window"),
    ("sliding_window_attention", {"n_heads": 5}, "n_heads"),
    ("sliding_window_attention", {"n_heads": 16}, "rotary"),
    ("base_conv", {"kernel_size": 0}, "kernel_size"),
    ("based", {"key_dim": -2}, "key_dim"),
    ("based", {"feature_map": "exp"}, "feature_map"),
])
def test_bad_options_name_the_argument(name, options, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        seqarch.build_mixer(name, D_MODEL, **options)
