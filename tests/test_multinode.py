"""Two "nodes" of one process each on localhost over gloo, launched as a cluster launcher would
(MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE, LOCAL_RANK per process), training the CSL-News
demo config with experiments/strategies/multinode.yaml from litdata chunks written by
`lightning convert_stream`: every training sample is seen once per epoch across the nodes,
validation is scored on every dev sample gathered from both, and a SIGKILL of both nodes followed
by `--ckpt_path last` continues the same sample order."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from tests.cli_runs import REPO, TINY_GEOSIGN_MODEL

pytest.importorskip("litdata", reason="the `stream` extra (litdata) is not installed")

DEMO = str(REPO / "experiments" / "demo" / "csl_news_pretrain.yaml")
MULTINODE = str(REPO / "experiments" / "strategies" / "multinode.yaml")
# 30 SynthSign videos in CSL-News's layout, dev_fraction 0.2: 24 train (3 batches of 4 per node per
# epoch, none dropped), 6 dev (3 per node)
TINY = TINY_GEOSIGN_MODEL.replace("    hyp_dim: 16\n", "") + """\
trainer: {max_epochs: 2, enable_progress_bar: false, log_every_n_steps: 1, limit_val_batches: 1}
step_checkpoint: {every_n_train_steps: 1}
data:
  init_args:
    synthsign_kwargs: {num_train: 20, num_dev: 6, num_test: 4, num_glosses: 40}
    dev_fraction: 0.2
    max_len: 16
    batch_size: 4
    num_workers: 0
