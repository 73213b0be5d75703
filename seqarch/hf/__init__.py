"""Hugging Face transformers integration (the ``hf`` extra: ``pip install -e ".[hf]"``).

Importing this package registers :class:`SeqarchConfig` (model_type ``seqarch``) and
:class:`SeqarchForCausalLM` with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("seqarch.hf needs transformers: pip install -e '.[hf]'") from error

from transformers import AutoConfig, AutoModelForCausalLM

from .cache import SeqarchCache
from .configuration import SeqarchConfig
from .modeling import SeqarchForCausalLM

AutoConfig.register(SeqarchConfig.model_type, SeqarchConfig, exist_ok=True)
AutoModelForCausalLM.register(SeqarchConfig, SeqarchForCausalLM, exist_ok=True)

__all__ = ["SeqarchCache", "SeqarchConfig", "SeqarchForCausalLM"]
