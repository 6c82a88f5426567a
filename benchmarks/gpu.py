"""The GPU check: Geo-Sign's paper-shape step and forward latency in bf16, sampling at 256 frames,
and a few steps of each training set-up the paper uses, on one CUDA GPU.

    python benchmarks/gpu.py [--quick] [--out DIR] [--budget-s 420]

Needs nothing but this repository: every model has random weights (no download), the only data
is random batches of the experiment YAMLs' shapes. On a machine without CUDA it prints why and
exits 0 without measuring (``--device cpu`` runs the ``--quick`` shapes on the CPU, for the tests).

1. Geo-Sign at the paper's shapes (``experiments/geosign_{pooled,token}.yaml`` via
   ``hyperbolic_overhead.yaml_config("paper")``: batch 8, ``max_len`` 256 frames,
   ``max_target_len`` 64 text tokens, ST-GCN widths 64-256, hyp_dim 256) with a random
   mT5-base (``MT5_BASE``: 12+12 layers, d_model 768, the 250,112-token vocabulary), for the
   baseline (branch off), pooled and token:
   - forward latency: the training forward (encoder, mT5 with teacher forcing, branch, α blend)
     under bf16 autocast, median of ``REPEATS`` after ``WARMUP`` (the paper's Table 1: batch 8
     forward 415.73 / 1630 / 2550 ms on its GPU);
   - training step: fit steps through a Lightning Trainer with ``precision="bf16-mixed"`` (the
     YAMLs' precision), as ``lightning fit`` runs them (gradient clipping, AdamW + Riemannian Adam).
2. ``compile_hyperbolic: true``: the same step, pooled and token (first fit = compile, apart).
3. DeepSpeed ZeRO-2 on one GPU (``experiments/strategies/deepspeed_zero2.yaml``'s strategy), bf16,
   token: a few steps; skipped with a message when deepspeed is not installed, and a failure is
   recorded with its message, not hidden.
4. Sampling at 256 frames, batch 1 and 8: 10-step PoseVQ-Diffusion against PoseVQ-AR with its KV
   cache, built as ``benchmarks/sampling.py`` builds them (demo YAMLs, random weights).

Everything is timed with ``torch.cuda.synchronize``; items still to run when ``--budget-s`` (default
420 s, so the script ends inside 8 minutes) has passed are recorded as skipped. Prints one table,
writes ``benchmarks/results/gpu.json``.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import hyperbolic_overhead as overhead  # noqa: E402
from benchmarks import sampling  # noqa: E402
from benchmarks.common import RESULTS_DIR, print_table, write_results  # noqa: E402

# google/mt5-base's config.json, as random weights
MT5_BASE = dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64,
                vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
PAPER_FORWARD_MS = {"baseline": 415.73, "pooled": 1630.0, "token": 2550.0}  # Table 1, batch 8
MODES = ("baseline", "pooled", "token")
SAMPLING_FRAMES, SAMPLING_BATCHES, DIFFUSION_STEPS = 256, (1, 8), 10
WARMUP, REPEATS, FIT_STEPS = 3, 10, 6
QUICK = dict(batch=2, frames=8, tokens=5, sampling_frames=16, sampling_batches=(1, 2), repeats=2, warmup=1,
             fit_steps=2)
NO_CUDA = "benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False), nothing measured"


def plan(quick: bool = False) -> dict:
    """What the run measures and at which shapes, without touching a device."""
    cfg = overhead.yaml_config("paper")
    if quick:
        cfg = cfg | {k: QUICK[k] for k in ("batch", "frames", "tokens")} | {
            "mt5": overhead.QUICK["quick"]["mt5"], "encoder": overhead.QUICK["quick"]["encoder"],
            "hyp_dim": overhead.QUICK["quick"]["hyp_dim"]}
    else:
        cfg = cfg | {"mt5": MT5_BASE}
    return {"model": cfg, "modes": MODES, "paper_forward_ms": PAPER_FORWARD_MS,
            "precision": "bf16-mixed", "fit_steps": QUICK["fit_steps"] if quick else FIT_STEPS,
            "warmup": QUICK["warmup"] if quick else WARMUP, "repeats": QUICK["repeats"] if quick else REPEATS,
            "sampling": {"frames": QUICK["sampling_frames"] if quick else SAMPLING_FRAMES,
                         "batches": QUICK["sampling_batches"] if quick else SAMPLING_BATCHES,
                         "diffusion_steps": DIFFUSION_STEPS},
            "deepspeed_strategy": "deepspeed_stage_2"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, float, float]:
    """(median, q1, q3) milliseconds of ``fn`` after ``warmup`` calls, each call synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1e3 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[0], q[2]


def build(cfg: dict, mode: str, device: torch.device, compile_branch: bool = False):
    """The ``mode`` model of the config (``baseline``: the pooled model with its branch removed)."""
    with device:
        model = overhead.build_model(cfg, "pooled" if mode == "baseline" else mode, compile_branch)
    if mode == "baseline":
        model.hyperbolic = model.blend = None
    return model.to(device).train()


def training_forward(model, batch: dict) -> torch.Tensor:
    """``GeoSignTranslator.training_step``'s loss without the logging and the Trainer (α at progress 0)."""
    embeds, part_features = model._encode(batch)
    out = model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
    if model.hyperbolic is None:
        return out.loss
    loss_hyp, _ = model.hyperbolic(part_features, batch["frame_mask"], out.decoder_hidden, batch["target_mask"])
    alpha = model.blend(0.0)
    return alpha * out.loss + (1 - alpha) * loss_hyp


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def fit_ms(model, batch: dict, steps: int, device: torch.device, **trainer_args) -> tuple[float, float]:
    """(median step ms after the first, first step ms) of ``steps + 1`` fit steps."""
    times = overhead.fit_steps(model, batch, steps + 1, {"precision": "bf16-mixed", "gradient_clip_val": 1.0,
                                                         **trainer_args}, accelerator=device.type, synchronize=True)
    return 1e3 * statistics.median(times[1:]), 1e3 * times[0]


