"""The remote code written next to an exported model's weights.

``save_pretrained`` writes ``modeling_seqarch.py`` (what ``config.json``'s ``auto_map`` names)
and ``seqarch_code.py``: seqarch's model code (the package's top-level modules, ``mixers``,
``modules``, ``models``, ``kernels`` and the model half of ``hf``) as source text, served by
:mod:`.bundle_loader` under a private package name. A process that never imports seqarch loads
the folder with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ..mixers.base import MIXERS
from ..models.config import ModelConfig

ROOT = __name__.rsplit(".", 2)[0]  # "seqarch", or the vendored package's private name
CODE_FILE = "seqarch_code.py"
MODELING_FILE = "modeling_seqarch.py"
SUBPACKAGES = ("mixers", "modules", "models", "kernels")
HF_MODULES = ("bundle_loader.py", "cache.py", "code.py", "configuration.py", "modeling.py")
HF_INIT = '"""seqarch.hf, vendored for remote code: the model half only (nothing is registered)."""\n'
AUTO_MAP = {"AutoConfig": "modeling_seqarch.SeqarchConfig",
            "AutoModelForCausalLM": "modeling_seqarch.SeqarchForCausalLM"}
MODELING_SOURCE = '''"""A seqarch model for transformers' remote code: the classes come from seqarch_code.py."""

from .seqarch_code import load_package

_hf = load_package()
SeqarchConfig = _hf.configuration.SeqarchConfig
SeqarchForCausalLM = _hf.modeling.SeqarchForCausalLM
SeqarchCache = _hf.cache.SeqarchCache
'''


def _disk_sources() -> dict[str, str]:
    """Relative path -> source of the vendored modules, read from this package's files (the
    installed seqarch, or the vendored copy when this model was itself loaded as remote code)."""
    root = Path(sys.modules[ROOT].__file__).parent
    sources = {p.name: p.read_text() for p in sorted(root.glob("*.py"))}
    for sub in SUBPACKAGES:
        folder = Path(sys.modules[f"{ROOT}.{sub}"].__file__).parent if f"{ROOT}.{sub}" in sys.modules else None
        if folder is None:
            __import__(f"{ROOT}.{sub}")
            folder = Path(sys.modules[f"{ROOT}.{sub}"].__file__).parent
        for path in sorted(folder.glob("*.py")):
            sources[f"{sub}/{path.name}"] = path.read_text()
    here = Path(__file__).parent
    for name in HF_MODULES:
        sources[f"hf/{name}"] = (here / name).read_text()
    sources["hf/__init__.py"] = HF_INIT
    return sources


def check_exportable(config: ModelConfig) -> None:
    """Raise a ValueError unless every layer's mixer is one the vendored code defines (a mixer
    registered by the researcher's own module is not carried into the export)."""
    for name in dict.fromkeys(config.layer_mixers):
        module = MIXERS[name].__module__
        if not module.startswith(f"{ROOT}.mixers."):
            own = sorted(n for n, cls in MIXERS.items() if cls.__module__.startswith(f"{ROOT}.mixers."))
            raise ValueError(f"model_config.mixer: mixer {name!r} is defined in module {module!r}, outside "
                             f"seqarch, so the exported code cannot build it; expected one of {', '.join(own)}")


def write_remote_code(folder: str | Path) -> None:
    """Write ``seqarch_code.py`` and ``modeling_seqarch.py`` into ``folder``."""
    folder = Path(folder)
    sources = _disk_sources()
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:12]
    loader = sources["hf/bundle_loader.py"]
    code = (f"{loader}\n\nPACKAGE = {f'_seqarch_vendored_{digest}'!r}\nSOURCES = {sources!r}\n")
    (folder / CODE_FILE).write_text(code)
    (folder / MODELING_FILE).write_text(MODELING_SOURCE)
