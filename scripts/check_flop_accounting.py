"""The analytic FLOPs of a shipped experiment's training step against the same step, counted.

For each architecture of an experiment (``experiments/<name>.yaml``) at its matched size, one
real forward + backward at the experiment's batch and length is counted by
:mod:`seqarch.flop_count` (matrix products, convolutions and FFTs; elementwise work is counted by
neither side) and compared with :func:`seqarch.flops.step_flops`::

    nice python scripts/check_flop_accounting.py mqar lm_small     # 1 thread, a few seconds each

Prints one line per architecture: counted, analytic and their ratio, and the share of the step
that is once-per-step work (kernel generation, filter MLPs and FFTs).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=["mqar", "lm_small"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from seqarch.data import build_data
    from seqarch.flop_count import counted_training_step
    from seqarch.flops import step_flops
    from seqarch.models import LanguageModel
    from seqarch.training.compare import plan_comparison
    from seqarch.training.config import load_config

    torch.set_num_threads(args.threads)
    for name in args.experiments:
        config = load_config(name, command="compare")
        bundle = build_data(config.data.spec(), seed=config.train.seed)
        batch, length = config.train.batch_size, bundle.seq_len
        print(f"{name}: batch {batch}, length {length}, attention {config.budget.attention_flops}")
        for arch, model_config, _ in plan_comparison(config, bundle):
            torch.manual_seed(0)
            model = LanguageModel(model_config)
            tokens = torch.randint(0, model_config.vocab_size, (batch, length))
            counted = sum(counted_training_step(model, tokens).values())
            flops = step_flops(model, batch, length, config.budget.attention_flops)
            by_kind = flops.training_by_kind()
            analytic = sum(by_kind.get(kind, 0) for kind in ("matmul", "conv", "fft"))
            shared = sum(flops.shared.values()) / flops.forward
            print(f"  {arch:12s} d_model {model_config.d_model:4d}  counted {counted:.4g}  analytic {analytic:.4g}  "
                  f"analytic/counted {analytic / counted:.3f}  once-per-step share of the forward {shared:.1%}")


if __name__ == "__main__":
    main()
