"""Where the hyperbolic branch's step time goes at the demo shapes: the ATen ops it dispatches.

    python benchmarks/branch_ops.py [--quick] [--out DIR]

At the demo YAMLs' shapes (batch 8, 32 frames, hyp_dim 64) every op of the branch is tiny and
costs only its fixed dispatch, autograd and Python overhead (about 3 µs alone, 4-5 µs inside a
real training step, whose large kernels evict the caches), so the number of dispatched ops, not
their arithmetic, is the branch's cost. For each mode: the branch's forward and backward on the
encoder and mT5 outputs of the demo YAML's first training batch (diagnostics off, as on the steps
no logger receives), its ops counted with a ``TorchDispatchMode``, the backward's grouped by the
autograd node that ran them, and the forward + backward wall time of the branch alone (median
of 7 rounds of 30). ``--quick`` uses ``hyperbolic_overhead.QUICK``'s tiny model on a random batch.

Prints a table, writes ``branch_ops.json``.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_args, print_table, write_results  # noqa: E402
from benchmarks.hyperbolic_overhead import MODES, QUICK, build_model, demo_batch, make_batch, yaml_config  # noqa: E402

TOP_NODES = 8  # backward nodes listed per mode, by ops dispatched


class OpCount(TorchDispatchMode):
    """Counts dispatched ATen ops: forward ones, and backward ones per autograd node."""

    def __init__(self) -> None:
        super().__init__()
        self.forward, self.backward = 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        node = torch._C._current_autograd_node()  # set while the autograd engine runs a node
        if node is None:
            self.forward += 1
        else:
            self.backward[node.name()] += 1
        return func(*args, **(kwargs or {}))


def branch_step(cfg: dict, mode: str, batch: dict) -> Callable[[], None]:
    """The branch's forward + backward on detached encoder and mT5 outputs of `batch`."""
    model = build_model(cfg, mode).train()
    with torch.no_grad():
        embeds, parts = model._encode(batch)
        hidden = model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"]).decoder_hidden
    parts = {p: v.requires_grad_() for p, v in parts.items()}
    hidden.requires_grad_()

    def step() -> None:
        loss, _ = model.hyperbolic(parts, batch["frame_mask"], hidden, batch["target_mask"], diagnostics=False)
        loss.backward()

    return step


def measure(step: Callable[[], None], rounds: int, calls: int) -> dict:
    for _ in range(calls):  # warm-up: allocator, lazy inits
        step()
    with OpCount() as count:
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        times.append((time.perf_counter() - start) / calls * 1e3)
    backward = sum(count.backward.values())
    return {"forward_ops": count.forward, "backward_ops": backward, "total_ops": count.forward + backward,
            "fwd_bwd_ms": statistics.median(times), "top_backward_nodes": count.backward.most_common(TOP_NODES)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    cfg = QUICK["quick"] if args.quick else yaml_config("demo")
    batch = make_batch(cfg) if args.quick else demo_batch(cfg)
    rounds, calls = (2, 2) if args.quick else (7, 30)
    rows = [{"mode": mode} | measure(branch_step(cfg, mode, batch), rounds, calls) for mode in MODES]
    print_table(f"Hyperbolic branch fwd + bwd, {'quick' if args.quick else 'demo'} shapes (batch {cfg['batch']}, "
                f"hyp_dim {cfg['hyp_dim']}), ops dispatched and ms (median of {rounds} x {calls})", rows,
                [("mode", "mode", "s"), ("forward_ops", "fwd ops", "d"), ("backward_ops", "bwd ops", "d"),
                 ("total_ops", "ops", "d"), ("fwd_bwd_ms", "ms", ".2f")])
    for row in rows:
        print(f"{row['mode']} backward, ops per autograd node: "
              + ", ".join(f"{name} {n}" for name, n in row["top_backward_nodes"]))
    write_results("branch_ops", args.out, {"quick": args.quick, "config": cfg if args.quick else "demo",
                                           "rounds": rounds, "calls": calls, "rows": rows})


if __name__ == "__main__":
    # as the `lightning` command does; here, not in main(), which the tests call in their own process
    torch.set_flush_denormal(True)
    main()
