"""Training batches streamed from local litdata chunks vs the packed memory-mapped cache.

Plain script: ``python benchmarks/streaming.py [--quick] [--out DIR]``. Generates a SynthSign
corpus in a temporary folder, builds its packed cache, converts it with
``datamodules.streaming.convert`` (litdata chunks in a local folder), then times warm training
epochs (page cache filled by an untimed epoch first; one loader per path for all its epochs, as
a training run keeps its loader) of both paths on the same samples at the paper settings
(batch 16, max_len 256), main process and 2 workers, the two paths taking turns epoch by epoch so
that a drift of the shared machine's speed reaches both alike. Records the median epoch's
samples/s, the streaming/packed ratio (the goal: >= 0.8 warm with 2 workers) and the bytes
per stored frame of each path (its files on disk / frames; the chunks also hold each sample's
labels and token ids). Cold reads and object stores are not timed here (a local folder only).
Prints a table, writes ``streaming.json``.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_args, print_table, write_results  # noqa: E402
from datamodules.streaming import StreamingTranslationDataModule, convert  # noqa: E402

BATCH, MAX_LEN = 16, 256  # experiments/csl_news_pretrain.yaml: --batch-size 16, --max_length 256


def _epoch_fn(dm, epochs: list[int]) -> None:
    """Stand in for the trainer: the epoch is read from ``epochs[0]``, no batch finished yet."""
    dm._current_epoch = lambda: epochs[0]
    dm._consumed_batches = lambda: 0


def run_epoch(loader) -> tuple[int, float]:
    """(samples, seconds) of one epoch."""
    start, samples = time.perf_counter(), 0
    for batch in loader:
        samples += len(batch["name"])
    return samples, time.perf_counter() - start


def bytes_per_frame(paths: list[Path], frames: int) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / frames


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    num_train, repeats = (40, 1) if args.quick else (800, 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(data_dir=str(Path(tmp) / "synthsign"), batch_size=BATCH, max_len=MAX_LEN,
                      synthsign_kwargs={"num_train": num_train, "num_dev": 4, "num_test": 4})
        start = time.perf_counter()
        meta = convert(StreamingTranslationDataModule(**kwargs), Path(tmp) / "chunks", num_workers=2)
        convert_s = time.perf_counter() - start
        epochs = [0]
        for workers in (0, 2):
            packed = StreamingTranslationDataModule(**kwargs, num_workers=workers)
            packed.setup("fit")
            streamed = StreamingTranslationDataModule(**kwargs, num_workers=workers, stream_dir=str(Path(tmp) / "chunks"))
            streamed.setup("fit")
            loaders = {}
            for name, dm in (("packed", packed), ("streaming", streamed)):
                _epoch_fn(dm, epochs)
                loaders[name] = dm.train_dataloader()
                run_epoch(loaders[name])  # warm: pages cached, workers' imports paid once
            rates = {name: [] for name in loaders}
            for epoch in range(1, repeats + 1):
                epochs[0] = epoch
                for name, loader in loaders.items():  # turns, so a drift reaches both
                    samples, seconds = run_epoch(loader)
                    rates[name].append(samples / seconds)
            medians = {name: statistics.median(r) for name, r in rates.items()}
            for name in loaders:
                rows.append({"path": name, "workers": workers, "samples_per_s": medians[name],
                             "vs_packed": medians[name] / medians["packed"], "epochs": repeats})
        index = packed.datasets["train"].poses
        frames = index.frames
        cache = Path(kwargs["data_dir"]) / "unisign" / "packed"
        stored = {"packed": bytes_per_frame([*index.array_paths.values(), cache / "train.index.json"], frames),
                  "streaming": bytes_per_frame(list((Path(tmp) / "chunks" / "train").iterdir()), frames)}
        for row in rows:
            row["bytes_per_frame"] = stored[row["path"]]
    print_table(f"Warm training epochs, {num_train} SynthSign samples ({frames} frames), batch {BATCH}, "
                f"max_len {MAX_LEN}; conversion {convert_s:.1f} s", rows,
                [("path", "path", "s"), ("workers", "workers", "d"), ("samples_per_s", "samples/s", ".0f"),
                 ("vs_packed", "x packed", ".2f"), ("bytes_per_frame", "bytes/frame", ".0f")])
    write_results("streaming", args.out, {
        "command": "python benchmarks/streaming.py" + (" --quick" if args.quick else ""), "quick": args.quick,
        "samples": num_train, "frames": frames, "batch_size": BATCH, "max_len": MAX_LEN,
        "convert_seconds": convert_s, "splits": meta["splits"], "rows": rows})


if __name__ == "__main__":
    main()
