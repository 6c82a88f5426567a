"""Time DTW-MJE on a batch of 64 PT sequences of 300 frames (cost matrix and wavefront DP apart).

Plain script: ``python benchmarks/dtw.py``. Prints a table, writes benchmarks/results/dtw.json.
Wall time is the best of a few runs; CPU time (all threads) is shown too because on a shared
machine wall time mostly measures the other processes.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from generation.metrics import dtw_distance, dtw_mje, frame_costs

BATCH, FRAMES, REPEATS = 64, 300, 3


def best_of(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` runs (the least disturbed by others)."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    hyp = torch.rand(BATCH, FRAMES, 50, 3) - 0.5  # PT values lie within about +-0.5
    ref = torch.rand(BATCH, FRAMES, 50, 3) - 0.5
    lengths = torch.full((BATCH,), FRAMES)
    rows = []
    for cost in ("l1", "joint_l2"):
        costs = frame_costs(hyp, ref, cost)
        rows.append({
            "cost": cost,
            "frame_costs_s": best_of(lambda: frame_costs(hyp, ref, cost)),
            "wavefront_dp_s": best_of(lambda: dtw_distance(costs, lengths, lengths)),
            "total_s": best_of(lambda: dtw_mje(hyp, ref, cost=cost)),
        })
    print(f"DTW-MJE, batch {BATCH} x {FRAMES} frames x 50 joints, torch threads {torch.get_num_threads()}")
    print("seconds as wall / CPU")
    print(f"{'cost':<10}{'frame costs':>16}{'wavefront DP':>16}{'total':>16}")
    for row in rows:
        cells = [f"{row[k][0]:.3f} / {row[k][1]:.3f}" for k in ("frame_costs_s", "wavefront_dp_s", "total_s")]
        print(f"{row['cost']:<10}" + "".join(f"{c:>16}" for c in cells))
    out = Path(__file__).resolve().parent / "results" / "dtw.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "batch": BATCH, "frames": FRAMES, "repeats": REPEATS, "threads": torch.get_num_threads(),
        "columns": "[wall seconds, CPU seconds]", "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
