"""The SynthSign demo results of docs/results.md: the demo YAMLs trained and tested through the CLI.

    python benchmarks/demo_results.py [--translation] [--production] [--out DIR]   # fit + test (CPU hours)
    python benchmarks/demo_results.py --from-runs runs [--translation] [--production]  # read finished runs

Without ``--from-runs`` it runs, one after the other from the repository root, what a user runs:
``lightning fit --config experiments/demo/<name>.yaml`` and then ``lightning test`` (Geo-Sign demos:
``--ckpt_path best``; generators: ``--ckpt_path last`` with the demo back-translator's
``last.ckpt``), timing each command and taking its peak RSS from ``wait4`` (the largest process
of the command's tree). Translation: the three Geo-Sign demos (minutes each). Production: the
Pose-VQVAE (three-part, and joint with ``--model.init_args.variant joint``), the back-translator,
then the four generators (their YAMLs read the tokenizer's ``last.ckpt``); about an hour.

Either way the numbers are then read from the run folders (``trainer.default_root_dir`` of each
YAML, under ``--from-runs DIR`` by its last component): every validation's ``val/*`` scalars and
the test scores from the offline W&B files (the latest fit run and the latest run holding
``test/`` scalars), the generators' back-translation report (``<run>/report/report.csv``), and
from W&B's system records the run's command, git commit, host, CPU and memory, its duration and
the largest RSS it sampled (every 15 s, main process only: below the ``wait4`` peak). A run
folder that is absent is listed as missing.

Prints a table, writes ``demo_results.json``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS_DIR, checkout_env, print_table, write_results  # noqa: E402

DEMO = REPO / "experiments" / "demo"
BACK_TRANSLATOR_CKPT = "runs/demo_back_translator/checkpoints/last.ckpt"  # as the generator YAMLs' comments say


@dataclass(frozen=True)
class Demo:
    """One row: a demo YAML (plus command-line overrides) fitted, then optionally tested."""

    name: str
    config: str
    fit_args: tuple[str, ...] = ()
    test_args: tuple[str, ...] | None = None  # None: no test
    root_dir: str | None = None  # when fit_args move trainer.default_root_dir

    def run_dir(self) -> str:
        if self.root_dir is not None:
            return self.root_dir
        return yaml.safe_load((DEMO / self.config).read_text())["trainer"]["default_root_dir"]

    def monitor(self) -> tuple[str, str]:
        checkpoint = yaml.safe_load((DEMO / self.config).read_text()).get("checkpoint", {})
        return checkpoint.get("monitor"), checkpoint.get("mode", "min")


GENERATOR_TEST = ("--ckpt_path", "last", "--model.init_args.back_translator_ckpt", BACK_TRANSLATOR_CKPT)
TRANSLATION = tuple(Demo(name, f"{name}.yaml", test_args=("--ckpt_path", "best"))
                    for name in ("unisign_pose", "geosign_pooled", "geosign_token"))
PRODUCTION = (
    Demo("pose_vqvae", "pose_vqvae.yaml"),
    Demo("pose_vqvae_joint", "pose_vqvae.yaml", fit_args=("--model.init_args.variant", "joint",
                                                          "--trainer.default_root_dir", "runs/demo_pose_vqvae_joint"),
         root_dir="runs/demo_pose_vqvae_joint"),
    Demo("back_translator", "back_translator.yaml"),
    *(Demo(name, f"{name}.yaml", test_args=GENERATOR_TEST)
      for name in ("posevq_diffusion", "posevq_transformer", "posevq_mp", "posevq_ar")),
)


# ---- offline W&B files ----------------------------------------------------------------------------
# A run-*.wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
# 32 KiB blocks of chunks, each a 7-byte header (CRC32, length, type) and part of one protobuf
# Record. wandb >= 0.19 reads it only in its Go core, so the framing is read here.

_BLOCK, _CHUNK_HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_chunks(data: bytes) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file's bytes."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


@dataclass
class WandbRun:
    """What the results need from one offline W&B run."""

    run_id: str
    start_utc: str | None = None
    runtime_s: float | None = None
    max_sampled_rss_mb: float | None = None
    history: list[dict] = field(default_factory=list)  # one dict of numeric scalars per logged step
    environment: dict = field(default_factory=dict)  # where and how it ran: command, commit, host, CPU, memory


def read_wandb_run(path: Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun(run_id=path.stem.removeprefix("run-"))
    rss = []
    for chunk in wandb_chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run" and record.run.start_time.seconds:
            start = datetime.datetime.fromtimestamp(record.run.start_time.seconds, datetime.timezone.utc)
            run.start_utc = start.isoformat(timespec="seconds")
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                try:
                    value = json.loads(item.value_json)
                except ValueError:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[key] = value
            run.history.append(row)
        elif kind == "environment":
            env = record.environment
            if env.args or env.program:
                run.environment["command"] = " ".join([Path(env.program).name, *env.args])
            for key, value in (("os", env.os), ("python", env.python), ("host", env.host),
                               ("git_commit", env.git.commit), ("cpu", env.cpu.model)):
                if value:
                    run.environment[key] = value
            if env.cpu_count:
                run.environment["cpus"] = env.cpu_count
            if env.memory.total:
                run.environment["memory_gb"] = round(env.memory.total / 1e9, 1)
        elif kind == "stats":
            rss += [float(item.value_json) for item in record.stats.item if item.key == "proc.memory.rssMB"]
        elif kind == "exit":
            run.runtime_s = float(record.exit.runtime)
    if run.runtime_s is None and run.history:  # killed before its exit record
        run.runtime_s = max(row.get("_runtime", 0.0) for row in run.history)
    run.max_sampled_rss_mb = max(rss) if rss else None
    return run


def wandb_runs(run_dir: Path) -> list[WandbRun]:
    """The offline W&B runs of a run folder, oldest first."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [read_wandb_run(path) for path in files]


