"""With on_bad_sample="skip", a batch whose every sample is bad is left out and counted, and a
mid-epoch resume still starts at the first batch the trainer did not finish."""
from __future__ import annotations

import pytest
from torch.utils.data import Dataset

import datamodules.batches as batches
from datamodules.batches import (BadSampleError, ShardSampler, SplitDataModule, _split_skipped, all_skipped_batch,
                                 skip_marker)
from tests.datamodules.csl_daily import csl_datamodule

SIZE, BATCH, SEED = 22, 4, 3
ORDER = [index for index, _ in ShardSampler(SIZE, shuffle=True, seed=SEED)]  # epoch 0's order
BAD = set(ORDER[BATCH:2 * BATCH]) | set(ORDER[4 * BATCH:5 * BATCH])  # the 2nd and 5th batches: all bad


class _Keys(Dataset):
    def __len__(self):
        return SIZE

    def __getitem__(self, key):
        index = key[0]
        return skip_marker(f"s{index}", "invalid", f"s{index} is bad") if index in BAD else {"key": index}


def _collate(items):
    good, skipped = _split_skipped(items)
    return all_skipped_batch(skipped) if not good else [item["key"] for item in good]


class _Data(SplitDataModule):
    dataset, data_dir, synthsign_kwargs = "test", None, {}
    batch_size, num_workers, seed, collate_fn = BATCH, 0, SEED, staticmethod(_collate)

    def _build(self, split):
        return _Keys()


def _data(consumed: int = 0) -> _Data:
    dm = _Data()
    dm.setup("fit")
    dm._consumed_batches = lambda: consumed  # what the trainer has finished (restored)
    return dm


def test_all_bad_batches_are_left_out_counted_and_resume_exactly():
    dm = _data()
    epoch = list(dm.train_dataloader())
    assert epoch == [ORDER[i:i + BATCH] for i in range(0, SIZE, BATCH) if not set(ORDER[i:i + BATCH]) & BAD]
    assert dm.skipped_batches == 2 and sorted(dm.skipped["invalid"]) == sorted(f"s{i}" for i in BAD)

    # a checkpoint after 3 finished batches; Lightning has fetched one batch ahead by then, past the
    # 5th (bad) one: both left-out batches precede the position
    dm = _data()
    loader = iter(dm.train_dataloader())
    [next(loader) for _ in range(4)]
    state = dm.state_dict()
    assert state == {"dropped_batches": 2, "skipped_batches": 2}
    resumed = _data(consumed=3)
    resumed.load_state_dict(state)
    assert list(resumed.train_dataloader()) == epoch[3:]
    assert resumed.skipped_batches == 2  # counted before the checkpoint, none after
    resumed._consumed_batches = lambda: 0  # the next epoch starts from its first batch
    assert list(resumed.train_dataloader()) == epoch
    assert resumed.state_dict() == {"dropped_batches": 2, "skipped_batches": 4}


def test_a_resume_at_an_epoch_boundary_ignores_the_last_epochs_count():
    dm = _data()
    list(dm.train_dataloader())
    resumed = _data(consumed=0)  # a checkpoint at validation end: the next epoch starts fresh
    resumed.load_state_dict(dm.state_dict())
    assert len(list(resumed.train_dataloader())) == len(list(_data().train_dataloader()))


def test_under_ddp_an_all_bad_batch_still_raises(monkeypatch):
    monkeypatch.setattr(batches, "rank_and_world", lambda: (0, 2))
    with pytest.raises(BadSampleError, match=r"under DDP\): s1 is bad"):
        _Data()._empty_batch([("s1", "invalid", "s1 is bad")])


def test_translation_eval_batch_of_only_bad_samples_is_left_out(csl):  # noqa: F811
    (csl[1] / "Sdev001_P0000_T00.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(BadSampleError, match="Sdev001_P0000_T00"):  # raise mode: still an error
        dm = csl_datamodule(csl, batch_size=1)
        dm.setup("validate")
        list(dm.val_dataloader())
    dm = csl_datamodule(csl, batch_size=1, on_bad_sample="skip")
    dm.setup("validate")
    names = [dm.on_before_batch_transfer(batch, 0)["name"] for batch in dm.val_dataloader()]
    assert names == [["Sdev000_P0000_T00"], ["Sdev002_P0000_T00"]]
    assert dm.skipped == {"invalid": ["Sdev001_P0000_T00"]} and dm.skipped_batches == 1
