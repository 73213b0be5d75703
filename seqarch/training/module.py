"""The LightningModule that trains any seqarch model on any seqarch data kind.

Metrics: ``train/loss``, ``val/loss``, ``val/accuracy`` (answer positions for the
synthetic tasks, every next token for text, the label for classification), the same on
examples the run trained on (``train_eval/*``, beside each validation, to show memorisation)
and on the held-out test split once training ends (``test/*``; ``test@<length>/*`` on the test sets at
other sequence lengths, ``data.test_lengths``),
``val/ppl`` for text, ``train/tokens_per_s`` and, on GPUs with a known peak,
``train/mfu`` (model FLOPs utilisation, PaLM appendix B: achieved training FLOP/s
over the device's peak).
"""

from __future__ import annotations

import math
import random
import time

import lightning as L
import numpy as np
import torch

from .. import LanguageModel, ModelConfig, SequenceClassifier
from ..devices import peak_flops
from ..flops import step_flops
from ..models import SequenceAutoencoder
from .config import TrainSection
from .errors import NonFiniteLossError
from .optim import build_optimizer


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA ``device`` (:mod:`seqarch.devices`); ``None`` elsewhere: no MFU."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), "bf16")


def run_fingerprint(model_config: ModelConfig, kind: str, train: TrainSection, lr: float, seq_len: int) -> dict:
    """What makes a run the run it is, as plain data: the model, the data kind and length, the recipe."""
    return {"model_config": model_config.to_dict(), "kind": kind, "train": train.model_dump(mode="json"),
            "lr": lr, "seq_len": seq_len}


