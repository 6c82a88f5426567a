"""The demo configs' training step through the CLI: a long fit minus a short one, configs alternating.

    python benchmarks/cli_steps.py [--long 120 320] [--short 20] [--rounds 2] [--out DIR]

For each long step count and round, each demo YAML (``experiments/demo/{unisign_pose,
geosign_pooled,geosign_token}.yaml``, in that order in even rounds and reversed in odd ones, so a
drift of the shared machine's speed reaches them alike) runs ``lightning fit --config <yaml>
--trainer.limit_val_batches 0 --trainer.max_steps N --trainer.default_root_dir <temporary>`` with
``WANDB_MODE=disabled``, at N = long and then N = short; (long seconds - short seconds) / (long -
short) is the step without start-up, data preparation and the first steps' warm-up. The start-up
alone moves by ±3 s from run to run, ±10 ms a step over 300 steps, so each long fit also records
its steps' wall times through ``--trainer.callbacks+=benchmarks.cli_steps.StepTimes`` (end of one
batch to the end of the next: loading, forward, backward, optimiser, logging, callbacks) and the
median of those after the first SHORT steps is the second, steadier measure. Also the ratios of each
Geo-Sign config's step to the baseline's in the same round, by both measures, and their medians over
the rounds (with the range). Each run of 120 steps
takes about half a minute on the 2-core VM, so the default plan is about ten minutes.

Prints a table, writes ``cli_demo_steps.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as L  # noqa: E402

from benchmarks.common import REPO, RESULTS_DIR, checkout_env, print_table, write_results  # noqa: E402

CONFIGS = ("unisign_pose", "geosign_pooled", "geosign_token")
BASELINE = "unisign_pose"


class StepTimes(L.Callback):
    """Writes the wall seconds of every training step to ``path`` (JSON list) when training ends:
    each from the end of the previous batch (the first from its own start) to the end of this one."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self._last = path, [], None

    def on_train_batch_start(self, *args) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def on_train_end(self, *args) -> None:
        Path(self.path).write_text(json.dumps(self.times))


def fit_seconds(config: str, steps: int) -> tuple[float, list[float]]:
    """Wall seconds of one ``lightning fit`` of a demo YAML for ``steps`` optimizer steps, and the
    seconds of each of its steps (``StepTimes``)."""
    with tempfile.TemporaryDirectory() as root:
        times = Path(root) / "step_times.json"
        args = ["lightning", "fit", "--config", f"experiments/demo/{config}.yaml", "--trainer.limit_val_batches", "0",
                "--trainer.max_steps", str(steps), "--trainer.default_root_dir", root,
                "--trainer.callbacks+=benchmarks.cli_steps.StepTimes", "--trainer.callbacks.path", str(times)]
        start = time.perf_counter()
        subprocess.run(args, cwd=REPO, env=checkout_env(WANDB_MODE="disabled"), check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start, json.loads(times.read_text())


def measure(longs: Sequence[int], short: int, rounds: int,
            run: Callable[[str, int], tuple[float, list[float]]] = fit_seconds) -> list[dict]:
    """One record per (long, round, config), in the order they ran."""
    records = []
    for long in longs:
        for round_ in range(rounds):
            for config in CONFIGS if round_ % 2 == 0 else CONFIGS[::-1]:
                (long_s, step_s), (short_s, _) = run(config, long), run(config, short)
                records.append({"round": round_, "config": config, "long": long, "short": short,
                                "long_s": long_s, "short_s": short_s,
                                "ms_per_step": 1e3 * (long_s - short_s) / (long - short),
                                "median_step_ms": 1e3 * statistics.median(step_s[short:]),
                                "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S"),
                                "load": os.getloadavg()[0]})
    return records


def ratios(records: list[dict]) -> list[dict]:
    """Each config's step over the baseline's in the same round and long step count, by both measures."""
    base = {(r["long"], r["round"]): r for r in records if r["config"] == BASELINE}
    return [{"long": r["long"], "round": r["round"], "config": r["config"],
             "ratio_to_baseline": r["ms_per_step"] / base[r["long"], r["round"]]["ms_per_step"],
             "median_ratio_to_baseline": r["median_step_ms"] / base[r["long"], r["round"]]["median_step_ms"]}
            for r in records if r["config"] != BASELINE and (r["long"], r["round"]) in base]


def summary(ratios_: list[dict]) -> list[dict]:
    """Per long step count and config: the median over rounds of each ratio, with its range."""
    out = []
    for long, config in sorted({(r["long"], r["config"]) for r in ratios_}, key=lambda k: (k[0], CONFIGS.index(k[1]))):
        rows = [r for r in ratios_ if (r["long"], r["config"]) == (long, config)]
        row = {"long": long, "config": config, "rounds": len(rows)}
        for key in ("ratio_to_baseline", "median_ratio_to_baseline"):
            values = [r[key] for r in rows]
            row |= {key: statistics.median(values), key + "_min": min(values), key + "_max": max(values)}
        out.append(row)
    return out


def main(argv: Sequence[str] | None = None,
         run: Callable[[str, int], tuple[float, list[float]]] = fit_seconds) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, nargs="+", default=[120, 320], help="long fits' steps (default 120 320)")
    parser.add_argument("--short", type=int, default=20, help="short fit's steps (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the order reversed in odd ones (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.short < 1 or args.rounds < 1 or min(args.long) <= args.short:
        parser.error("need --short >= 1, --rounds >= 1 and every --long above --short")
    records = measure(args.long, args.short, args.rounds, run)
    per_round = ratios(records)
    print_table("Demo training step through the CLI (long minus short fit)", records,
                [("long", "long", "d"), ("round", "round", "d"), ("config", "config", "s"),
                 ("ms_per_step", "ms/step", ".1f"), ("median_step_ms", "median step ms", ".1f"),
                 ("load", "load", ".2f")])
    print_table("Step over the baseline's, same round", per_round,
                [("long", "long", "d"), ("round", "round", "d"), ("config", "config", "s"),
                 ("ratio_to_baseline", "x baseline", ".3f"), ("median_ratio_to_baseline", "median x baseline", ".3f")])
    print_table("Median over rounds [min, max]", summary(per_round),
                [("long", "long", "d"), ("config", "config", "s"), ("rounds", "rounds", "d"),
                 ("ratio_to_baseline", "x baseline", ".3f"), ("ratio_to_baseline_min", "min", ".3f"),
                 ("ratio_to_baseline_max", "max", ".3f"), ("median_ratio_to_baseline", "median x baseline", ".3f"),
                 ("median_ratio_to_baseline_min", "min", ".3f"), ("median_ratio_to_baseline_max", "max", ".3f")])
    result = {"command": "python benchmarks/cli_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "what": "demo configs through the CLI: seconds of `lightning fit --config experiments/demo/<name>.yaml "
                      "--trainer.limit_val_batches 0 --trainer.max_steps LONG --trainer.default_root_dir /tmp/...` "
                      "minus the same with SHORT steps, WANDB_MODE=disabled; configs alternate (even rounds unisign, "
                      "pooled, token; odd rounds reversed); median_step_ms: the median of the long fit's per-step "
                      "wall times (StepTimes callback) after its first SHORT steps",
              "records": records, "ratios": per_round, "summary": summary(per_round)}
    write_results("cli_demo_steps", args.out, result)
    return result


if __name__ == "__main__":
    main()
