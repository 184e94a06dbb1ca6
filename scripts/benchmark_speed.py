"""Train-step and inference throughput and peak memory: HiMTM vs HF PatchTST at matched width, depth and look-back.

On CPU each (model, look-back) pair is timed in its own subprocess, and its peak memory is measured in another one:
the peak resident-set growth (`VmHWM` after a `/proc/self/clear_refs` reset) of the first training step (activations,
gradients and the AdamW state it creates) and of one inference pass over the memory held once the model and the batch
exist. That child runs with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB, so every tensor buffer is mapped on
allocation and returned on free: the resident set then follows the live tensors instead of the allocator's cache
(with the default dynamic threshold, freed buffers stay cached and the growth of later steps is mostly noise). On
CUDA the pairs run in one process and peak memory is `torch.cuda.max_memory_allocated` after a reset.

    python scripts/benchmark_speed.py                                 # CPU, look-backs 512..4096
    python scripts/benchmark_speed.py --device cuda --batch_size 64   # on a GPU
    python scripts/benchmark_speed.py --budget quick                  # CI smoke run

Writes `docs/results/speed/<device>-<timestamp>.json` and prints a ratio table.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from himtm_hf.training.arguments import COMPILE_MODES as TRAINING_COMPILE_MODES

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("himtm_prediction", "patchtst_prediction", "himtm_pretraining", "patchtst_pretraining")


@dataclass
class SpeedArguments:
    """Settings of the speed benchmark (`--name value` on the command line)."""

    budget: str = field(default="full", metadata={"help": "'quick' (CI smoke: L=128/256, 1 repeat) or 'full'."})
    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda'."})
    context_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    batch_size: int = 32
    num_input_channels: int = 7
    prediction_length: int = 96
    d_model: int = 128
    num_heads: int = 16
    ffn_dim: int = 256
    total_depth: int = field(default=3, metadata={"help": "PatchTST layers = sum of HiMTM's per-hierarchy blocks."})
    warmup: int = 2
    repeats: int = 5
    dtype: str = field(default="float32", metadata={"help": "'float32' or 'bfloat16' (autocast, CUDA)."})
    compile: str = field(default="none", metadata={"help": "'none', or a torch.compile mode applied to every model "
                                                           "alike: " + ", ".join(map(repr, TRAINING_COMPILE_MODES))
                                                           + " ('reduce-overhead' = CUDA graphs). Compilation happens "
                                                           "in the warm-up."})
    output_dir: str = str(ROOT / "docs" / "results" / "speed")
    in_process: bool = field(default=False, metadata={"help": "Measure every pair in this process (CPU peak memory "
                                                              "is then only indicative); always on for CUDA."})
    models: list[str] = field(default_factory=lambda: list(MODELS))


def build_model(name: str, args: SpeedArguments, context_length: int):
    """Matched models: same width, heads, FFN, total depth, look-back; each at its paper's patching."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction, PatchTSTForPretraining

    from himtm_hf import HiMTMForPrediction, HiMTMForPretraining
    from himtm_hf.benchmarks import speed_himtm_config

    if name.startswith("himtm"):
        config = speed_himtm_config(context_length, args.prediction_length, args.num_input_channels, args.d_model,
                                    args.num_heads, args.ffn_dim, args.total_depth)
        return (HiMTMForPrediction if name == "himtm_prediction" else HiMTMForPretraining)(config)
    common = dict(
        context_length=context_length, num_input_channels=args.num_input_channels, d_model=args.d_model,
        num_attention_heads=args.num_heads, ffn_dim=args.ffn_dim, num_hidden_layers=args.total_depth,
        scaling="std",
    )
    if name == "patchtst_prediction":  # PatchTST/64 supervised setting: patch 16, stride 8, flatten head
        config = PatchTSTConfig(patch_length=16, patch_stride=8, prediction_length=args.prediction_length,
                                pooling_type=None, **common)
        return PatchTSTForPrediction(config)
    config = PatchTSTConfig(patch_length=12, patch_stride=12, mask_type="random", random_mask_ratio=0.4,
                            do_mask_input=True, **common)  # self-supervised PatchTST setting
    return PatchTSTForPretraining(config)


