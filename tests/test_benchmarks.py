"""Smoke test of the benchmark scripts: each runs end to end in --quick mode and writes the JSON the
README's tables are made from. No timing is asserted (timings belong to the benchmarks)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from benchmarks import branch_ops, data_loading, demo_results, hyperbolic_overhead, metric_reproduction, sampling
from benchmarks.common import print_table
from lightning_modules.geosign import GeoSignTranslator

REPO = Path(__file__).resolve().parents[1]


def _machine_ok(machine: dict) -> None:
    assert machine["cpus"] >= 1 and machine["torch"]
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3


@pytest.mark.slow  # three tiny Lightning fits per mode plus the branch: ~15 s on 2 shared cores
def test_hyperbolic_overhead_quick_writes_json(tmp_path, capsys):
    hyperbolic_overhead.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "hyperbolic_overhead.json").read_text())
    assert result["quick"] is True
    rows = {(r["config"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {("quick", m) for m in ("pooled", "token")}
    for row in rows.values():
        assert row["steps"] == 2 and row["step_ms"] > 0 and row["baseline_ms"] > 0
        assert row["compile_hyperbolic"] is False and len(row["ratios"]) == 1
        quick = hyperbolic_overhead.QUICK["quick"]  # the row's shape is the batch it timed
        assert (row["batch"], row["frames"], row["tokens"], row["hyp_dim"], row["lm_width"]) == (
            quick["batch"], quick["frames"], quick["tokens"], quick["hyp_dim"], quick["mt5"]["d_model"])
        assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"] and math.isfinite(row["ratio"])
    variants = {(r["precision"], r["mode"], r["variant"]) for r in result["branch_rows"]}
    assert variants == {(p, m, v) for p in ("32-true", "bf16-mixed") for m in ("pooled", "token")
                        for v in ("ours", "listings (geoopt)")}
    for row in result["branch_rows"]:
        assert row["fwd_bwd_ms"] > 0 and row["speedup_vs_listings"] > 0
        assert row["euclidean_ms"] > 0 and row["geometry_speedup"] > 0
        assert row["speedup_q1"] <= row["speedup_vs_listings"] <= row["speedup_q3"]
        if row["variant"] == "listings (geoopt)":  # its own per-round ratio is exactly 1
            assert row["speedup_vs_listings"] == row["speedup_q1"] == row["speedup_q3"] == 1.0
    _machine_ok(result["machine"])
    out = capsys.readouterr().out
    assert "x baseline" in out and "x vs listings" in out and "x geometry only" in out


def test_branch_ops_counts_each_modes_forward_and_backward_ops(tmp_path, capsys):
    branch_ops.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "branch_ops.json").read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert set(rows) == {"pooled", "token"} and result["quick"] is True
    for row in rows.values():
        assert row["total_ops"] == row["forward_ops"] + row["backward_ops"]
        assert row["forward_ops"] > 50 and row["backward_ops"] > 50 and row["fwd_bwd_ms"] > 0
        assert sum(n for _, n in row["top_backward_nodes"]) <= row["backward_ops"]
    # the written-out backwards run as autograd nodes of their own, and are counted under them
    assert "_ImplicitFrechetBackward" in dict(rows["pooled"]["top_backward_nodes"])
    assert "_MobiusAffineBackward" in dict(rows["token"]["top_backward_nodes"])
    _machine_ok(result["machine"])
    assert "pooled backward, ops per autograd node: " in capsys.readouterr().out


def test_overhead_configs_are_the_experiment_yamls():
    """The demo and paper rows are built from the YAMLs they are named after (labels match shapes)."""
    demo, paper = hyperbolic_overhead.yaml_config("demo"), hyperbolic_overhead.yaml_config("paper")
    pooled = yaml.safe_load((REPO / "experiments/demo/geosign_pooled.yaml").read_text())
    assert (demo["batch"], demo["frames"]) == (pooled["data"]["init_args"]["batch_size"], pooled["data"]["init_args"]["max_len"])
    assert demo["hyp_dim"] == pooled["model"]["init_args"]["hyp_dim"] == 64
    assert demo["encoder"] == pooled["model"]["init_args"]["encoder"] and demo["mt5"] == pooled["model"]["init_args"]["mt5_config"]
    assert demo["init_args"]["hyp_init_scale"] == 0.125 and demo["trainer"]["gradient_clip_val"] == 1.0
    assert demo["data"]["data_dir"] == "data/synthsign_40glosses"
    paper_yaml = yaml.safe_load((REPO / "experiments/geosign_token.yaml").read_text())
    assert (paper["batch"], paper["frames"], paper["hyp_dim"]) == (8, 256, 256) == (
        paper_yaml["data"]["init_args"]["batch_size"], paper_yaml["data"]["init_args"]["max_len"],
        paper_yaml["model"]["init_args"]["hyp_dim"])
    assert paper["mt5"]["d_model"] == 768 and paper["mt5_is_paper_lm"] and paper["data"] is None
    model = hyperbolic_overhead.build_model(paper | {"mt5": hyperbolic_overhead.QUICK["quick"]["mt5"]}, "pooled")
    assert model.hyperbolic.part_proj.weight.shape == (4, 256, 256)  # paper encoder width 256 → hyp_dim 256
    assert model.hparams.alpha_init == 0.7 and model.hparams.hyp_label_smoothing == 0.2


def test_overhead_refuses_yamls_that_differ_beyond_the_branch(tmp_path, monkeypatch):
    docs = {m: yaml.safe_load(p.read_text()) for m, p in hyperbolic_overhead.YAMLS["demo"].items()}
    docs["token"]["model"]["init_args"]["hyp_dim"] = 32
    paths = {}
    for mode, doc in docs.items():
        paths[mode] = tmp_path / f"{mode}.yaml"
        paths[mode].write_text(yaml.safe_dump(doc))
    monkeypatch.setitem(hyperbolic_overhead.YAMLS, "demo", paths)
    monkeypatch.setattr(hyperbolic_overhead, "REPO", tmp_path)
    with pytest.raises(ValueError, match="differ beyond"):
        hyperbolic_overhead.yaml_config("demo")


def test_branch_off_is_the_baseline_network_and_restores_the_branch():
    cfg = hyperbolic_overhead.QUICK["quick"]
    model = GeoSignTranslator(mt5_config=cfg["mt5"], encoder=cfg["encoder"], hyperbolic="token", hyp_dim=cfg["hyp_dim"])
    branch, blend = model.hyperbolic, model.blend
    with hyperbolic_overhead.branch_off(model):
        assert model.hyperbolic is None and model.blend is None and model.hyperbolic_parameters() == []
    assert model.hyperbolic is branch and model.blend is blend
    assert "hyperbolic.attention.M_key" in model.state_dict()


def test_data_loading_quick_writes_json(tmp_path, capsys):
    data_loading.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "data_loading.json").read_text())
    rows = {(r["cache"], r["source"], r["workers"]): r for r in result["rows"]}
    sources = ("pickles (array)", "pickles (per-frame)", "packed")
    assert set(rows) == {(c, s, w) for c in ("warm", "cold") for s in sources for w in (0, 2)}
    for (cache, _, _), row in rows.items():
        assert row["samples_per_s"] > 0 and row["peak_heap_mb"] >= 0
        assert row["epoch_samples_per_s"] > 0
        assert (row["read_clips_per_s"] > 0) if cache == "warm" else row["read_clips_per_s"] is None
    speedup = result["speedup_packed_over_pickles"]
    assert set(speedup) == {"array", "per-frame"}
    for layout in ("array", "per-frame"):
        for cache in ("warm", "cold"):
            assert speedup[layout][f"loader_{cache}_workers_0"] == pytest.approx(
                rows[cache, "packed", 0]["samples_per_s"] / rows[cache, f"pickles ({layout})", 0]["samples_per_s"])
            assert speedup[layout][f"epoch_{cache}_workers_0"] == pytest.approx(
                rows[cache, "packed", 0]["epoch_samples_per_s"] / rows[cache, f"pickles ({layout})", 0]["epoch_samples_per_s"])
    assert result["cache_mb"] > 0 and result["pack_seconds"] > 0 and result["transport_ms_per_batch_2_workers"] > 0
    assert result["share_memory_ms_per_batch"] > 0  # fresh shared pages cost more than a plain copy
    # the cache holds 69 of 133 keypoints in float32: fewer bytes than either pickle layout
    assert result["source_mb"]["packed"] < min(result["source_mb"][s] for s in sources[:2])
    for (_, source, _), row in rows.items():  # every epoch reads all of its source's clips
        assert row["file_mb_per_s"] == pytest.approx(
            result["source_mb"][source] * row["epoch_samples_per_s"] / result["samples"])
    demo_yaml = yaml.safe_load(data_loading.DEMO_YAML.read_text())["data"]["init_args"]
    demo = result["demo"]  # the demo row reads the demo YAML's loader settings
    assert demo["yaml"] == "experiments/demo/geosign_token.yaml" and demo["batch_ms"] > 0
    assert (demo["batch_size"], demo["max_len"], demo["num_workers"]) == (
        demo_yaml["batch_size"], demo_yaml["max_len"], demo_yaml["num_workers"])
    assert all("keeps_up" not in row for row in result["rows"])  # release-sized batches are not the demo's
    _machine_ok(result["machine"])
    assert "samples/s" in capsys.readouterr().out


def test_data_loading_takes_the_demo_step_only_from_the_demo_yaml(tmp_path):
    overhead = {"configs": {"demo": {"yamls": {"token": "experiments/demo/geosign_token.yaml"}}},
                "rows": [{"config": "demo", "mode": "pooled", "step_ms": 100.0},
                         {"config": "demo", "mode": "token", "step_ms": 120.0}]}
    (tmp_path / "hyperbolic_overhead.json").write_text(json.dumps(overhead))
    assert data_loading.demo_step_seconds(tmp_path) == pytest.approx(0.12)
    overhead["configs"]["demo"]["yamls"]["token"] = "somewhere/else.yaml"
    (tmp_path / "hyperbolic_overhead.json").write_text(json.dumps(overhead))
    assert data_loading.demo_step_seconds(tmp_path) is None
    args = data_loading.demo_data_args(quick=False, tmp=tmp_path)
    assert args["data_dir"] == str(REPO / "data/synthsign_40glosses") and args["tokenizer"] == "synthsign-zh"
    assert data_loading.demo_data_args(quick=True, tmp=tmp_path)["synthsign_kwargs"]["num_glosses"] == 40


def test_batch_copies_hand_out_fresh_equal_batches():
    batch = {"body": torch.arange(6.0).view(1, 2, 3), "name": ["a"]}
    copies = data_loading._BatchCopies(batch, 3)
    copy = copies[1]
    assert len(copies) == 3 and torch.equal(copy["body"], batch["body"]) and copy["name"] == ["a"]
    assert copy["body"].untyped_storage().data_ptr() != batch["body"].untyped_storage().data_ptr()


def test_print_table_aligns_columns(capsys):
    print_table("t", [{"a": "x", "b": 1.25}, {"a": "long", "b": 10.0}], [("a", "name", "s"), ("b", "value", ".1f")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "t"
    assert len({len(line) for line in lines[1:]}) == 1  # header and rows share the widths
    assert lines[2].endswith("1.2") and lines[3].split() == ["long", "10.0"]
    print_table("t", [{"a": None}], [("a", "value", ".1f")])  # a missing value prints as a dash
    assert capsys.readouterr().out.splitlines()[2].split() == ["–"]


def _save_unfitted(module, path) -> str:
    trainer = Trainer(logger=False, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=path.parent)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def production_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny generators fitted for one step on a 3-sequence SynthSign test split (so their
    checkpoints carry the data module, as the CLI's do) and an untrained back-translator."""
    from datamodules.production import GlossToPoseDataModule
    from lightning_modules.back_translator import BackTranslator
    from lightning_modules.posevq_diffusion import PoseVQDiffusion

    root = tmp_path_factory.mktemp("sampling")
    vqvae = sampling.random_vqvae_checkpoint(root / "vqvae.ckpt", quick=True)
    data = dict(data_dir=str(root / "synthsign"), batch_size=2, max_frames=64,
                synthsign_kwargs={"num_train": 4, "num_dev": 2, "num_test": 3})
    paths = {}
    for method, flag in sampling.CHECKPOINT_FLAGS.items():
        torch.manual_seed(0)
        model = PoseVQDiffusion(vqvae, method=method, network=sampling.QUICK_NETWORK, max_length=64,
                                diffusion={"mp_iterations": 3}, length={"candidates": 1, "knn_k": 2, "knn_l": 2},
                                optim={"warmup_steps": 1}, num_logged_samples=0)
        trainer = Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                          default_root_dir=root / flag)
        trainer.fit(model, datamodule=GlossToPoseDataModule(**data))
        paths[flag] = str(root / f"{flag}.ckpt")
        trainer.save_checkpoint(paths[flag])
    bt = BackTranslator(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0, max_text_len=8,
                        beam_size=1)
    paths["back-translator"] = _save_unfitted(bt, root / "bt.ckpt")
    return paths