def joined(runs: list[WandbRun]) -> WandbRun:
    """The latest run with the parts an earlier folder holds under the same id: a resumed fit keeps
    its W&B id (checkpoints carry it) but writes a new offline folder."""
    parts = [r for r in runs if r.run_id == runs[-1].run_id]
    rss = [r.max_sampled_rss_mb for r in parts if r.max_sampled_rss_mb is not None]
    times = [r.runtime_s for r in parts if r.runtime_s is not None]
    return WandbRun(run_id=parts[0].run_id, start_utc=parts[0].start_utc, runtime_s=sum(times) if times else None,
                    max_sampled_rss_mb=max(rss) if rss else None, history=[row for r in parts for row in r.history],
                    environment=parts[0].environment)


# ---- one demo's results from its run folder -------------------------------------------------------


def fit_results(run: WandbRun, monitor: str | None, mode: str) -> dict:
    """Every validation (epoch, step, val/* scalars) and the best by the checkpoint's monitor. Rows
    without ``epoch`` are media (sample tables) logged beside the metrics, not validations."""
    validations = [{"epoch": row["epoch"], "step": row.get("trainer/global_step"),
                    "metrics": {k: v for k, v in row.items() if k.startswith("val/")}}
                   for row in run.history if "epoch" in row and any(k.startswith("val/") for k in row)]
    scored = [v for v in validations if monitor in v["metrics"]]
    best = None
    if scored:
        pick = max if mode == "max" else min
        top = pick(scored, key=lambda v: v["metrics"][monitor])
        best = {"metric": monitor, "value": top["metrics"][monitor], "epoch": top["epoch"], "step": top["step"]}
    return {"wandb_run": run.run_id, "start_utc": run.start_utc, "environment": run.environment,
            "wandb_runtime_s": run.runtime_s, "max_sampled_rss_mb": run.max_sampled_rss_mb,
            "validations": validations, "best": best}


def test_metrics(run: WandbRun) -> dict:
    """The ``test/`` scalars of a run (the last value of each)."""
    metrics = {}
    for row in run.history:
        metrics.update({k: v for k, v in row.items() if k.startswith("test/")})
    return metrics


