"""Building blocks shared by mixers and models: ``from seqarch.modules import MonarchLinear``.

The long convolution itself is ``seqarch.modules.fft_conv.fft_conv`` (the submodule keeps
the name); its kernels come from the generators (:class:`KernelGenerator`: ``DiagonalSSMKernel``,
``DPLRSSMKernel``, ``ImplicitKernel``).  Nothing here imports :mod:`seqarch.mixers`: blocks sit below
the layers that use them.
"""

from .diagonal_ssm import DiagonalSSMKernel, s4d_eigenvalues
from .dplr_ssm import DPLRSSMKernel
from .fft_conv import (
    bidirectional_fft_conv,
    fft_conv_flops,
    fft_flops,
    filter_fft_flops,
    ssm_conv,
    two_sided_filter,
)
from .hippo import hippo_legs, hippo_legs_dplr, hippo_legs_nplr
from .implicit_filter import ImplicitFilter, ImplicitKernel
from .kernel_generator import KernelGenerator, tag_optim
from .mlp import MLP, GLUOutput, build_channel_mixer, default_hidden
from .monarch import MonarchLinear
from .norm import GatedRMSNorm, RMSNorm, build_norm
from .rotary import RotaryEmbedding
from .short_conv import ShortConv
from .ssm import SSMKernel

__all__ = [
    "MLP",
    "DPLRSSMKernel",
    "DiagonalSSMKernel",
    "GLUOutput",
    "GatedRMSNorm",
    "ImplicitFilter",
    "ImplicitKernel",
    "KernelGenerator",
    "MonarchLinear",
    "RMSNorm",
    "RotaryEmbedding",
    "SSMKernel",
    "ShortConv",
    "bidirectional_fft_conv",
    "build_channel_mixer",
    "build_norm",
    "default_hidden",
    "fft_conv_flops",
    "fft_flops",
    "filter_fft_flops",
    "hippo_legs",
    "hippo_legs_dplr",
    "hippo_legs_nplr",
    "s4d_eigenvalues",
    "ssm_conv",
    "tag_optim",
    "two_sided_filter",
]