@pytest.mark.slow  # three one-step fits, five `lightning test` runs and the quick timing: ~20 s
def test_sampling_quick_times_every_sampler_and_back_translates_every_checkpoint(
        production_checkpoints, tmp_path, capsys):
    args = ["--quick", "--out", str(tmp_path)]
    for flag, path in production_checkpoints.items():
        args += [f"--{flag}", path]
    sampling.main(args)
    result = json.loads((tmp_path / "sampling.json").read_text())
    assert result["quick"] is True and result["compile_error"] is None
    names = ["PoseVQ-Diffusion 100 steps (T)", "PoseVQ-Diffusion 20 steps", "PoseVQ-Diffusion 10 steps",
             "PoseVQ-MP 10 it.", "PoseVQ-AR (KV cache)"]
    timing = {(r["setting"], r["frames"], r["batch"]): r for r in result["timing"]}
    assert set(timing) == {(n, f, b) for n in names for f in sampling.QUICK_FRAMES for b in (1, sampling.QUICK_BATCH)}
    for (name, frames, batch), row in timing.items():
        ar = timing["PoseVQ-AR (KV cache)", frames, batch]
        assert row["sequences_per_s"] == pytest.approx(1 / row["seconds_per_sequence"])
        assert row["speedup_vs_ar"] == pytest.approx(row["sequences_per_s"] / ar["sequences_per_s"])
        assert row["vq_decode_s_per_sequence"] > 0 and row["compiled"] is False
        # network evaluations: denoising steps, Mask-Predict iterations, or one per AR token (frames x 3 parts)
        expected = {"diffusion": lambda: int(name.split()[1]), "mask_predict": lambda: 10,
                    "autoregressive": lambda: 3 * frames}[row["method"]]()
        assert row["steps"] == expected

    rows = {r["setting"]: r for r in result["back_translation"]}
    assert set(rows) == {"PoseVQ-Diffusion 100 steps (T)", "PoseVQ-Diffusion 20 steps", "PoseVQ-Diffusion 10 steps",
                         "PoseVQ-MP 3 it.", "PoseVQ-AR (KV cache)"}
    for name, row in rows.items():
        assert row["num_samples"] == 3  # the whole test split, each sequence once
        assert row["wer"] >= 0 and 0 <= row["bleu4"] <= 100 and row["dtw_mje"] >= 0
        assert row["gt_wer"] == rows["PoseVQ-AR (KV cache)"]["gt_wer"]  # same back-translator, same references
        report = Path(row["report"])
        assert report.parent.parent == tmp_path / "sampling_reports" and name.split()[0] in report.read_text()
    assert [rows[n]["steps"] for n in names[:3]] == [100, 20, 10] and rows["PoseVQ-MP 3 it."]["steps"] == 3
    goal = result["goal"]
    assert goal["frames"] == max(sampling.QUICK_FRAMES) and goal["steps"] == 10
    assert goal["wer"] == rows["PoseVQ-Diffusion 10 steps"]["wer"]
    assert goal["ar_wer"] == rows["PoseVQ-AR (KV cache)"]["wer"]
    assert goal["wer_no_worse"] == (goal["wer"] <= goal["ar_wer"])
    _machine_ok(result["machine"])
    out = capsys.readouterr().out
    assert "x AR" in out and "BLEU-4" in out


