"""Decoding benchmark: tokens per second of ``LanguageModel.generate`` for every causal mixer.

    python scripts/bench_generate.py                          # d 256, 4 layers, prompt 128, 256 new, B 1 and 8
    python scripts/bench_generate.py --mixers attention s4d --batches 1 --new-tokens 64

Each model (``d_model`` wide, ``n_layers`` blocks, SwiGLU channel mixer, float32) reads a
random prompt and greedily generates ``--new-tokens`` tokens.  Beside seqarch's attention
runs a plain hand-written KV-cache decoder with the same weights (preallocated caches,
rotary tables made once, SDPA), the baseline that attention's recurrent path is held to.
Flatness: the median time of a decoding step over the last 32 positions against the
first 32 (1.0: a step costs the same late as early).  All in one process, so the ratios
are side by side; each ratio to attention is also paired: in every round each model's
generate runs between two of attention's, and the ratio is the median over the rounds of
this model's time against the mean of its two neighbours (a machine whose speed drifts
from one second to the next, as shared ones do, then moves both sides of each ratio).
``--compile`` times ``generate(compile_step=True)`` the same way, against compiled attention.
``--cuda-graph`` (a CUDA device) times ``generate(cuda_graph=True)`` of every model whose layers' steps
can be replayed by a CUDA graph, each run paired with an eager run of the same model.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import benchlib
import torch
import torch.nn.functional as F

VOCAB = 256
WINDOW = 32  # steps at each end of the decode for the flatness ratio


def build(name: str, args: argparse.Namespace, device: torch.device):
    """The model of ``name`` at ``--width`` and ``--layers``; with ``--match-params``, resized in width by the
    budget solver to the attention model's parameter count (as the comparisons size their models)."""
    from seqarch.budget import count_params, match_budget
    from seqarch.models import LanguageModel, ModelConfig

    total = args.prompt + args.new_tokens

    def config_of(mixer: str) -> ModelConfig:
        options = {}
        if mixer == "mamba2":  # heads of 64 channels where they divide d_inner = 2 width
            options["head_dim"] = math.gcd(64, 2 * args.width)
        return ModelConfig(vocab_size=VOCAB, d_model=args.width, n_layers=args.layers, mixer=mixer,
                           mixer_options=options, max_length=total)

    config = config_of(name)
    if args.match_params and name != "attention":
        config = match_budget(config, params=count_params(config_of("attention")), tolerance=0.03).config
    torch.manual_seed(0)
    return LanguageModel(config, device=device).eval()