def read_report(path: Path) -> list[dict]:
    """``report.csv`` of a generator's test: one row per method, reconstruction and GT."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (float(v) if k != "method" and v != "" else (v if k == "method" else None)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def demo_results(demo: Demo, runs_dir: Path) -> dict | None:
    """The row of ``demo`` from ``runs_dir / <its run folder's name>``; None if the folder is absent."""
    run_dir = runs_dir / Path(demo.run_dir()).name
    runs = wandb_runs(run_dir) if run_dir.is_dir() else []
    fits = [r for r in runs if any(k.startswith("val/") for row in r.history for k in row)]
    if not fits:
        return None
    result = {"demo": demo.name, "config": f"experiments/demo/{demo.config}", "fit_args": list(demo.fit_args),
              "run_dir": str(run_dir), "fit": fit_results(joined(fits), *demo.monitor())}
    if demo.test_args is not None:
        tests = [r for r in runs if test_metrics(r)]
        result["test_args"] = list(demo.test_args)
        result["test"] = ({"wandb_run": tests[-1].run_id, "start_utc": tests[-1].start_utc,
                           "environment": tests[-1].environment, "metrics": test_metrics(tests[-1])}
                          if tests else None)
        report = run_dir / "report" / "report.csv"
        if report.is_file():
            result["report"] = read_report(report)
    return result


# ---- running the demos ----------------------------------------------------------------------------


def run_command(args: Sequence[str]) -> dict:
    """Run a CLI command from the repository root, on this checkout's code (``checkout_env``): wall
    seconds, peak RSS (GB) of its process tree."""
    print("$ " + " ".join(args), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(list(args), cwd=REPO, env=checkout_env())
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {code}")
    return {"command": " ".join(args), "wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 2 ** 20}  # KiB on Linux


def run_demo(demo: Demo) -> dict:
    config = f"experiments/demo/{demo.config}"
    timings = {"fit": run_command(["lightning", "fit", "--config", config, *demo.fit_args])}
    if demo.test_args is not None:
        timings["test"] = run_command(["lightning", "test", "--config", config, *demo.fit_args, *demo.test_args])
    return timings


# ---- main -----------------------------------------------------------------------------------------


def summary_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        best, test = r["fit"]["best"], r.get("test") or {}
        metrics = test.get("metrics", {})
        method = next((row for row in r.get("report", []) if row["method"] not in ("GT", "Pose-VQVAE reconstruction")), {})
        rows.append({"demo": r["demo"], "validations": len(r["fit"]["validations"]),
                     "best": None if best is None else f"{best['metric']} {best['value']:.4g}",
                     "test_bleu4": metrics.get("test/test/bleu4", metrics.get("test/bleu4")),
                     "wer": method.get("wer"), "wall_s": r.get("timing", {}).get("fit", {}).get("wall_s"),
                     "wandb_runtime_s": r["fit"]["wandb_runtime_s"]})
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--translation", action="store_true", help="the three Geo-Sign demos (default: both groups)")
    parser.add_argument("--production", action="store_true", help="the production chain (default: both groups)")
    parser.add_argument("--from-runs", type=Path, metavar="DIR",
                        help="read finished run folders in DIR instead of fitting (e.g. runs)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    groups = {"translation": TRANSLATION, "production": PRODUCTION}
    chosen = [g for g in groups if getattr(args, g)] or list(groups)
    runs_dir = args.from_runs if args.from_runs is not None else REPO / "runs"
    result = {"command": "python benchmarks/demo_results.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "mode": "from-runs" if args.from_runs is not None else "fit and test", "runs_dir": str(runs_dir),
              "missing": []}
    for group in chosen:
        result[group] = []
        for demo in groups[group]:
            timing = run_demo(demo) if args.from_runs is None else None
            row = demo_results(demo, runs_dir)
            if row is None:
                result["missing"].append(demo.name)
                continue
            if timing is not None:
                row["timing"] = timing
            result[group].append(row)
    for group in chosen:
        if result[group]:
            print_table(f"\n{group} demos ({result['mode']}, {runs_dir})", summary_rows(result[group]),
                        [("demo", "demo", "s"), ("validations", "validations", "d"), ("best", "best", "s"),
                         ("test_bleu4", "test BLEU-4", ".2f"), ("wer", "WER", ".2f"), ("wall_s", "fit wall s", ".0f"),
                         ("wandb_runtime_s", "W&B run s", ".0f")])
    if result["missing"]:
        print("no run folder with a fit for: " + ", ".join(result["missing"]))
    write_results("demo_results", args.out, result)
    return result


if __name__ == "__main__":
    main()