def test_sampling_refuses_a_checkpoint_of_another_method(production_checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"mp\.ckpt.*'mask_predict'.*--ar"):
        sampling.main(["--quick", "--out", str(tmp_path), "--ar", production_checkpoints["mp"],
                       "--back-translator", production_checkpoints["back-translator"]])
    with pytest.raises(SystemExit):  # the WER needs the back-translator
        sampling.main(["--quick", "--out", str(tmp_path), "--ar", production_checkpoints["ar"]])
    assert not (tmp_path / "sampling.json").exists()


def test_gpu_check_exits_cleanly_without_cuda(tmp_path, capsys, monkeypatch):
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == 0
    assert gpu.NO_CUDA in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu"])  # the CPU path is for --quick test runs only


def test_gpu_check_plans_the_paper_shapes():
    from benchmarks import gpu

    p = gpu.plan()
    cfg = p["model"]
    assert (cfg["batch"], cfg["frames"], cfg["tokens"], cfg["hyp_dim"]) == (8, 256, 64, 256)
    assert cfg["encoder"]["hidden"][-1] == 256 and cfg["init_args"]["alpha_init"] == 0.7
    mt5 = cfg["mt5"]  # google/mt5-base's shape, random weights
    assert (mt5["d_model"], mt5["num_layers"], mt5["num_decoder_layers"], mt5["vocab_size"]) == (768, 12, 12, 250112)
    assert p["modes"] == ("baseline", "pooled", "token") and p["precision"] == "bf16-mixed"
    assert p["paper_forward_ms"] == {"baseline": 415.73, "pooled": 1630.0, "token": 2550.0}
    assert p["sampling"] == {"frames": 256, "batches": (1, 8), "diffusion_steps": 10}
    quick = gpu.plan(quick=True)["model"]
    assert (quick["batch"], quick["frames"], quick["mt5"]["d_model"]) == (2, 8, 32)


