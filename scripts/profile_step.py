#!/usr/bin/env python
"""Where the time of one HiMTM training step goes: a `torch.profiler` table of the top operators.

Used to explain the speed benchmark (docs/findings.md), e.g. which share of a step is attention at L = 4096:

    python scripts/profile_step.py --context_length 4096 --batch_size 8 --threads 1
    python scripts/profile_step.py --model pretraining --context_length 512

Prints the operator table sorted by self CPU (or CUDA) time and the share of attention in the step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf import HiMTMForPrediction, HiMTMForPretraining  # noqa: E402
from himtm_hf.benchmarks import speed_himtm_config  # noqa: E402


@dataclass
class ProfileArguments:
    """Settings of the profile (`--name value`); the model is the one `scripts/benchmark_speed.py` measures."""

    model: str = field(default="prediction", metadata={"help": "'prediction' or 'pretraining'."})
    context_length: int = 4096
    prediction_length: int = 96
    num_input_channels: int = 7
    batch_size: int = 8
    d_model: int = 128
    num_heads: int = 16
    ffn_dim: int = 256
    total_depth: int = 3
    use_csa: bool = True
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)."})
    device: str = "cpu"
    rows: int = 15


def profile_step(args: ProfileArguments) -> tuple[str, float]:
    """Profiles one forward + backward after a warm-up step; returns the table and attention's share of the time."""
    if args.model not in ("prediction", "pretraining"):
        raise ValueError(f"--model must be 'prediction' or 'pretraining', got {args.model!r}.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = speed_himtm_config(args.context_length, args.prediction_length, args.num_input_channels, args.d_model,
                                args.num_heads, args.ffn_dim, args.total_depth, use_csa=args.use_csa)
    model = (HiMTMForPrediction if args.model == "prediction" else HiMTMForPretraining)(config).to(args.device)
    past = torch.randn(args.batch_size, args.context_length, args.num_input_channels, device=args.device)
    future = torch.randn(args.batch_size, args.prediction_length, args.num_input_channels, device=args.device)
    inputs = {"past_values": past} | ({"future_values": future} if args.model == "prediction" else {})

    model(**inputs).loss.backward()  # warm-up: allocator, kernel selection
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        model(**inputs).loss.backward()
    averages = prof.key_averages()
    use_cuda = args.device.startswith("cuda")
    sort_key = "self_cuda_time_total" if use_cuda else "self_cpu_time_total"

    def self_time(event) -> float:
        return float(event.self_device_time_total if use_cuda else event.self_cpu_time_total)

    total = sum(self_time(e) for e in averages) or 1.0
    attention = sum(self_time(e) for e in averages if "scaled_dot_product" in e.key or "attention" in e.key.lower())
    return averages.table(sort_by=sort_key, row_limit=args.rows), attention / total


def main(args: ProfileArguments) -> None:
    table, share = profile_step(args)
    print(table)
    print(f"attention (scaled_dot_product_attention, forward + backward): {100 * share:.1f}% of the step's "
          f"operator time (L={args.context_length}, batch {args.batch_size}, model {args.model}, "
          f"threads {torch.get_num_threads()}).")


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(ProfileArguments).parse_args_into_dataclasses()
    main(parsed)