"""
NAMES = "tests.test_multinode.TrainNames"


class TrainNames(Callback):
    """Writes `$SIGNLAB_TEST_NAMES.<global rank>`: a JSON line per training batch (epoch, step, names),
    and after each validation the dev names gathered from every rank and the resulting val/bleu4."""

    def _write(self, trainer, record: dict) -> None:
        with open(f"{os.environ['SIGNLAB_TEST_NAMES']}.{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")  # one write per line: survives SIGKILL

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._write(trainer, {"epoch": trainer.current_epoch, "step": trainer.global_step, "names": batch["name"]})
        if os.environ.get("SIGNLAB_TEST_KILL_AT_STEP") == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # before the model's: its outputs are there
        self._write(trainer, {"dev": [o["name"] for o in pl_module._gathered(0)], "world": trainer.world_size})

    def on_validation_end(self, trainer, pl_module) -> None:
        self._write(trainer, {"bleu4": float(trainer.callback_metrics["val/bleu4"])})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(cwd: Path, more: list[str], env: dict, node_env: dict | None = None) -> list[subprocess.Popen]:
    """Both nodes at once, as `srun`/`torchrun` would start them; `node_env` adds one node's variables."""
    exe = Path(sys.executable).with_name("lightning")
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node), "WORLD_SIZE": "2",
                       "LOCAL_RANK": "0", **env, **(node_env or {}).get(node, {})}
        args = [str(exe), "fit", "--config", DEMO, "--config", str(cwd / "tiny.yaml"), "--config", MULTINODE,
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
                "--trainer.strategy.init_args.process_group_backend", "gloo",
                "--trainer.strategy.init_args.timeout", "0:01:00",  # a dead peer fails the survivor within a minute
                "--trainer.sync_batchnorm", "false",  # SyncBatchNorm runs on GPUs only
                "--trainer.default_root_dir", "runs/multinode", "--data.init_args.stream_dir", "chunks",
                f"--trainer.callbacks+={NAMES}", *more]
        procs.append(subprocess.Popen(args, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _launch(cwd: Path, more: list[str], env: dict, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Both nodes, waited for; returns their results."""
    procs = _start_nodes(cwd, more, env)
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _records(cwd: Path, rank: int) -> list[dict]:
    path = cwd / f"names.{rank}"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("multinode")
    (cwd / "tiny.yaml").write_text(TINY)
    convert = subprocess.run([sys.executable, "-m", "lightning_modules.cli", "convert_stream", "--config", DEMO, "--config", "tiny.yaml",
                              "--out", "chunks", "--workers", "1"], cwd=cwd, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert convert.returncode == 0, convert.stderr[-3000:]
    assert json.loads(convert.stdout.splitlines()[-1]) == {"train": 24, "dev": 6, "test": 6}
    return cwd


@pytest.fixture(scope="module")
def whole(chunks):
    """One uninterrupted two-node run, 2 epochs (both tests read it)."""
    for result in _launch(chunks, ["--trainer.default_root_dir", "runs/whole"], {"SIGNLAB_TEST_NAMES": str(chunks / "whole")}):
        assert result.returncode == 0, result.stderr[-4000:]
    return [[json.loads(line) for line in (chunks / f"whole.{rank}").read_text().splitlines()] for rank in (0, 1)]


@pytest.mark.slow
def test_two_nodes_see_every_sample_once_per_epoch_and_score_every_dev_sample(chunks, whole):
    train = json.loads((chunks / "chunks" / "signlab_stream.json").read_text())["splits"]["train"]
    for epoch in (0, 1):
        seen = [name for records in whole for r in records if r.get("epoch") == epoch for name in r["names"]]
        assert len(seen) == train == len(set(seen)), epoch  # each of the 24 once, across both nodes
        mine = [{n for r in records if r.get("epoch") == epoch for n in r["names"]} for records in whole]
        assert mine[0] and mine[1] and not mine[0] & mine[1]  # both nodes trained, on different samples
    orders = [[n for r in whole[0] if r.get("epoch") == e for n in r["names"]] for e in (0, 1)]
    assert orders[0] != orders[1]  # reshuffled each epoch
    for records in whole:
        devs = [r for r in records if "dev" in r]
        assert devs and all(r["world"] == 2 and len(r["dev"]) == 6 == len(set(r["dev"])) for r in devs)
    bleu = [[r["bleu4"] for r in records if "bleu4" in r] for records in whole]
    assert bleu[0] == bleu[1] and len(bleu[0]) == 2  # the same score on both: reduced over all ranks


@pytest.mark.slow
def test_sigkill_of_both_nodes_then_ckpt_path_last_continues_the_same_order(chunks, whole):
    names = {"SIGNLAB_TEST_NAMES": str(chunks / "names")}
    # killed at the start of epoch 1's second batch, right after step 4's last.ckpt
    killed = _launch(chunks, [], {**names, "SIGNLAB_TEST_KILL_AT_STEP": "4"})
    assert all(r.returncode == -signal.SIGKILL for r in killed), [r.stderr[-2000:] for r in killed]
    for result in _launch(chunks, ["--ckpt_path", "last"], names):
        assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        run = [(r["step"], r["names"]) for r in _records(chunks, rank) if "names" in r]
        reference = [(r["step"], r["names"]) for r in whole[rank] if "names" in r]
        # the killed batch (step 4) is logged twice: once before the kill, once after the resume
        assert [entry for entry in run if entry[0] != 4] == [entry for entry in reference if entry[0] != 4], rank
        assert [entry for entry in run if entry[0] == 4] == [entry for entry in reference if entry[0] == 4] * 2, rank


@pytest.mark.slow
def test_a_node_that_dies_mid_epoch_stops_the_other_with_an_error_not_a_hang(chunks):
    # only node 1 is killed (SIGNLAB_TEST_KILL_AT_STEP in its environment alone); node 0's next
    # collective fails on the closed connection (or, were the peer silent, after the 1-minute
    # process-group timeout) instead of waiting forever
    procs = _start_nodes(chunks, ["--trainer.default_root_dir", "runs/dead"],
                         {"SIGNLAB_TEST_NAMES": str(chunks / "dead")}, {1: {"SIGNLAB_TEST_KILL_AT_STEP": "1"}})
    assert procs[1].wait(timeout=150) == -signal.SIGKILL
    start = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        procs[0].kill()
    assert procs[0].returncode not in (0, None) and time.monotonic() - start < 90
    # gloo reports the dead peer as "Connection closed by peer" or "Connection reset by peer" (which
    # one depends on where the survivor was); a silent peer would give a timeout error instead
    assert any(m in err for m in ("closed by peer", "reset by peer", "timed out", "Timeout")), err[-3000:]


def test_the_pretraining_checkpoint_is_what_fine_tuning_init_from_takes(chunks, whole):
    """runs/<pretraining>/checkpoints/last.ckpt -> a Uni-Sign pose model of the same shape, strictly:
    every tensor the fine-tuning model has is set from it (as --model.init_args.init_from does)."""
    import torch
    import yaml

    from lightning_modules.geosign import GeoSignTranslator
    from lightning_modules.init_weights import load_initial_weights

    demo = yaml.safe_load(Path(DEMO).read_text())["model"]["init_args"]
    demo.update(yaml.safe_load(TINY)["model"]["init_args"])
    ckpt = chunks / "runs" / "whole" / "checkpoints" / "last.ckpt"
    model = GeoSignTranslator(**demo)
    report = load_initial_weights(model, str(ckpt), strict=True)
    assert not report.problems and not report.fresh
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items() if key in trained)