@pytest.mark.slow  # tiny Geo-Sign forward/fit on CPU under bf16 autocast, two tiny samplers: ~40 s
def test_gpu_check_quick_on_cpu_runs_every_item(tmp_path, capsys):
    from benchmarks import gpu

    assert gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = {(r["item"], r["mode"], r["shape"]): r for r in result["rows"]}
    for mode in ("baseline", "pooled", "token"):
        forward = rows["forward bf16", mode, "B2 T8 L5 hyp16 LM32x1"]
        assert forward["ms"] > 0 and forward["q1"] <= forward["ms"] <= forward["q3"]
        assert forward["paper_ms"] == gpu.PAPER_FORWARD_MS[mode]
        assert rows["step bf16-mixed", mode, "B2 T8 L5 hyp16 LM32x1"]["ms"] > 0
    for mode in ("pooled", "token"):
        assert rows["step bf16-mixed, compile_hyperbolic", mode, "B2 T8 L5 hyp16 LM32x1"]["note"].startswith("skipped")
    deepspeed = rows["step DeepSpeed ZeRO-2 (1 GPU), bf16", "token", "B2 T8 L5 hyp16 LM32x1"]
    assert deepspeed["ms"] is None and deepspeed["note"].startswith("skipped")  # no deepspeed here, or no CUDA
    sampled = {(item, shape) for item, _, shape in rows if item.startswith("sampling")}
    assert sampled == {(f"sampling {name}", f"B{b} T16") for name in ("PoseVQ-Diffusion 10 steps", "PoseVQ-AR (KV cache)")
                       for b in (1, 2)}
    assert all(rows[item, None, shape]["ms"] > 0 for item, shape in sampled)
    assert result["device"] == "cpu" and result["quick"] is True
    _machine_ok(result["machine"])
    assert "GPU check on cpu" in capsys.readouterr().out


