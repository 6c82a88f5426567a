"""SignTranslationDataModule throughput: per-video pose pickles vs the packed memory-mapped cache.

Plain script: ``python benchmarks/data_loading.py [--quick] [--out DIR]``. Writes a CSL-Daily
layout corpus of random poses to a temporary folder (clip lengths spread like CSL-Daily's) in two
pickle layouts with the same values: ``array``, one (T, 1, 133, 2) float32 array per key (the
cheapest to unpickle; SynthSign writes it), and ``per-frame``, lists of per-frame (1, 133, 2)
float64 keypoint and (1, 133) float32 score arrays, which is what Uni-Sign's pose-extraction
script (rtmlib, ``keypoints / [W, H]`` appended frame by frame) pickles. Then for each
page-cache state (warm: files read before, one DataLoader per source for all its epochs as in a
training run; cold: every pose pickle and the packed array evicted with
``posix_fadvise(DONTNEED)`` before each epoch, as on a first epoch or a network file system, and
a new DataModule per epoch) and worker count (0, 2) times training epochs at the release's settings
(batch 16, max_len 256) of each source (pickles of either layout, packed), the sources taking
turns epoch by epoch so that a drift of the machine's speed reaches them alike, and records the
median epoch's samples/s after its first batch (which pays worker start-up) and over the whole
epoch, the rate at which the epoch goes through its source's files (cold: the disk's rate), the peak
Python/numpy heap of the main process (tracemalloc, in an extra untimed epoch since tracing
slows every allocation; memory-mapped pages are file cache, not heap). These settings are the
released training script's (batch 16, max_length 256), not the demo's. The demo is measured
apart, from its YAML (``experiments/demo/geosign_token.yaml``: its SynthSign corpus, batch size,
max_len and workers): the median ms per batch of its training loader after the first batch,
against the demo training step that ``hyperbolic_overhead.py`` measured from the same YAMLs (read
from ``hyperbolic_overhead.json`` when that benchmark has run). Also times a 2-worker DataLoader that
only hands over copies of one real batch: the transport between processes alone, which bounds
any 2-worker row, and what moving a batch into shared memory costs in one process. Prints a
table, writes ``data_loading.json``.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.common import RESULTS_DIR, median_time, parse_args, print_table, timed, write_results  # noqa: E402
from datamodules.translation import SignTranslationDataModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH, MAX_LEN = 16, 256  # the released training script's --batch-size 16 and --max_length 256
DEMO_YAML = REPO / "experiments" / "demo" / "geosign_token.yaml"  # the quickstart demo
FRAMES = (60, 300)  # clip lengths drawn uniformly: CSL-Daily clips run about 2-12 s at 25 fps


LAYOUTS = ("array", "per-frame")  # pickle layouts, see the module docstring


def write_corpus(root: Path, samples: int, layout: str, seed: int = 0) -> tuple[Path, Path]:
    """labels.{train,dev} + one Uni-Sign pose pickle per sample in ``layout``, as CSL-Daily ships
    them (dev reuses two clips: setup("fit") wants it, the benchmark never reads it). The same
    ``seed`` gives the same clips in either layout."""
    rng = np.random.default_rng(seed)
    label_dir, pose_dir = root / layout / "labels", root / layout / "pose_format"
    pose_dir.mkdir(parents=True)
    labels = {}
    for i in range(samples):
        name = f"S{i:06d}_P0000_T00"
        frames = int(rng.integers(*FRAMES, endpoint=True))
        keypoints = rng.uniform(0.3, 0.7, (frames, 1, 133, 2)).astype(np.float32)
        scores = rng.uniform(0.2, 1.0, (frames, 1, 133)).astype(np.float32)
        if layout == "per-frame":
            pose = {"keypoints": list(keypoints.astype(np.float64)), "scores": list(scores)}
        else:
            pose = {"keypoints": keypoints, "scores": scores}
        (pose_dir / f"{name}.pkl").write_bytes(pickle.dumps(pose, protocol=4))
        labels[name] = {"name": name, "gloss": ["你们", "好"], "text": "今天天气很好", "video_path": f"{name}.mp4"}
    label_dir.mkdir()
    (label_dir / "labels.train").write_bytes(gzip.compress(pickle.dumps(labels)))
    dev = dict(list(labels.items())[:2])
    (label_dir / "labels.dev").write_bytes(gzip.compress(pickle.dumps(dev)))
    return label_dir, pose_dir


def epoch(loader: DataLoader) -> tuple[int, float, float]:
    """(samples, seconds for all batches after the first, seconds to the first batch): the first
    batch pays worker start-up, which a training run pays once, not per batch."""
    start = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    first_s = time.perf_counter() - start
    start, samples = time.perf_counter(), 0
    for batch in batches:
        samples += len(batch["name"])
    return samples + len(first["name"]), time.perf_counter() - start, first_s


def train_loader(kwargs: dict, packed: bool, workers: int) -> DataLoader:
    """The training DataLoader of a new DataModule (its memory map opens at the first batch)."""
    dm = SignTranslationDataModule(**kwargs, packed=packed, num_workers=workers)
    dm.setup("fit")
    return dm.train_dataloader()


def fresh_epoch(kwargs: dict, packed: bool, workers: int, evict_first: list[Path]) -> tuple[int, float, float]:
    """``epoch`` of a new DataModule after evicting ``evict_first`` from the page cache: a live
    memory map would keep the pages it touched from being evicted."""
    evict(evict_first)
    return epoch(train_loader(kwargs, packed, workers))


def peak_heap(run: Callable[[], object]) -> int:
    """Peak traced Python/numpy heap of ``run()`` in bytes; in an epoch of its own, since
    tracemalloc slows every allocation."""
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def read_stage(kwargs: dict, packed: bool, repeats: int) -> float:
    """Clips/s of what the cache replaces alone: get one clip's sampled frames' part nodes into
    memory (unpickle + gather, or copy out of the map), without normalising the batch or
    collating; the best of ``repeats`` passes, the least disturbed one. Its DataModule (and memory
    map) is gone on return: pages a live map has touched cannot be evicted for the cold epochs."""
    dm = SignTranslationDataModule(**kwargs, packed=packed)
    dm.setup("fit")
    data = dm.datasets["train"]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for index, record in enumerate(data.records):
            np.array(data._load(record, index, epoch=0)[1])  # a copy: a packed clip kept whole is a view
        rates.append(len(data.records) / (time.perf_counter() - start))
    return max(rates)


class _BatchCopies(Dataset):
    """``batches`` copies of one collated batch, each made in the worker that serves it."""

    def __init__(self, batch: dict, batches: int):
        self.batch, self.batches = batch, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict:
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}


def transport_ms(batch: dict, workers: int, batches: int, repeats: int) -> float:
    """Median ms per batch of a ``workers``-process DataLoader that only copies ``batch``: what
    moving a batch from a worker to the main process costs, with no loading at all."""
    runs = []
    for _ in range(repeats):
        loader = iter(DataLoader(_BatchCopies(batch, batches + 1), batch_size=None, num_workers=workers))
        next(loader)  # worker start-up, as in ``epoch``
        start = time.perf_counter()
        for _ in loader:
            pass
        runs.append(1e3 * (time.perf_counter() - start) / batches)
    return sorted(runs)[len(runs) // 2]


def share_ms(batch: dict, repeats: int) -> float:
    """Median ms to move copies of ``batch``'s tensors into shared memory, in one process, less
    the copies themselves: the part of the transport that a worker pays for fresh shared-memory
    pages (the kernel hands them out zero-filled, page by page)."""
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    shared = median_time(lambda: [t.clone().share_memory_() for t in tensors], 5 * repeats)
    return 1e3 * (shared - median_time(lambda: [t.clone() for t in tensors], 5 * repeats))


def demo_step_seconds(out_dir: Path) -> float | None:
    """Median training step of the demo YAML (token mode) from the hyperbolic-overhead results, if
    present and timed from that YAML."""
    demo_yaml = str(DEMO_YAML.relative_to(REPO))
    for folder in (out_dir, RESULTS_DIR):
        path = folder / "hyperbolic_overhead.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result.get("configs", {}).get("demo", {}).get("yamls", {}).get("token") != demo_yaml:
                return None  # timed from another model than the demo's
            return next((r["step_ms"] / 1e3 for r in result["rows"] if r["config"] == "demo" and r["mode"] == "token"),
                        None)
    return None


def demo_data_args(quick: bool, tmp: Path) -> dict:
    """The demo YAML's data init_args, resolved; ``quick`` swaps its corpus for a small one in ``tmp``
    (same glosses, batch size, max_len and workers)."""
    config = OmegaConf.to_container(OmegaConf.create(yaml.safe_load(DEMO_YAML.read_text())), resolve=True)
    args = dict(config["data"]["init_args"])
    if quick:
        args["data_dir"] = str(tmp / "demo_synthsign")
        args["synthsign_kwargs"] = dict(args.get("synthsign_kwargs") or {}) | {
            "num_train": 4 * args["batch_size"], "num_dev": 2, "num_test": 2}
    else:  # the CLI runs from the repository root, where the YAML's relative data_dir points
        args["data_dir"] = str(REPO / args["data_dir"])
    return args


def demo_loader(args: dict, repeats: int) -> dict:
    """Median ms per batch of the demo's training loader after the first batch, over ``repeats``
    epochs of one DataLoader (after a warm-up epoch), as ``lightning fit`` reads it."""
    dm = SignTranslationDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch(loader)  # page cache, workers' imports
    runs = []
    for _ in range(repeats):
        n, seconds, _ = epoch(loader)
        runs.append(1e3 * seconds / max(1, -(-n // args["batch_size"]) - 1))
    return {"yaml": str(DEMO_YAML.relative_to(REPO)), "batch_size": args["batch_size"], "max_len": args["max_len"],
            "num_workers": args["num_workers"], "train_samples": len(dm.datasets["train"]),
            "batch_ms": sorted(runs)[len(runs) // 2], "epochs": repeats}


def report_demo(demo: dict, step_s: float | None) -> None:
    """Add the demo training step to ``demo`` and print the comparison."""
    demo["demo_step_ms"] = None if step_s is None else 1e3 * step_s
    demo["step_over_batch"] = None if step_s is None else 1e3 * step_s / demo["batch_ms"]
    print(f"demo ({demo['yaml']}: batch {demo['batch_size']}, max_len {demo['max_len']}, {demo['num_workers']} workers, "
          f"{demo['train_samples']} clips): {demo['batch_ms']:.2f} ms per batch; training step "
          + (f"{demo['demo_step_ms']:.0f} ms ({demo['step_over_batch']:.0f}x a batch)" if step_s
             else "not measured (run hyperbolic_overhead.py first)"))


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv,
                      {"demo-only": "only the demo YAML's loader against its training step (seconds; "
                                    "writes data_loading_demo.json)"})
    samples, repeats = (2 * BATCH + 4, 1) if args.quick else (40 * BATCH, 7)
    step_s = demo_step_seconds(args.out)
    if args.demo_only:
        with tempfile.TemporaryDirectory() as tmp:
            demo = demo_loader(demo_data_args(args.quick, Path(tmp)), repeats)
        report_demo(demo, step_s)
        write_results("data_loading_demo", args.out, {
            "command": "python benchmarks/data_loading.py --demo-only" + (" --quick" if args.quick else ""),
            "quick": args.quick, "demo": demo})
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {layout: write_corpus(Path(tmp), samples, layout) for layout in LAYOUTS}
        common = {layout: dict(dataset="csl_daily", label_dir=str(label_dir), pose_dir=str(pose_dir),
                               tokenizer="synthsign-zh", batch_size=BATCH, max_len=MAX_LEN)
                  for layout, (label_dir, pose_dir) in corpora.items()}
        # the cache holds the normalised float32 part nodes, the same from either layout: build it from one
        packed_dm = SignTranslationDataModule(**common["array"])
        pack_s, _ = timed(packed_dm.prepare_data)
        packed_dm.setup("fit")
        one_batch = next(iter(packed_dm.train_dataloader()))
        transport = transport_ms(one_batch, 2, samples // BATCH, repeats)
        to_shared = share_ms(one_batch, repeats)
        del packed_dm  # a live memory map keeps the pages it touched from being evicted
        demo = demo_loader(demo_data_args(args.quick, Path(tmp)), repeats)
        cache_files = list((corpora["array"][0] / "packed").iterdir())
        cache_mb = sum(p.stat().st_size for p in cache_files) / 2 ** 20
        all_files = cache_files + [p for _, pose_dir in corpora.values() for p in pose_dir.iterdir()]
        sources = {f"pickles ({layout})": (common[layout], False) for layout in LAYOUTS}
        sources["packed"] = (common["array"], True)
        source_mb = {f"pickles ({layout})": sum(p.stat().st_size for p in pose_dir.iterdir()) / 2 ** 20
                     for layout, (_, pose_dir) in corpora.items()} | {"packed": cache_mb}
        read_rate = {source: read_stage(*sources[source], repeats) for source in sources}
        for cache in ("warm", "cold"):
            for workers in (0, 2):
                if cache == "warm":  # one loader per source for all its epochs, as a training run maps its cache once
                    loaders = {source: train_loader(*sources[source], workers) for source in sources}

                    def run(source: str) -> tuple[int, float, float]:
                        return epoch(loaders[source])
                else:
                    loaders = None  # no live map may hold pages the eviction should drop

                    def run(source: str) -> tuple[int, float, float]:
                        return fresh_epoch(*sources[source], workers, all_files)
                # the sources take turns epoch by epoch, so a slow drift of the machine's speed
                # (this VM's moves ±30 % over minutes) reaches all of them alike
                runs = {source: [] for source in sources}
                for _ in range(repeats):
                    for source in sources:
                        runs[source].append(run(source))
                for source in sources:
                    peak = peak_heap(lambda: run(source))
                    n, seconds, first_s = sorted(runs[source], key=lambda r: r[1])[len(runs[source]) // 2]  # median
                    rate = (n - BATCH) / seconds  # the first batch is timed apart
                    rows.append({"cache": cache, "source": source, "workers": workers,
                                 "read_clips_per_s": read_rate[source] if cache == "warm" else None,
                                 "samples_per_s": rate, "batch_ms": 1e3 * BATCH / rate, "first_batch_s": first_s,
                                 # the first batch included: where a cold packed epoch waits for the disk
                                 "epoch_samples_per_s": n / (first_s + seconds),
                                 # what an epoch reads from the files: cold, the disk's rate
                                 "file_mb_per_s": source_mb[source] * n / samples / (first_s + seconds),
                                 "peak_heap_mb": peak / 2 ** 20})
                del loaders
    by = {(r["cache"], r["source"], r["workers"]): r for r in rows}
    speedup = {layout: {"read_stage": read_rate["packed"] / read_rate[f"pickles ({layout})"]}
               | {f"{kind}_{cache}_workers_{w}":
                  by[cache, "packed", w][key] / by[cache, f"pickles ({layout})", w][key]
                  for kind, key in (("loader", "samples_per_s"), ("epoch", "epoch_samples_per_s"))
                  for cache in ("warm", "cold") for w in (0, 2)}
               for layout in LAYOUTS}
    print_table(f"SignTranslationDataModule, {samples} clips of {FRAMES[0]}-{FRAMES[1]} frames, batch {BATCH}, "
                f"max_len {MAX_LEN}; packing took {pack_s:.1f} s; files read per epoch: "
                + ", ".join(f"{source} {mb:.0f} MB" for source, mb in source_mb.items()), rows,
                [("cache", "page cache", "s"), ("source", "source", "s"), ("workers", "workers", "d"),
                 ("read_clips_per_s", "read clips/s", ".0f"), ("samples_per_s", "samples/s", ".0f"),
                 ("batch_ms", "ms/batch", ".1f"), ("first_batch_s", "first batch s", ".2f"),
                 ("epoch_samples_per_s", "epoch samples/s", ".0f"), ("file_mb_per_s", "file MB/s", ".0f"),
                 ("peak_heap_mb", "peak heap MB", ".1f")])
    for layout, ratios in speedup.items():
        print(f"packed / pickles ({layout}): read stage {ratios['read_stage']:.1f}x; "
              + "; ".join(f"{label} (0 / 2 workers) " + ", ".join(
                  f"{cache} {ratios[f'{kind}_{cache}_workers_0']:.1f}x / {ratios[f'{kind}_{cache}_workers_2']:.1f}x"
                  for cache in ("warm", "cold"))
                  for kind, label in (("loader", "loader"), ("epoch", "whole epoch"))))
    print(f"2-worker transport alone (copies of one batch, no loading): {transport:.1f} ms/batch; "
          f"of a worker's share, moving a batch into shared memory: {to_shared:.1f} ms")
    report_demo(demo, step_s)
    write_results("data_loading", args.out, {
        "samples": samples, "frames": FRAMES, "batch": BATCH, "max_len": MAX_LEN, "repeats": repeats,
        "quick": args.quick, "pack_seconds": pack_s, "cache_mb": cache_mb, "source_mb": source_mb, "demo_step_s": step_s,
        "transport_ms_per_batch_2_workers": transport, "share_memory_ms_per_batch": to_shared,
        "speedup_packed_over_pickles": speedup, "rows": rows, "demo": demo})


if __name__ == "__main__":
    main()
