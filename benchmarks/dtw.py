"""Time DTW-MJE on a batch of 64 PT sequences of 300 frames (cost matrix and wavefront DP apart).

Plain script: ``python benchmarks/dtw.py``. Prints a table, writes benchmarks/results/dtw.json.
Wall time is the best of a few runs; CPU time (all threads) is shown too because on a shared
machine wall time mostly measures the other processes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, timed, write_results  # noqa: E402
from generation.metrics import dtw_distance, dtw_mje, frame_costs  # noqa: E402

BATCH, FRAMES, REPEATS = 64, 300, 3


def best_of(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` runs (the least disturbed by others)."""
    return min(timed(fn) for _ in range(repeats))


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
    write_results("dtw", RESULTS_DIR, {
        "batch": BATCH, "frames": FRAMES, "repeats": REPEATS, "columns": "[wall seconds, CPU seconds]", "rows": rows,
    })

if __name__ == "__main__":
    main()