# ---- metric reproduction ----------------------------------------------------------------------------


def _write_predictions(directory: Path, split: str, hyps: dict[str, str], refs: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{split}_tmp_pres.txt").write_text("".join(f"sample: {k}, prediction: {v}\n" for k, v in hyps.items()))
    (directory / f"{split}_tmp_refs.txt").write_text("".join(f"sample: {k}, ground-truth: {v}\n" for k, v in refs.items()))


def test_metric_reproduction_scores_what_is_present_and_lists_the_rest(tmp_path, capsys):
    texts = {"a": "the cat sat on the mat today", "b": "a dog ran in the park at noon"}
    _write_predictions(tmp_path / "data" / "eval_how2sign_pose_only", "test", texts, texts)
    result = metric_reproduction.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "metric_reproduction.json").read_text())["rows"] == result["rows"]
    (row,) = result["rows"]
    assert row["set"] == "how2sign test" and row["samples"] == 2 and row["bleu4"] == pytest.approx(100.0)
    assert row["published_bleu4"] == 14.50 and row["reproduced"] is False  # perfect predictions are not Uni-Sign's
    assert len(result["missing"]) == len(metric_reproduction.PUBLISHED) - 1
    _write_predictions(tmp_path / "bad" / "eval_how2sign_pose_only", "test", texts, {"a": texts["a"]})
    with pytest.raises(ValueError, match="different samples"):
        metric_reproduction.main(["--data", str(tmp_path / "bad"), "--out", str(tmp_path / "out")])


