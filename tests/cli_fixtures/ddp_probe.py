"""Test-only callback for the DDP tests, added with `--trainer.callbacks+=...`.

`GatheredDevNames` writes, on rank 0, what a Geo-Sign validation epoch scored: the sample names
gathered from every rank (the model's own `_gathered`, called on all ranks since it is a
collective), plus the world size and the BatchNorm classes in the model, to
`$SIGNLAB_TEST_PROBE` as JSON lines. It runs before the model's `on_validation_epoch_end`
(Lightning calls callbacks first), while the outputs are still there.
"""
from __future__ import annotations

import json
import os

from lightning.pytorch import Callback


class GatheredDevNames(Callback):
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        names = [o["name"] for o in pl_module._gathered(0)]
        path = os.environ.get("SIGNLAB_TEST_PROBE")
        if path and trainer.is_global_zero:
            norms = sorted({type(m).__name__ for m in pl_module.modules() if "BatchNorm" in type(m).__name__})
            with open(path, "a") as f:
                f.write(json.dumps({"names": names, "world": trainer.world_size, "norms": norms}) + "\n")
