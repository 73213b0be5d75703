"""Helpers shared by the test modules (``from helpers import relative_rms``)."""

from __future__ import annotations

import functools
import importlib.util
import sys

import pytest
import torch

from seqarch.kernels import triton_available

# Triton is a dependency on Linux (pyproject), so there a missing or broken Triton fails its tests instead of
# skipping them; elsewhere (macOS, Windows) it is not installed and the Triton-path tests skip.
needs_triton = pytest.mark.skipif(not triton_available() and not sys.platform.startswith("linux"),
                                  reason="Triton is not a dependency on this platform")
# The outside oracles (flash-linear-attention, the `oracles` extra, and mamba-ssm) are installed by the README's
# test command, so a missing one fails its tests with the install step to run: a skip would prove nothing.
ORACLE_INSTALL = {
    "fla": 'pip install -e ".[oracles]"',
    # PyPI has only mamba-ssm's source: built against the venv's torch, CUDA build and wheel download off.
    "mamba_ssm": "MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-deps --no-build-isolation "
                 "mamba-ssm==2.3.2.post1",
}


def require_oracle(module: str) -> None:
    """Fail the calling test, naming the install step, when the oracle package ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} (a test oracle) is not installed; the README's test command installs it: "
                    f"{ORACLE_INSTALL[module]}")


def needs_fla(test):
    """A test that checks a core against flash-linear-attention's naive references."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        require_oracle("fla")
        return test(*args, **kwargs)
    return run


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``rms(actual - expected) / rms(expected)``, computed in float64 (complex: on magnitudes).

    The one closeness measure of the suite: scale-free, so one tolerance serves
    every shape, and robust to a single large entry in a way a max-norm is not.
    """
    actual, expected = actual.detach(), expected.detach()
    wide = torch.complex128 if (actual.is_complex() or expected.is_complex()) else torch.float64
    actual, expected = actual.to(wide), expected.to(wide)
    return float((actual - expected).abs().pow(2).mean().sqrt() / expected.abs().pow(2).mean().sqrt().clamp_min(1e-300))


def run_steps(mixer, x: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    """``mixer.step`` over every position of ``x: (batch, length, d_model)``, from ``state``:
    the outputs stacked as ``(batch, length, d_model)`` and the final state."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


def check_step_follows_parameter_updates(mixer, x, update, params, tol: float) -> None:
    """A mixer that derives step constants once per parameter version: after ``update()`` changes
    parameters in place, stepping through ``x: (batch, length, d_model)`` still equals the forward
    (within ``tol``), and with autograd on, two steps' output passes gradients to every one of ``params``."""
    import torch

    batch = x.shape[0]
    with torch.no_grad():
        run_steps(mixer, x, mixer.init_state(batch))  # fills the cache
        update()
        stepped, _ = run_steps(mixer, x, mixer.init_state(batch))
        assert relative_rms(stepped, mixer(x)) < tol
    _, state = mixer.step(x[:, 0], mixer.init_state(batch))
    y, _ = mixer.step(x[:, 1], state)
    y.sum().backward()
    for param in params:
        assert param.grad is not None and param.grad.abs().sum() > 0


def mamba_ssm_module(name: str):
    """``mamba_ssm.<name>`` from the authors' package on a CPU; a failure when it is not installed
    (:func:`require_oracle`) or is installed but does not import. Its CUDA extension is stubbed (only
    pure-PyTorch references run) and its package ``__init__`` (which imports the CUDA kernels and
    ``transformers``) is bypassed."""
    import importlib
    import types

    if "mamba_ssm" not in sys.modules:
        require_oracle("mamba_ssm")
        spec = importlib.util.find_spec("mamba_ssm")
        package = types.ModuleType("mamba_ssm")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["mamba_ssm"] = package
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        return importlib.import_module(f"mamba_ssm.{name}")
    except Exception as error:  # noqa: BLE001 - an installed oracle that does not import is a failure, not a skip
        pytest.fail(f"mamba_ssm is installed but mamba_ssm.{name} does not import: {type(error).__name__}: {error}")