# ---- demo results -----------------------------------------------------------------------------------


def _frame(records: list[bytes]) -> bytes:
    """A LevelDB-style log as W&B writes it, for the reader's framing alone."""
    import struct
    import zlib

    out = bytearray(b":W&B" + bytes([0xE1, 0xBE, 0]))
    for record in records:
        first = True
        while True:
            left = demo_results._BLOCK - len(out) % demo_results._BLOCK
            if left < demo_results._CHUNK_HEADER:
                out += bytes(left)
                continue
            take = min(len(record), left - demo_results._CHUNK_HEADER)
            last = take == len(record)
            kind = (demo_results._FULL if last else demo_results._FIRST) if first else \
                (demo_results._LAST if last else demo_results._MIDDLE)
            out += struct.pack("<IHB", zlib.crc32(record[:take]), take, kind) + record[:take]
            record, first = record[take:], False
            if last:
                break
    return bytes(out)


def test_wandb_chunks_reassemble_records_across_blocks():
    records = [b"x" * 10, b"y" * 70000, b"z" * (demo_results._BLOCK - 30), b"w"]  # spans, and a block's short tail
    assert list(demo_results.wandb_chunks(_frame(records))) == records
    with pytest.raises(ValueError, match="W&B"):
        list(demo_results.wandb_chunks(b"not a log"))


def _offline_run(run_dir: Path, rows: list[dict]) -> None:
    import wandb

    run = wandb.init(mode="offline", dir=str(run_dir), project="signlab", settings=wandb.Settings(silent=True))
    for row in rows:
        run.log(row)
    run.finish()


