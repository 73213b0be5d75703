"""``seqarch export RUN_FOLDER OUT_DIR``: a trained run's latest checkpoint and its tokenizer as
one Hugging Face folder (safetensors weights, config, the remote code, the tokenizer).

The byte tokenizer becomes a byte-level BPE with no merges (ids 0-255 the bytes, 256 the
end-of-document token ``<|endoftext|>``), a run's own ``tokenizer.json`` is wrapped as it is.
Everything is checked and built before anything is written; the folder is written next to
``OUT_DIR`` and renamed into place, so a failed export leaves nothing behind and an existing
non-empty ``OUT_DIR`` is never written over.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..data.tokenizers import ByteTokenizer, resolve_tokenizer_file
from ..models.config import ModelConfig
from ..training.checkpoints import check_checkpoint, latest_checkpoint
from ..training.config import SAVED_CONFIG
from .configuration import SeqarchConfig
from .modeling import SeqarchForCausalLM

BYTE_EOD_TOKEN = "<|endoftext|>"


def byte_tokenizer():
    """seqarch's :class:`ByteTokenizer` as a ``PreTrainedTokenizerFast`` (same ids both ways)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_char = bytes_to_unicode()
    tokenizer = Tokenizer(models.BPE(vocab={to_char[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=BYTE_EOD_TOKEN,
                                      pad_token=BYTE_EOD_TOKEN, clean_up_tokenization_spaces=False)
    if wrapped.eos_token_id != ByteTokenizer.eod_id:
        raise ValueError(f"tokenizer: expected the end-of-document id {ByteTokenizer.eod_id}, "
                         f"got {wrapped.eos_token_id}")
    return wrapped


def file_tokenizer(path: str, eod_token: str | None, run_folder: Path):
    """A run's own ``tokenizer.json`` (relative paths from the run folder or the working directory),
    with its end-of-document token as eos and pad, as seqarch's :class:`HFTokenizer` chooses it."""
    from transformers import PreTrainedTokenizerFast

    from ..data.tokenizers import HFTokenizer

    candidates = [Path(path).expanduser(), run_folder / path]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise ValueError(f"data.tokenizer: the run was trained with tokenizer {path!r}, which is not found "
                         f"(looked at {', '.join(str(c) for c in candidates)}); expected 'bytes' or an existing "
                         "tokenizer.json")
    ours = HFTokenizer(resolve_tokenizer_file(found), eod_token=eod_token)
    wrapped = PreTrainedTokenizerFast(tokenizer_file=str(ours.path), clean_up_tokenization_spaces=False)
    eod = wrapped.convert_ids_to_tokens(ours.eod_id) if ours.eod_id < len(wrapped) else None
    if eod is None:
        wrapped.add_special_tokens({"eos_token": "<|seqarch_eod|>"})
    else:
        wrapped.eos_token = eod
    wrapped.pad_token = wrapped.eos_token
    if wrapped.eos_token_id != ours.eod_id:
        raise ValueError(f"data.tokenizer: expected end-of-document id {ours.eod_id} in {ours.path}, "
                         f"got {wrapped.eos_token_id}")
    return wrapped


def saved_data_section(run_folder: Path) -> dict[str, Any] | None:
    """The ``data:`` section of the config saved in the run folder or a folder above it (a compare
    run's per-architecture folders sit under the config's folder); ``None`` when there is no saved config."""
    for folder in [run_folder, *run_folder.parents][:4]:
        saved = folder / SAVED_CONFIG
        if saved.is_file():
            return (yaml.safe_load(saved.read_text()) or {}).get("data") or {}
    return None


def load_run_model(run_folder: Path) -> tuple[SeqarchForCausalLM, Path]:
    """The HF model holding the run's latest checkpoint, and that checkpoint's path."""
    latest = latest_checkpoint(run_folder / "checkpoints")
    if latest is None:
        raise ValueError(f"RUN_FOLDER: {str(run_folder)!r} holds no checkpoints; expected a run folder with "
                         "checkpoints/step-*.ckpt (a compare run has one per architecture: "
                         "RUN/<architecture>/run)")
    checkpoint = check_checkpoint(latest)
    hyper = checkpoint["hyper_parameters"]
    if hyper.get("kind") != "lm":
        raise ValueError(f"RUN_FOLDER: {latest} holds a {hyper.get('kind')!r} model; expected a language "
                         "model (data kind 'lm') to export as a causal LM")
    model = SeqarchForCausalLM(SeqarchConfig(ModelConfig.from_dict(dict(hyper["model_config"]))))
    weights = {key.replace("model._orig_mod.", "model."): value for key, value in checkpoint["state_dict"].items()}
    model.load_state_dict(weights, strict=True)
    return model.eval(), latest


def export_run(run_folder: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export ``run_folder``'s latest checkpoint and tokenizer to ``out_dir``; returns ``out_dir``."""
    run_folder, out_dir = Path(run_folder), Path(out_dir)
    if not run_folder.is_dir():
        raise ValueError(f"RUN_FOLDER: expected a run folder, got {str(run_folder)!r} (not a directory)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"OUT_DIR: {str(out_dir)!r} exists and is not an empty folder; expected a new or empty "
                         "folder (nothing was written)")
    model, _ = load_run_model(run_folder)
    data = saved_data_section(run_folder)
    if data is None:  # without it the tokenizer the run was trained with is unknown: never export without one
        raise ValueError(f"RUN_FOLDER: no {SAVED_CONFIG} in {str(run_folder)!r} or the folders above it; expected "
                         f"the run folder seqarch wrote (its {SAVED_CONFIG} names the run's tokenizer); nothing "
                         "was written")
    tokenizer = None
    if data.get("task") == "text":
        name = data.get("tokenizer", "bytes")
        tokenizer = byte_tokenizer() if name == "bytes" else file_tokenizer(name, data.get("eod_token"), run_folder)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"data.tokenizer: {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}; expected the tokenizer the run was trained with")
        for config in (model.config, model.generation_config):
            config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    from .code import check_exportable

    check_exportable(model.seqarch_config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
