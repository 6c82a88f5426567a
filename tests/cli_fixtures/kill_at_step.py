"""Test-only callbacks for crash/resume tests, added with `--trainer.callbacks+=...`.

`StepLog` appends `global_step loss batch-names rng-fingerprint` after every optimizer step to
`$SIGNLAB_TEST_STEP_LOG` (one write per line, so it survives SIGKILL); the last two fields, taken
at the batch's start, tell a data-order difference from an RNG one when a resume test fails. `KillAtStep` SIGKILLs the process at the start of
the batch after `$SIGNLAB_TEST_KILL_AT_STEP` optimizer steps, i.e. right after that step's
checkpoint was written; unset, it does nothing (so the resumed run can keep the same flags).
"""
from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback


class StepLog(Callback):
    def __init__(self) -> None:
        self._start = ""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        names = ",".join(batch.get("name", [])) or "-"
        self._start = f"{names} {int(torch.get_rng_state().long().sum())}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        path = os.environ.get("SIGNLAB_TEST_STEP_LOG")
        if path and trainer.is_global_zero:
            with open(path, "a") as f:
                f.write(f"{trainer.global_step} {float(outputs['loss']).hex()} {self._start}\n")


class KillAtStep(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = os.environ.get("SIGNLAB_TEST_KILL_AT_STEP")
        if step is not None and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)
