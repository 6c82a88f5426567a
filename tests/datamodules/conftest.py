from __future__ import annotations

import numpy as np
import pytest

from tests.datamodules.csl_daily import write_csl


@pytest.fixture
def csl(tmp_path):
    """(label folder, pose folder, tokenizer file) of a CSL-Daily-layout corpus: 5 train, 3 dev
    (one of 300 frames, longer than any max_len used) and 2 test samples."""
    return write_csl(tmp_path, {"train": [5, 9, 3, 7, 4], "dev": [6, 300, 2], "test": [3, 3]},
                     np.random.default_rng(0))
