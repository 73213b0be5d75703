"""Triton kernels for seqarch's hot paths, installed as ``seqarch.kernels``.

The layers currently run their pure-PyTorch forms (``seqarch.modules``); the
Triton kernels and their dispatch are the subject of the kernel work item.
"""
