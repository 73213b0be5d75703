"""Every Triton kernel compiles for a real GPU (sm_90), checked without one.

The interpreter tests run the kernels' semantics on the CPU, but the interpreter accepts
code that the GPU compiler rejects; ``scripts/compile_kernels.py`` runs each kernel's
launcher on fake CUDA tensors (so the real GPU tiles are chosen) and compiles every
launch through Triton and ptxas for sm_90.
"""

import re
import subprocess
import sys
from pathlib import Path

from helpers import needs_triton

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compile_kernels.py"


def defined_kernels() -> set[str]:
    """The names of the ``@triton.jit`` kernels (``_..._kernel``) the kernel modules define."""
    names = set()
    for path in (SCRIPT.parents[1] / "kernels").glob("*.py"):
        names.update(re.findall(r"@triton\.jit[^\n]*\n\s*def (_\w+_kernel)\(", path.read_text()))
    return names


def test_the_kernel_inventory_is_found():
    assert ({"_attention_forward_kernel", "_selective_scan_backward_kernel", "_ssd_chunk_scan_kernel"}
            <= defined_kernels())


@needs_triton
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    # the script drops TRITON_INTERPRET (set by conftest) itself, before it imports triton
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], check=False, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    compiled = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    kernels = {line.split("tensor cores=")[1].split()[1] for line in compiled}
    # every Triton kernel defined in kernels/ (forward and backward of every op) is launched and compiled
    assert kernels == defined_kernels(), result.stdout
    # the half-precision matmul kernels use tensor cores
    for line in compiled:
        if any(name in line for name in ("_attention_forward", "_monarch_forward", "_fft_conv")):
            assert "tensor cores=True" in line, line