def row(item: str, mode: str | None, shape: str, **values) -> dict:
    return {"item": item, "mode": mode, "shape": shape, "ms": None, "q1": None, "q3": None, "first_ms": None,
            "paper_ms": None, "note": "", **values}


def run_geosign(p: dict, device: torch.device, budget: Callable[[], bool]) -> list[dict]:
    cfg = p["model"]
    shape = f"B{cfg['batch']} T{cfg['frames']} L{cfg['tokens']} hyp{cfg['hyp_dim']} LM{cfg['mt5']['d_model']}x{cfg['mt5']['num_layers']}"
    batch = to_device(overhead.make_batch(cfg), device)
    rows = []
    for mode in p["modes"]:
        if budget():
            rows.append(row("forward bf16", mode, shape, note="skipped: time budget"))
            continue
        model = build(cfg, mode, device)

        def forward() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                training_forward(model, batch)
        ms, q1, q3 = median_ms(forward, device, p["warmup"], p["repeats"])
        rows.append(row("forward bf16", mode, shape, ms=ms, q1=q1, q3=q3, paper_ms=p["paper_forward_ms"][mode]))
        step, first = fit_ms(model, batch, p["fit_steps"], device)
        rows.append(row("step bf16-mixed", mode, shape, ms=step, first_ms=first))
        del model
    for mode in ("pooled", "token"):
        if budget() or p.get("skip_compile"):
            rows.append(row("step bf16-mixed, compile_hyperbolic", mode, shape,
                            note="skipped: " + ("time budget" if budget() else "--quick on CPU")))
            continue
        step, first = fit_ms(build(cfg, mode, device, compile_branch=True), batch, p["fit_steps"], device)
        rows.append(row("step bf16-mixed, compile_hyperbolic", mode, shape, ms=step, first_ms=first,
                        note="first step compiles"))
    rows.append(run_deepspeed(p, cfg, batch, shape, device, budget))
    return rows


def run_deepspeed(p: dict, cfg: dict, batch: dict, shape: str, device: torch.device, budget) -> dict:
    name = "step DeepSpeed ZeRO-2 (1 GPU), bf16"
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return row(name, "token", shape, note="skipped: deepspeed is not installed (pip install deepspeed)")
    if device.type != "cuda" or budget():
        return row(name, "token", shape, note="skipped: " + ("needs CUDA" if device.type != "cuda" else "time budget"))
    try:
        step, first = fit_ms(build(cfg, "token", device), batch, p["fit_steps"], device,
                             strategy=p["deepspeed_strategy"])
        return row(name, "token", shape, ms=step, first_ms=first)
    except Exception as err:  # recorded, not hidden: the table says it failed and why
        traceback.print_exc()
        return row(name, "token", shape, note=f"failed: {type(err).__name__}: {str(err)[:200]}")


def run_sampling(p: dict, device: torch.device, budget, quick: bool, workdir: Path) -> list[dict]:
    s = p["sampling"]
    vqvae = sampling.random_vqvae_checkpoint(workdir / "vqvae.ckpt", quick)
    rows = []
    for setting in (sampling.Setting("diffusion", s["diffusion_steps"]), sampling.Setting("autoregressive")):
        model = sampling.random_generator(setting, vqvae, quick).to(device)
        name = setting.name(model)
        for batch in s["batches"]:
            shape = f"B{batch} T{s['frames']}"
            if budget():
                rows.append(row(f"sampling {name}", None, shape, note="skipped: time budget"))
                continue
            torch.manual_seed(0)
            gloss_ids, gloss_mask, totals = (t.to(device) for t in sampling.timing_inputs(model, s["frames"], batch))
            ms, q1, q3 = median_ms(lambda: sampling.sample_codes(model, gloss_ids, gloss_mask, totals), device,
                                   1, max(2, p["repeats"] // 3))
            rows.append(row(f"sampling {name}", None, shape, ms=ms, q1=q1, q3=q3,
                            note=f"{ms / batch:.1f} ms per sequence"))
    return rows


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script end to end")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after which items not yet started are skipped (default 420)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu only with --quick, to test the script without a GPU")
    args = parser.parse_args(argv)
    if args.device == "cpu" and not args.quick:
        parser.error("--device cpu is for --quick test runs only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    device = torch.device(args.device)
    p = plan(args.quick) | {"skip_compile": args.quick and device.type == "cpu"}
    start = time.perf_counter()
    budget = lambda: time.perf_counter() - start > args.budget_s  # noqa: E731
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        rows = run_geosign(p, device, budget) + run_sampling(p, device, budget, args.quick, Path(workdir))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print_table(f"GPU check on {gpu} ({time.perf_counter() - start:.0f} s)", rows,
                [("item", "item", "s"), ("mode", "mode", "s"), ("shape", "shape", "s"), ("ms", "ms", ".1f"),
                 ("q1", "q1", ".1f"), ("q3", "q3", ".1f"), ("first_ms", "first ms", ".0f"),
                 ("paper_ms", "paper ms", ".2f"), ("note", "note", "s")])
    write_results("gpu", args.out, {"quick": args.quick, "device": gpu, "plan": {k: v for k, v in p.items()},
                                    "rows": rows, "seconds": time.perf_counter() - start,
                                    "cuda": torch.version.cuda, "bf16_supported":
                                        device.type == "cuda" and torch.cuda.is_bf16_supported()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