class SeqarchModule(L.LightningModule):
    """Trains a :class:`LanguageModel` (``kind="lm"``), :class:`SequenceClassifier` (``"classification"``)
    or :class:`SequenceAutoencoder` (``"autoencoder"``).

    The loss is the model's own (:meth:`LanguageModel.loss_from_logits`), so this module and a
    researcher's own training loop optimise the same thing.

    Args:
        model_config: the model.
        kind: the data kind of :class:`seqarch.data.DataBundle`.
        train: the run's ``train`` section (optimiser recipe).
        lr: this run's peak learning rate (one point of a sweep).
        seq_len: training sequence length (for FLOPs per token).
        attention_flops: attention's FLOP convention, ``"causal"`` or ``"dense"`` (:mod:`seqarch.flops`).

    ``step_flops``: the FLOPs of a ``(train.batch_size, seq_len)`` step, the once-per-step work
    counted once (each extra device repeats it; that repeat is not model work).
    """

    def __init__(self, model_config: ModelConfig, kind: str, train: TrainSection, lr: float, seq_len: int,
                 attention_flops: str = "causal") -> None:
        super().__init__()
        # Checkpoints carry the model and recipe as plain data, readable without seqarch's classes;
        # a resume compares them with its own (run_folder.check_fingerprint).
        self.save_hyperparameters(run_fingerprint(model_config, kind, train, lr, seq_len))
        self.config = model_config
        self.kind = kind
        self.train_options = train
        self.lr = lr
        model_class = {"classification": SequenceClassifier, "autoencoder": SequenceAutoencoder}
        self.model = model_class.get(kind, LanguageModel)(self.config)
        # FLOPs of a (batch, length) step: per-sequence work x batch + once-per-step work (seqarch.flops)
        self.attention_flops = attention_flops
        self.step_flops = step_flops(self.model, train.batch_size, seq_len, attention_flops)
        self.flops_per_token = self.step_flops.forward_per_token
        self._training_flops: dict[tuple[int, int], float] = {}  # by this rank's (rows, length), for MFU
        self._tick: float | None = None
        self._val_totals: dict[int, list[torch.Tensor]] = {}

    def forward(self, batch):
        if self.kind == "classification":
            tokens, _, mask = batch
            return self.model(tokens, mask)
        return self.model(batch[0])

    def _loss_and_counts(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean loss, number of scored positions and number answered correctly."""
        logits, targets = self(batch), batch[1]
        loss = self.model.loss_from_logits(logits, targets)
        scored = self.model.scored(targets)
        correct = ((logits.argmax(-1) == targets) & scored).sum()
        return loss, scored.sum(), correct

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._loss_and_counts(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.global_step}; stopping. Checkpoints written "
                "before this step are kept; lower train.lr or set train.grad_clip"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # A finite loss can still give an infinite gradient; the step it would poison the weights is this one.
        # (16-bit mixed precision is the exception: its grad scaler skips steps with infinite gradients.)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if (self.trainer.precision != "16-mixed" and grads
                and not torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            bad = [n for n, p in self.model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise NonFiniteLossError(
                f"gradients of {len(bad)} weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) are NaN "
                f"or infinite at step {self.global_step}; stopping before that update. Checkpoints written before "
                "this step are kept; lower train.lr or set train.grad_clip"
            )

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._tick is None:
            self._tick = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        elapsed, self._tick = now - self._tick, now
        tokens = batch[0].numel() * self.trainer.world_size
        tokens_per_s = tokens / max(elapsed, 1e-9)
        self.log("train/tokens_per_s", tokens_per_s, prog_bar=True, on_step=True, on_epoch=False)
        peak = device_peak_flops(self.device)
        if peak is not None:  # this rank's step: its own rows, the shared work once
            shape = (batch[0].shape[0], batch[0].shape[-1])
            if shape not in self._training_flops:
                self._training_flops[shape] = step_flops(self.model, *shape, self.attention_flops).training
            step = self._training_flops[shape]
            self.log("train/mfu", step / max(elapsed, 1e-9) / peak, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self._val_totals = {}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        # Loader 0 is the validation split; loader 1 (where there is one) examples the run trained on.
        loss, scored, correct = self._loss_and_counts(batch)
        totals = torch.stack([loss.detach() * scored, scored.float(), correct.float()])
        self._val_totals.setdefault(dataloader_idx, []).append(totals)

    def _log_totals(self, prefix: str, totals: list[torch.Tensor]) -> None:
        """``<prefix>/loss``, ``<prefix>/accuracy`` (and ``/ppl`` for text) over the whole split, all ranks."""
        summed = self.trainer.strategy.reduce(torch.stack(totals).sum(0), reduce_op="sum")
        loss_sum, scored, correct = summed.tolist()
        loss = loss_sum / max(scored, 1.0)
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", sync_dist=False, rank_zero_only=False,
                 add_dataloader_idx=False)
        self.log(f"{prefix}/accuracy", correct / max(scored, 1.0), prog_bar=prefix == "val", rank_zero_only=False,
                 add_dataloader_idx=False)
        if self.kind == "lm":
            self.log(f"{prefix}/ppl", math.exp(min(loss, 50.0)), rank_zero_only=False, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for index, prefix in ((0, "val"), (1, "train_eval")):
            if self._val_totals.get(index):
                self._log_totals(prefix, self._val_totals[index])
        # The first training batch after validation would otherwise count validation time.
        self._tick = None

    def on_test_epoch_start(self) -> None:
        self._val_totals = {}

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        # Loader 0 is the test split; the others (where the data has them) the test sets at other lengths.
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        test_splits = getattr(self.trainer.datamodule, "test_splits", lambda: ["test"])()
        for index, prefix in enumerate(test_splits):
            if self._val_totals.get(index):
                self._log_totals(prefix, self._val_totals[index])

    def configure_optimizers(self):
        optimizer, schedule = build_optimizer(self.model, self.train_options, self.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # Resume must continue the random streams too (dropout, sampling), not only the weights. The states
    # are stored as tensors and plain lists so the checkpoint loads with torch.load(weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            set_rng_states(states)


def rng_states() -> dict:
    """The torch, numpy, Python and CUDA random states as tensors, numbers, strings and lists."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
        "python": [version, list(python_state), gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