class PlainDecoder:
    """A textbook KV-cache decoder over a seqarch attention model's weights (the baseline)."""

    def __init__(self, model, batch: int, total: int) -> None:
        self.model, self.blocks = model, model.backbone.blocks
        attn = self.blocks[0].mixer
        self.heads, self.kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        weight = model.head.weight
        half = self.head_dim // 2
        inv_freq = attn.rotary.base ** (-torch.arange(half, dtype=torch.float64) / half)
        theta = torch.arange(total, dtype=torch.float64)[:, None] * inv_freq
        self.cos, self.sin = theta.cos().to(weight), theta.sin().to(weight)
        shape = (batch, self.kv_heads, total, self.head_dim)
        self.caches = [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in self.blocks]
        self.length = 0

    def _rotate(self, x, cos, sin):
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)

    def forward(self, tokens):
        batch, new = tokens.shape
        start, self.length = self.length, self.length + new
        cos, sin = self.cos[start:self.length], self.sin[start:self.length]
        x = self.model.backbone.embedding(tokens)
        for block, (cache_k, cache_v) in zip(self.blocks, self.caches):
            attn = block.mixer
            q, k, v = attn.qkv(block.mixer_norm(x)).split(
                [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], -1)
            q = self._rotate(q.view(batch, new, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rotate(k.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            cache_k[:, :, start:self.length] = k
            cache_v[:, :, start:self.length] = v.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, cache_k[:, :, :self.length], cache_v[:, :, :self.length],
                                               is_causal=new > 1)  # a prompt from position 0, or one token
            x = x + attn.out(y.transpose(1, 2).reshape(batch, new, -1))
            x = x + block.channel(block.channel_norm(x))
        return self.model.head(self.model.backbone.norm(x[:, -1]))

    def generate(self, prompt, new_tokens):
        tokens = [prompt]
        token = self.forward(prompt).argmax(-1)
        for i in range(new_tokens):
            tokens.append(token[:, None])
            if i + 1 < new_tokens:
                token = self.forward(token[:, None]).argmax(-1)
        return torch.cat(tokens, 1)


def step_times(model, prompt, new_tokens, device) -> list[float]:
    """Seconds of each decoding step (the loop of ``generate``, timed step by step)."""
    backbone = model.backbone
    states = backbone.init_state(prompt.shape[0], max_length=prompt.shape[1] + new_tokens)
    features, states = backbone.prefill(prompt, states)
    token = model.head(features[:, -1]).argmax(-1)
    times = []
    for _ in range(new_tokens - 1):
        benchlib.synchronize(device)
        start = time.perf_counter()
        features, states = backbone.step(token, states)
        token = model.head(features).argmax(-1)
        benchlib.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class Contender:
    """One model of the comparison: a callable that generates, and what to report about it."""

    def __init__(self, name: str, args: argparse.Namespace, prompt: torch.Tensor, device: torch.device) -> None:
        self.name, self.prompt, self.new_tokens = name, prompt, args.new_tokens
        self.model = build("attention" if name == "plain_kv_loop" else name, args, device)
        self.total = args.prompt + args.new_tokens
        # generate's options per mode: eager, the compiled step, the CUDA graph
        self.options = {"eager": {}, "compiled": {"compile_step": args.compile_backend}, "graph": {"cuda_graph": True}}
        self.run()  # warm-up: caches, allocator
        self.best = dict.fromkeys(self.options, math.inf)  # seconds of the fastest generate per mode
        self.paired: list[float] = []  # per round: tokens/s against the attention runs either side
        self.compiled_paired: list[float] = []  # the same for the compiled step
        self.graph_speedup: list[float] = []  # per round: the CUDA graph's tokens/s over eager's

    def run(self, mode: str = "eager") -> torch.Tensor:
        """One generate call in ``mode`` (the plain loop: its own decoder)."""
        if self.name == "plain_kv_loop":
            return PlainDecoder(self.model, self.prompt.shape[0], self.total).generate(self.prompt, self.new_tokens)
        return self.model.generate(self.prompt, self.new_tokens, temperature=0, **self.options[mode])

    def time_once(self, device: torch.device, keep: bool = True, mode: str = "eager") -> float:
        """Seconds of one generate call in ``mode``; ``keep``: a candidate for the best time (one per round,
        so a model timed more often, attention between the others, gets no more chances at a fast one)."""
        benchlib.synchronize(device)
        start = time.perf_counter()
        self.run(mode)
        benchlib.synchronize(device)
        seconds = time.perf_counter() - start
        if keep:
            self.best[mode] = min(self.best[mode], seconds)
        return seconds

    def report(self, args: argparse.Namespace, device: torch.device) -> dict:
        batch = self.prompt.shape[0]
        mixer = self.model.backbone.blocks[0].mixer
        result = {"tokens_per_s": batch * self.new_tokens / self.best["eager"], "params": self.model.num_params(),
                  "paired_over_attention": statistics.median(self.paired) if self.paired else 1.0,
                  "paired_range": [min(self.paired), max(self.paired)] if self.paired else [1.0, 1.0],
                  "d_model": self.model.config.d_model,
                  "state_per_layer": mixer.state_size(self.prompt.shape[1] + self.new_tokens)}
        if self.name == "plain_kv_loop":
            result["same_tokens"] = torch.equal(self.run(), self.model.generate(self.prompt, self.new_tokens,
                                                                                temperature=0))
            return result
        steps = step_times(self.model, self.prompt, self.new_tokens, device)
        result["late_over_early_step"] = statistics.median(steps[-WINDOW:]) / statistics.median(steps[:WINDOW])
        result["fixed_state"] = type(mixer).has_fixed_size_state
        if self.best["compiled"] < math.inf:
            result["compiled_tokens_per_s"] = batch * self.new_tokens / self.best["compiled"]
            if self.compiled_paired:
                result["compiled_paired_over_attention"] = statistics.median(self.compiled_paired)
                result["compiled_paired_range"] = [min(self.compiled_paired), max(self.compiled_paired)]
        if self.graph_speedup:
            result["graph_tokens_per_s"] = batch * self.new_tokens / self.best["graph"]
            result["graph_over_eager"] = statistics.median(self.graph_speedup)
            result["graph_over_eager_range"] = [min(self.graph_speedup), max(self.graph_speedup)]
        return result


def time_graph(contenders: list[Contender], rounds: int, device: torch.device) -> None:
    """``generate(cuda_graph=True)`` of each model whose layers' steps can be replayed by a CUDA graph: one
    warm-up run (it captures the graph the later runs replay), then ``rounds`` runs, each after an eager
    run of the same model (its speed-up over eager: the median of the rounds)."""
    from seqarch.models.graph_step import layers_without_graph_step

    for contender in contenders:
        if contender.name == "plain_kv_loop" or layers_without_graph_step(contender.model):
            continue
        contender.run("graph")
        for _ in range(rounds):
            eager = contender.time_once(device, keep=False)
            contender.graph_speedup.append(eager / contender.time_once(device, mode="graph"))


def time_compiled(contenders: list[Contender], attention: Contender, rounds: int, device: torch.device) -> None:
    """The compiled step, paired as the eager rounds are: for each model, a Dynamo reset (the earlier
    models' graphs freed), attention's and its compiled generate warmed up (compiled), then ``rounds``
    runs of it, each between two of attention's.  Attention's best time: the first run of each pair."""
    for contender in contenders or [attention]:
        torch._dynamo.reset()
        attention.run("compiled")
        if contender is attention:  # attention alone
            for _ in range(rounds):
                attention.time_once(device, mode="compiled")
            continue
        contender.run("compiled")
        before = attention.time_once(device, mode="compiled")
        for _ in range(rounds):
            seconds = contender.time_once(device, mode="compiled")
            after = attention.time_once(device, keep=False, mode="compiled")
            contender.compiled_paired.append((before + after) / 2 / seconds)
            before = after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=None, help="mixer names (default: every causal mixer)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=benchlib.positive_int, default=3,
                        help="rounds of one timed generate per model, interleaved; the best of each is kept")
    parser.add_argument("--compile", nargs="*", default=None,
                        help="mixers also timed with generate(compile_step=True) (inductor), attention always "
                             "among them; no names: every one")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled step (default inductor)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time generate(cuda_graph=True) where the layers allow it (a CUDA device)")
    parser.add_argument("--match-params", action="store_true",
                        help="resize every model in width to the attention model's parameter count")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: a decoding step at these sizes is latency-bound)")
    benchlib.add_device_and_out(parser)
    args = parser.parse_args()
    args.out = args.out or benchlib.default_out(args.device)
    if args.cuda_graph and not str(args.device).startswith("cuda"):
        parser.error(f"--cuda-graph: expected --device cuda (CUDA graphs need a GPU), got --device {args.device}")

    import seqarch

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    names = args.mixers or sorted(seqarch.MIXERS)
    if "attention" not in names:
        names = ["attention", *names]
    results: dict[str, dict] = {}
    with torch.no_grad():
        for batch in args.batches:
            prompt = torch.randint(0, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(0))
            prompt = prompt.to(device)
            contenders = [Contender(name, args, prompt, device) for name in ["plain_kv_loop", *names]]
            attention = next(c for c in contenders if c.name == "attention")
            # Rounds over every model in turn, the best time of each kept, each model between two attention
            # runs: on a shared machine a busy spell then slows both sides of a ratio.
            for _ in range(args.rounds):
                before = attention.time_once(device)
                for contender in contenders:
                    if contender is not attention:
                        seconds = contender.time_once(device)
                        after = attention.time_once(device, keep=False)
                        contender.paired.append((before + after) / 2 / seconds)
                        before = after
            if args.compile is not None:
                time_compiled([c for c in contenders if c.name not in ("plain_kv_loop", "attention")
                               and (not args.compile or c.name in args.compile)], attention, args.rounds, device)
            if args.cuda_graph:
                time_graph(contenders, args.rounds, device)
            row = {c.name: c.report(args, device) for c in contenders}
            for name, result in row.items():
                sys.stderr.write(f"B={batch} {name}: {result}\n")
            results[str(batch)] = row

    lines = []
    for batch, row in results.items():
        attention, plain = row["attention"]["tokens_per_s"], row["plain_kv_loop"]
        table = []
        for name in ["plain_kv_loop", *names]:
            r = row[name]
            late, fixed, compiled, compiled_paired, graph = (r.get(key) for key in (
                "late_over_early_step", "fixed_state", "compiled_tokens_per_s", "compiled_paired_over_attention",
                "graph_tokens_per_s"))
            low, high = r["paired_range"]
            table.append(["plain KV-cache loop" if name == "plain_kv_loop" else name, f"{r['tokens_per_s']:.1f}",
                          f"{r['tokens_per_s'] / attention:.2f}",
                          "-" if name == "attention" else f"{r['paired_over_attention']:.2f} ({low:.2f}-{high:.2f})",
                          "-" if late is None else f"{late:.2f}", "-" if fixed is None else "yes" if fixed else "no",
                          r["d_model"], f"{r['params'] / 1e6:.2f}", f"{r['state_per_layer']:,}",
                          "-" if compiled is None else f"{compiled:.1f}",
                          "-" if compiled_paired is None else
                          "{:.2f} ({:.2f}-{:.2f})".format(compiled_paired, *r["compiled_paired_range"])]
                         + ([] if not args.cuda_graph else ["-", "-"] if graph is None else [
                             f"{graph:.1f}", "{:.2f} ({:.2f}-{:.2f})".format(r["graph_over_eager"],
                                                                             *r["graph_over_eager_range"])]))
        lines.append(f"## batch {batch}\n\nPlain loop and seqarch attention give the same tokens: "
                     f"{plain['same_tokens']}. seqarch attention takes {plain['paired_over_attention']:.3f}x the "
                     f"plain loop's time, paired (median of {args.rounds} rounds; range "
                     f"{plain['paired_range'][0]:.3f}-{plain['paired_range'][1]:.3f}).\n\n"
                     + benchlib.markdown_table(
                         ["model", "tokens/s", "this / attention (best of rounds)", "this / attention (paired, range)",
                          "late / early step", "fixed state", "d_model", "params (M)", "state / layer",
                          "compiled tokens/s", "compiled / compiled attention (paired, range)"]
                         + (["CUDA graph tokens/s", "CUDA graph / eager (paired, range)"] if args.cuda_graph else []),
                         table))
    text = (f"# Generation: tokens/s of LanguageModel.generate\n\nDevice: {benchlib.device_name(device)}; "
            f"d_model {args.width}, {args.layers} layers, prompt {args.prompt}, {args.new_tokens} new tokens, "
            f"greedy, float32, {torch.get_num_threads()} thread(s)"
            f"{'; every model resized in width to the attention model parameters' if args.match_params else ''}. "
            f"Command: `{benchlib.command_line()}`. "
            f"Tokens/s = batch * new tokens / seconds of one generate call (prompt included; the best of "
            f"{args.rounds} rounds that time every model in turn, after a warm-up). 'paired': in each round "
            f"every model runs between two attention runs; the median over the rounds of its tokens/s over "
            f"theirs, with the range of the rounds. 'late / early step': "
            f"median step time over the last {WINDOW} positions over the first {WINDOW}; 'state / layer': "
            f"numbers one layer's recurrent state holds after the last token (a step reads them and every "
            f"parameter); 'compiled': generate(compile_step={args.compile_backend!r}), after a compiling run, "
            f"each model's {args.rounds} runs between compiled attention runs; "
            + ("'CUDA graph': generate(cuda_graph=True) where every layer has a graph step, each run "
               "after an eager run of the same model (that run's time over its own); " if args.cuda_graph else "")
            + f"load average "
            f"{os.getloadavg()[0]:.1f} at the end.\n\n" + "\n\n".join(lines) + "\n")
    payload = {"device": benchlib.device_name(device), "environment": benchlib.environment(),
               "args": {**vars(args), "out": str(args.out)}, "results": results}
    json_path, md_path = benchlib.write_report(args.out, "bench_generate", payload, text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