def test_demo_results_from_runs_reads_wandb_files_and_reports(tmp_path, capsys):
    runs = tmp_path / "runs"
    fit = [{"val/bleu4": b, "val/bleu1": 10 + b, "epoch": e, "trainer/global_step": 10 * e + 9}
           for e, b in enumerate((2.0, 5.0, 4.0))]
    _offline_run(runs / "demo_geosign_token", [{"val/samples/size": 3}, *fit])  # a media row: no epoch
    _offline_run(runs / "demo_geosign_token", [{"test/test/bleu4": 7.5, "test/dev/bleu4": 5.0, "epoch": 0}])
    _offline_run(runs / "demo_posevq_mp", [{"val/loss": v, "epoch": e} for e, v in enumerate((4.4, 3.2))])
    report = runs / "demo_posevq_mp" / "report"
    report.mkdir(parents=True)
    (report / "report.csv").write_text("method,wer,bleu4,steps\nPoseVQ-MP,76.5,4.0,10\nGT,4.0,71.5,\n")
    result = demo_results.main(["--from-runs", str(runs), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "demo_results.json").read_text())["mode"] == "from-runs"
    (token,) = result["translation"]
    assert token["demo"] == "geosign_token" and token["config"] == "experiments/demo/geosign_token.yaml"
    assert [v["metrics"]["val/bleu4"] for v in token["fit"]["validations"]] == [2.0, 5.0, 4.0]
    assert token["fit"]["best"] == {"metric": "val/bleu4", "value": 5.0, "epoch": 1, "step": 19}  # the YAML's monitor, max
    assert token["test"]["metrics"] == {"test/test/bleu4": 7.5, "test/dev/bleu4": 5.0}
    assert token["fit"]["start_utc"] and token["fit"]["wandb_runtime_s"] >= 0
    assert token["fit"]["environment"]["python"].startswith("CPython")  # where the run ran, from its own record
    (mp,) = result["production"]
    assert mp["fit"]["best"]["value"] == 3.2  # val/loss, mode min
    assert mp["report"] == [{"method": "PoseVQ-MP", "wer": 76.5, "bleu4": 4.0, "steps": 10.0},
                            {"method": "GT", "wer": 4.0, "bleu4": 71.5, "steps": None}]
    assert "unisign_pose" in result["missing"] and "pose_vqvae" in result["missing"]
    assert "geosign_token" in capsys.readouterr().out


def test_demo_results_runs_the_cli_commands_it_times(tmp_path):
    timing = demo_results.run_command([sys.executable, "-c", "x = bytearray(50 * 2 ** 20)"])
    assert timing["wall_s"] > 0 and timing["peak_rss_gb"] > 0.04  # the child's own peak, not this process's
    with pytest.raises(RuntimeError, match="exited with 3"):
        demo_results.run_command([sys.executable, "-c", "raise SystemExit(3)"])
    # the commands run this checkout's code, whichever checkout pip installed signlab from
    demo_results.run_command([sys.executable, "-c", "import os, sys; "
                              f"sys.exit(os.environ['PYTHONPATH'].split(os.pathsep)[0] != {str(REPO)!r})"])
    joint = next(d for d in demo_results.PRODUCTION if d.name == "pose_vqvae_joint")
    assert joint.run_dir() == "runs/demo_pose_vqvae_joint" and joint.monitor() == ("val/rec_mse", "min")
    assert [d.run_dir() for d in demo_results.TRANSLATION] == [
        yaml.safe_load((REPO / "experiments/demo" / f"{d.name}.yaml").read_text())["trainer"]["default_root_dir"]
        for d in demo_results.TRANSLATION]


# ---- geometry reference -----------------------------------------------------------------------------


def test_geometry_reference_is_exact_to_float64():
    pytest.importorskip("mpmath", reason="the reference check needs mpmath (torch installs it with sympy)")
    from benchmarks import geometry

    check = geometry.reference_check(samples=2, digits=40)
    assert max(check["max_abs_err"]["signlab_float64"].values()) < 1e-12
    assert check["frechet_mean_float64_stationarity"] < 1e-12
    row = geometry.row("dist", "2x3", lambda: torch.ones(2), lambda: torch.zeros(2), torch.ones(2, dtype=torch.float64),
                       timing=False)
    assert row == {"op": "dist", "shape": "2x3", "max_err_ours": 0.0, "max_err_geoopt": 1.0}


# ---- parameter counts -------------------------------------------------------------------------------


