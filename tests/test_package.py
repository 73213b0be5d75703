"""Packaging: the public names and the kernels subpackage are importable as documented."""

from __future__ import annotations

import importlib

import seqarch


def test_public_api():
    for name in ("MIXERS", "Mixer", "build_mixer", "register_mixer", "ModelConfig", "LanguageModel",
                 "SequenceClassifier", "ResidualBlock", "__version__"):
        assert hasattr(seqarch, name), name


def test_kernels_install_as_a_subpackage_not_a_top_level_package():
    kernels = importlib.import_module("seqarch.kernels")
    assert kernels.__name__ == "seqarch.kernels"
    assert (importlib.util.find_spec("kernels") is None
            or "seqarch" not in str(importlib.util.find_spec("kernels").origin))


def test_from_a_checkout_root_import_kernels_reaches_the_installed_top_level_package(tmp_path):
    """``python -m`` from a checkout puts its root, and so its kernels/ folder, first on sys.path.  The
    name ``kernels`` must still reach an installed package of that name (Hugging Face's, which
    transformers imports), and be missing, not this folder, when none is installed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    installed = tmp_path / "site"
    (installed / "kernels").mkdir(parents=True)
    (installed / "kernels" / "__init__.py").write_text("CUDAProperties = 'the installed package'\n")

    def import_kernels_from_the_checkout(pythonpath):
        # -S: no site-packages, so only the checkout ('' is the working directory) and PYTHONPATH hold it.
        return subprocess.run([sys.executable, "-S", "-c", "from kernels import CUDAProperties; print(CUDAProperties)"],
                              cwd=checkout, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "PYTHONPATH": pythonpath})

    found = import_kernels_from_the_checkout(str(installed))
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "the installed package"
    missing = import_kernels_from_the_checkout("")
    assert missing.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in missing.stderr


def test_a_new_mixer_registers_and_builds_by_name():
    import torch

    from seqarch.mixers.base import MIXERS

    @seqarch.register_mixer("identity_for_test")
    class Identity(seqarch.Mixer):
        def forward(self, x):
            self.check_sequence(x)
            return x

        def flops_breakdown(self, length):
            return {"matmul": 0, "fft": 0, "other": length}

        def state_size(self, length):
            return 0

    try:
        mixer = seqarch.build_mixer("identity_for_test", 4)
        assert torch.equal(mixer(torch.ones(1, 2, 4)), torch.ones(1, 2, 4))
        assert mixer.flops(8) == 8
    finally:
        MIXERS.pop("identity_for_test")


def test_registering_an_incomplete_mixer_fails_loudly():
    import pytest

    with pytest.raises(TypeError, match="state_size"):
        @seqarch.register_mixer("incomplete_for_test")
        class Incomplete(seqarch.Mixer):
            def forward(self, x):
                return x

            def flops_breakdown(self, length):
                return {}
    assert "incomplete_for_test" not in seqarch.MIXERS


def test_building_blocks_are_exported_where_users_import_them():
    from seqarch.modules import GLUOutput, ImplicitFilter, MonarchLinear, RMSNorm, ShortConv, ssm_conv

    layer = MonarchLinear(16, 16, nblocks=4)
    assert layer(__import__("torch").randn(2, 16)).shape == (2, 16)
    assert all(callable(c) for c in (GLUOutput, ImplicitFilter, RMSNorm, ShortConv, ssm_conv))


def test_build_mixer_names_an_unknown_option_and_tells_a_plain_mixer_its_layer():
    import pytest
    import torch

    with pytest.raises(ValueError, match="d_stat: not an option of mixer 's4d'; expected one of: .*d_state"):
        seqarch.build_mixer("s4d", 8, d_stat=4)

    @seqarch.register_mixer("plain_for_test")
    class Plain(seqarch.Mixer):
        def __init__(self, d_model, *, causal=True, device=None, dtype=None):  # no layer_idx
            super().__init__(d_model, causal=causal)
            self.proj = torch.nn.Linear(d_model, d_model, device=device, dtype=dtype)

        def forward(self, x):
            return self.proj(x)

        def flops_breakdown(self, length):
            return {"matmul": 2 * length * self.d_model ** 2, "fft": 0, "other": 0}

        def state_size(self, length):
            return 0

    try:
        model = seqarch.LanguageModel(seqarch.ModelConfig(vocab_size=16, d_model=8, n_layers=3, mixer="plain_for_test"))
        assert [block.mixer.layer_idx for block in model.backbone.blocks] == [0, 1, 2]
    finally:
        seqarch.MIXERS.pop("plain_for_test")


def test_ci_runs_the_readme_test_command_verbatim():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv [^\n]*)\n```", readme)
    setup_and_test = [c for c in commands if "pytest" in c]
    setup_and_run = [c for c in commands if c.endswith("seqarch compare")]
    assert len(setup_and_test) == 1 and len(setup_and_run) == 1, commands
    ci_lines = (root / ".ci" / "run").read_text().splitlines()
    assert setup_and_test[0] in ci_lines


def test_ci_fails_when_a_step_before_the_tests_fails(tmp_path):
    """A failing set-up or lint step skips the rest of the && list; the run must fail then, not pass."""
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    lines = (root / ".ci" / "run").read_text().splitlines()
    chain = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    lines[chain] = "true && false && touch tests_ran"  # a lint step that fails before pytest
    script = "\n".join(line for line in lines if not line.startswith("cd ") and "test_transformers4" not in line)
    (tmp_path / "run").write_text(script + "\ntouch reached_the_end\n")
    result = subprocess.run(["bash", "run"], check=False, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert not (tmp_path / "tests_ran").exists() and not (tmp_path / "reached_the_end").exists()


def test_the_project_stands_alone_citing_no_outside_notes_or_issue_tracker():
    """Code, configs and docs name nothing a user of the repository cannot read (design notes kept outside
    it, the tracker's issues): whatever a reader needs is written here."""
    import pathlib
    import re
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    outside = re.compile(r"(?-i:DESIGN\.md|REFERENCES\.md)|\bthe issue'?s?\b|\bissue #?\d+", re.IGNORECASE)
    this_file = pathlib.Path(__file__).resolve()
    hits = []
    for name in tracked.split():
        path = root / name
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".sh", ".txt"} or path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_help_and_import_do_not_load_torch_or_lightning():
    # `seqarch --help` must answer at once: torch and Lightning take seconds to import.
    import subprocess
    import sys

    code = ("import sys, seqarch\n"
            "from seqarch.training.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'lightning', 'triton') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "seqarch compare" in done.stdout


def test_lazy_names_resolve_to_the_real_objects():
    from seqarch.mixers import build_mixer
    from seqarch.models.config import ModelConfig

    assert seqarch.build_mixer is build_mixer and seqarch.ModelConfig is ModelConfig
    assert "build_mixer" in dir(seqarch)
    try:
        seqarch.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