def _peak_rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_steps(name: str, context_length: int, args: SpeedArguments):
    """The model of `name` on `args.device` with one batch, and its training step and inference pass (the same for
    the timing and the memory measurement). Returns `(model, train_step, infer_step)`."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(name, args, context_length).to(device)
    x = torch.randn(args.batch_size, context_length, args.num_input_channels, device=device)
    kwargs = {}
    if name.endswith("prediction"):
        kwargs["future_values"] = torch.randn(args.batch_size, args.prediction_length, args.num_input_channels,
                                              device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # Compiled or not, the timed call is the same module call; train and eval mode compile to separate graphs.
    forward = model if args.compile == "none" else torch.compile(model, mode=args.compile)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def train_step():
        model.train()
        with autocast:
            loss = forward(past_values=x, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step():
        model.eval()
        with torch.no_grad(), autocast:
            forward(past_values=x)

    return model, train_step, infer_step


def measure_one(name: str, context_length: int, args: SpeedArguments) -> dict:
    """Runs in a child process: times `repeats` train steps and inference passes, records peak memory."""
    import torch

    device = torch.device(args.device)
    model, train_step, infer_step = build_steps(name, context_length, args)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for phase, step in (("train", train_step), ("inference", infer_step)):
        for _ in range(args.warmup):
            step()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        baseline = _rss_mb()
        _peak_rss_reset()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        peak = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else _peak_rss_mb() - baseline
        results[phase] = {"median_s": median, "windows_per_s": args.batch_size / median, "peak_memory_mb": peak,
                          "times_s": times}
    results["num_parameters"] = sum(p.numel() for p in model.parameters())
    return results


# Child environment of the CPU memory measurement (see the module docstring).
MEMORY_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure_memory_cpu(name: str, context_length: int, args: SpeedArguments) -> dict:
    """Runs in a child process started with `MEMORY_CHILD_ENV`: peak RSS growth (MB) of one training step and of
    one inference pass."""
    import gc

    _, train_step, infer_step = build_steps(name, context_length, args)
    if args.compile != "none":  # measure a step, not the compiler: compile first (the AdamW state then exists too)
        train_step()
        infer_step()

    def growth(step) -> float:
        gc.collect()
        baseline = _rss_mb()
        _peak_rss_reset()
        step()
        return _peak_rss_mb() - baseline

    return {"train": growth(train_step), "inference": growth(infer_step)}


def _run_child(flag: str, name: str, context_length: int, args: SpeedArguments, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, flag, json.dumps({"name": name, "L": context_length, "args": asdict(args)})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{name} at L={context_length} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


# "none" (eager) plus the torch.compile modes the training scripts accept (`--torch_compile_mode`).
COMPILE_MODES = ("none", *TRAINING_COMPILE_MODES)


def check_arguments(args: SpeedArguments) -> None:
    """Fails early, naming the bad value and the allowed ones."""
    if args.compile not in COMPILE_MODES:
        raise ValueError(f"--compile {args.compile!r} is not a torch.compile mode this benchmark knows; use one of "
                         f"{', '.join(COMPILE_MODES)}.")
    if args.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {args.dtype!r} is not supported; use 'float32' or 'bfloat16'.")
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device!r} is not supported; use 'cpu' or 'cuda'.")


def main(args: SpeedArguments) -> dict:
    check_arguments(args)
    if args.budget == "quick":
        args.context_lengths = [128, 256]
        args.batch_size = min(args.batch_size, 4)
        args.d_model, args.num_heads, args.ffn_dim = 32, 4, 64
        args.warmup, args.repeats = 1, 1
        args.in_process = True
    rows = []
    for context_length in args.context_lengths:
        for name in args.models:
            if args.device == "cuda" or args.in_process:
                # CUDA peak memory is per pair via reset_peak_memory_stats: no subprocess (and its start-up) needed.
                record = measure_one(name, context_length, args)
                import torch

                torch.cuda.empty_cache()
            else:
                record = _run_child("--_child", name, context_length, args)
                memory = _run_child("--_memory_child", name, context_length, args, MEMORY_CHILD_ENV)
                for phase in ("train", "inference"):
                    record[phase]["peak_memory_mb"] = memory[phase]
                record["memory_method"] = ("rss_growth_first_step_fixed_mmap_threshold" if args.compile == "none"
                                           else "rss_growth_step_after_compile_fixed_mmap_threshold")
            rows.append({"model": name, "context_length": context_length, **record})
            print(f"{name:22s} L={context_length:5d} train {record['train']['windows_per_s']:9.1f} win/s  "
                  f"infer {record['inference']['windows_per_s']:9.1f} win/s  "
                  f"peak train {record['train']['peak_memory_mb']:8.1f} MB", flush=True)
    summary = summarise(rows, args)
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, git_commit, portable_path

    # The record names its folder relative to the checkout (or by its name alone), never by this machine's path.
    arguments = {**asdict(args), "output_dir": portable_path(args.output_dir, ROOT)}
    out = {
        "benchmark": "speed", "budget": args.budget, "himtm_defaults": HIMTM_DEFAULTS_VERSION, "device": args.device, "device_name": _device_name(args.device),
        "torch_threads": _torch_threads(), "git_commit": git_commit(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "arguments": arguments,
        "rows": rows, "summary": summary, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    compiled = "" if args.compile == "none" else f"-compile_{args.compile}"
    path = Path(args.output_dir) / f"{args.device}-{args.budget}{compiled}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(format_summary(summary))
    print(f"wrote {path}")
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def summarise(rows: list[dict], args: SpeedArguments) -> dict:
    """HiMTM / PatchTST ratios per look-back and the growth of cost from the shortest to the longest look-back."""
    by = {(r["model"], r["context_length"]): r for r in rows}
    ratios = []
    for L in args.context_lengths:
        for kind in ("prediction", "pretraining"):
            h, p = by.get((f"himtm_{kind}", L)), by.get((f"patchtst_{kind}", L))
            if h and p:
                ratios.append({
                    "kind": kind, "context_length": L,
                    "train_throughput_ratio": h["train"]["windows_per_s"] / p["train"]["windows_per_s"],
                    "inference_throughput_ratio": h["inference"]["windows_per_s"] / p["inference"]["windows_per_s"],
                    "train_peak_memory_ratio": h["train"]["peak_memory_mb"] / max(p["train"]["peak_memory_mb"], 1e-9),
                })
    growth = {}
    lo, hi = min(args.context_lengths), max(args.context_lengths)
    for model in args.models:
        if (model, lo) in by and (model, hi) in by:
            t_lo, t_hi = by[(model, lo)]["train"]["median_s"], by[(model, hi)]["train"]["median_s"]
            growth[model] = {"train_time_growth": t_hi / t_lo, "linear_growth": hi / lo,
                             "growth_over_linear": (t_hi / t_lo) / (hi / lo)}
    return {"ratios": ratios, "cost_growth": growth}


def format_summary(summary: dict) -> str:
    lines = ["", "| kind | L | train throughput HiMTM/PatchTST | inference throughput | train peak memory |",
             "|---|---|---|---|---|"]
    for r in summary["ratios"]:
        lines.append(f"| {r['kind']} | {r['context_length']} | {r['train_throughput_ratio']:.2f}x | "
                     f"{r['inference_throughput_ratio']:.2f}x | {r['train_peak_memory_ratio']:.2f}x |")
    lines += ["", "| model | train time growth (longest/shortest L) | / linear |", "|---|---|---|"]
    for model, g in summary["cost_growth"].items():
        lines.append(f"| {model} | {g['train_time_growth']:.2f}x | {g['growth_over_linear']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--_child", "--_memory_child"):
        spec = json.loads(sys.argv[2])
        measure = measure_one if sys.argv[1] == "--_child" else measure_memory_cpu
        print(json.dumps(measure(spec["name"], spec["L"], SpeedArguments(**spec["args"]))))
    else:
        from transformers import HfArgumentParser

        (parsed,) = HfArgumentParser(SpeedArguments).parse_args_into_dataclasses()
        main(parsed)
