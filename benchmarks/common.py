"""What every benchmark script shares: the command line, timing, the machine's state, a table, JSON.

A script calls ``parse_args`` (``--quick`` for the seconds-long smoke run the tests use,
``--out`` for the results folder), times with ``median_time``/``timed``, prints with
``print_table`` and saves with ``write_results``, which records the machine and its load so
a number is never read without knowing how busy the box was.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
_LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]  # 1/5/15-min load when the script started


def parse_args(description: str, argv: Sequence[str] | None = None,
               flags: dict[str, str] | None = None) -> argparse.Namespace:
    """``--quick``, ``--out`` and the script's own boolean ``flags`` (name -> help)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats: checks the script end to end in seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    for name, help_text in (flags or {}).items():
        parser.add_argument(f"--{name}", action="store_true", help=help_text)
    return parser.parse_args(argv)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU of this process) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones (the median shrugs
    off the calls another process on the shared box disturbed)."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[0] for _ in range(repeats))


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment of a command a benchmark starts (``lightning fit``, ...): this checkout first
    on PYTHONPATH, so the command runs the code being measured and not whichever checkout pip
    last installed signlab from; ``extra`` variables on top."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return os.environ | extra | {"PYTHONPATH": path}


def machine() -> dict:
    """The box and its state while the numbers were taken."""
    load1, load5, load15 = os.getloadavg()
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": _LOAD_AT_START,
        "load_average_end": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cell(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def print_table(title: str, rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` under ``title``; ``columns`` are (key, header, format spec) triples."""
    print(title)
    widths = [max(len(header), *(len(_cell(row[key], spec)) for row in rows)) + 2 for key, header, spec in columns]
    print("".join(f"{header:>{w}}" for (_, header, _), w in zip(columns, widths)))
    for row in rows:
        print("".join(f"{_cell(row[key], spec):>{w}}" for (key, _, spec), w in zip(columns, widths)))


def write_results(name: str, out_dir: Path, payload: dict) -> Path:
    """Write ``<out_dir>/<name>.json`` = payload plus ``machine``; return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**payload, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
