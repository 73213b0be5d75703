"""A researcher's own layer reaches the CLI: --import, a config's imports, entry points, and --resume."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from seqarch.mixers import MIXERS
from seqarch.models.presets import PRESETS
from seqarch.training import plugins
from seqarch.training.cli import list_architectures
from seqarch.training.config import ConfigError, load_config
from seqarch.training.plugins import PluginError, import_modules, load_entry_points

REPO = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """A token-wise linear mixer (causal: it sees only its own position) and a preset of it."""
    import torch
    from torch import nn

    import seqarch
    from seqarch.models.presets import register_preset


    @seqarch.register_mixer("{name}")
    class TokenLinear(seqarch.Mixer):
        """A linear map of each position on its own."""

        def __init__(self, d_model, *, causal=True, device=None, dtype=None):
            super().__init__(d_model, causal=causal)
            self.proj = nn.Linear(d_model, d_model, device=device, dtype=dtype)

        def forward(self, x):
            return self.proj(x)

        def flops_breakdown(self, length):
            return {{"matmul": 2 * length * self.d_model * self.d_model, "fft": 0, "other": 0}}

        def state_size(self, length):
            return 0


    register_preset("{name}-mlp", "the token-wise linear mixer with a GELU MLP", mixer="{name}", channel_mixer="mlp")
''')


def write_plugin(folder: Path, module: str, name: str) -> None:
    (folder / f"{module}.py").write_text(PLUGIN.format(name=name))


@pytest.fixture
def clean_registry():
    mixers, presets = dict(MIXERS), dict(PRESETS)
    yield
    MIXERS.clear()
    MIXERS.update(mixers)
    PRESETS.clear()
    PRESETS.update(presets)


def test_imports_register_the_module_mixer_and_preset(tmp_path, monkeypatch, clean_registry):
    write_plugin(tmp_path, "layers_for_config_test", "tokenlinear_a")
    monkeypatch.chdir(tmp_path)  # modules in the current directory are found, as with python -m
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"imports": ["layers_for_config_test"],
                                      "architectures": ["tokenlinear_a", "tokenlinear_a-mlp"]}))
    loaded = load_config(config, command="compare")
    assert loaded.imports == ["layers_for_config_test"]
    assert [(a.name, a.preset, a.mixer) for a in loaded.architectures] == [
        ("tokenlinear_a", None, "tokenlinear_a"), ("tokenlinear_a-mlp", "tokenlinear_a-mlp", None)]
    assert "tokenlinear_a-mlp" in list_architectures() and "A linear map of each position" in list_architectures()
    with pytest.raises(PluginError, match=r"--import: cannot import 'no_such_module_here' \(ModuleNotFoundError"):
        import_modules(["no_such_module_here"], source="--import")
    with pytest.raises(ConfigError, match=r"imports: expected a list of module names, got 'layers_for_config_test'"):
        load_config(None, ["imports=layers_for_config_test"])


def test_entry_points_of_group_seqarch_mixers_load_once(tmp_path, monkeypatch, clean_registry):
    write_plugin(tmp_path, "layers_for_entry_point_test", "tokenlinear_b")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    found = [importlib.metadata.EntryPoint("tokenlinear", "layers_for_entry_point_test", "seqarch.mixers")]
    asked = []
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: asked.append(group) or found)
    assert "tokenlinear_b" not in MIXERS
    assert load_entry_points() == ["tokenlinear"]
    assert "tokenlinear_b" in MIXERS and asked == ["seqarch.mixers"]
    assert load_entry_points() == [] and asked == ["seqarch.mixers"]  # once per process
    broken = [importlib.metadata.EntryPoint("broken", "no_such_module_for_entry_point", "seqarch.mixers")]
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: broken)
    with pytest.raises(PluginError, match=r"entry point 'broken' \(no_such_module_for_entry_point\)"):
        load_entry_points()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "seqarch.training.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_fresh_process_compares_an_imported_mixer_and_resume_imports_it_again(tmp_path):
    write_plugin(tmp_path, "my_layers", "tokenlinear")
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump({
        "name": "plug", "data": {"task": "mqar", "num_train": 64, "num_test": 16, "seq_len": 16},
        "model": {"d_model": 16}, "architectures": ["tokenlinear", "tokenlinear-mlp"],
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2},
        "trainer": {"accelerator": "cpu"}}))
    unknown = _cli(tmp_path, "compare", "cmp.yaml", "--output", "runs", "--quiet")
    assert unknown.returncode == 2 and "architectures[0]: unknown mixer 'tokenlinear'" in unknown.stderr
    assert not (tmp_path / "runs").exists()
    done = _cli(tmp_path, "compare", "cmp.yaml", "--import", "my_layers", "--output", "runs", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "plug"
    assert yaml.safe_load((folder / "config.yaml").read_text())["imports"] == ["my_layers"]
    results = json.loads((folder / "results.json").read_text())["results"]
    assert [(r["name"], r["model_config"]["channel_mixer"]) for r in results] == [
        ("tokenlinear", "glu"), ("tokenlinear-mlp", "mlp")]
    resumed = _cli(tmp_path, "compare", "cmp.yaml", "--output", "runs", "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["steps"] for r in json.loads((folder / "results.json").read_text())["results"]] == [2, 2]