def test_param_counts_read_the_released_counts_the_reference_data_states(tmp_path):
    from benchmarks import param_counts

    (tmp_path / "unisign_pose_state_dict.tsv").write_text("# The state_dict of ... 1,234,567 parameters.\nkey\tshape\tdtype\n")
    (tmp_path / "geosign_token_state_dict.tsv").write_text("# no count here\nkey\tshape\tdtype\n")
    assert param_counts.released_count("unisign_pose", tmp_path) == 1_234_567
    assert param_counts.released_count("geosign_token", tmp_path) is None
    (tmp_path / "README.md").write_text("| `geosign_token_state_dict.tsv` | Geo-Sign | 7,654,321 (a note) |\n")
    assert param_counts.released_count("geosign_token", tmp_path) == 7_654_321
    assert param_counts.released_count("geosign_pooled", tmp_path) is None  # no released layout of its own


# ---- demo step through the CLI ----------------------------------------------------------------------


def test_cli_steps_alternate_the_configs_and_subtract_the_short_fit(tmp_path, capsys):
    from benchmarks import cli_steps

    calls = []

    def fake_fit(config: str, steps: int) -> tuple[float, list[float]]:
        calls.append((config, steps))  # 10 s start-up, then 0.1 s a step (0.11 s with a branch), the
        step = 0.1 if config == "unisign_pose" else 0.11  # first 20 steps twice as long (warm-up)
        return 10.0 + steps * step, [2 * step] * 20 + [step] * (steps - 20)

    result = cli_steps.main(["--long", "120", "--short", "20", "--rounds", "2", "--out", str(tmp_path)], run=fake_fit)
    order = ["unisign_pose", "geosign_pooled", "geosign_token"]
    assert [c for c, steps in calls if steps == 120] == order + order[::-1]
    assert calls[:2] == [("unisign_pose", 120), ("unisign_pose", 20)]  # long, then short, per record
    steps = {(r["round"], r["config"]): r["ms_per_step"] for r in result["records"]}
    assert steps[0, "unisign_pose"] == pytest.approx(100.0) and steps[1, "geosign_token"] == pytest.approx(110.0)
    medians = {(r["round"], r["config"]): r["median_step_ms"] for r in result["records"]}
    assert medians[0, "unisign_pose"] == pytest.approx(100.0)  # the warm-up steps are left out
    for ratio in result["ratios"]:
        assert ratio["ratio_to_baseline"] == pytest.approx(1.1) and ratio["median_ratio_to_baseline"] == pytest.approx(1.1)
    assert json.loads((tmp_path / "cli_demo_steps.json").read_text())["records"] == result["records"]
    assert [(r["config"], r["rounds"]) for r in result["summary"]] == [("geosign_pooled", 2), ("geosign_token", 2)]
    assert all(r["median_ratio_to_baseline"] == pytest.approx(1.1) for r in result["summary"])
    with pytest.raises(SystemExit):
        cli_steps.main(["--long", "20", "--short", "20", "--out", str(tmp_path)], run=fake_fit)
    assert "x baseline" in capsys.readouterr().out


def test_step_times_callback_writes_one_wall_time_per_step(tmp_path):
    from benchmarks.cli_steps import StepTimes

    timer = StepTimes(str(tmp_path / "times.json"))
    for _ in range(3):
        timer.on_train_batch_start()
        time.sleep(0.01)
        timer.on_train_batch_end()
    timer.on_train_end()
    times = json.loads((tmp_path / "times.json").read_text())
    assert len(times) == 3 and all(0.01 <= t < 0.5 for t in times)


def test_demo_results_joins_a_resumed_fit_written_to_a_new_folder():
    first = demo_results.WandbRun("a1", "05:00", 10.0, 500.0, [{"epoch": 0, "val/bleu4": 1.0}], {"host": "vm"})
    other = demo_results.WandbRun("b2", "05:10", 5.0, 900.0, [{"epoch": 0, "val/bleu4": 9.0}])
    resumed = demo_results.WandbRun("a1", "05:20", 7.0, 550.0, [{"epoch": 1, "val/bleu4": 2.0}])
    run = demo_results.joined([first, other, resumed])
    assert (run.run_id, run.start_utc, run.runtime_s, run.max_sampled_rss_mb) == ("a1", "05:00", 17.0, 550.0)
    assert [row["val/bleu4"] for row in run.history] == [1.0, 2.0] and run.environment == {"host": "vm"}
