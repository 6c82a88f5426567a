from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.formats import write_skels
from datamodules.production import GlossToPoseDataModule
from datamodules.tokenization import GlossVocab

GLOSSES = ["REGEN MORGEN", "SONNE", "MORGEN SONNE WARM", "KALT"]


def _write_split(root: Path, split: str, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(len(lengths))
    seqs = [rng.uniform(-0.4, 0.4, (t, 50, 3)).astype(np.float32) for t in lengths]
    names = [f"{split}/clip-{i}" for i in range(len(lengths))]
    write_skels(root / f"{split}.skels", seqs)
    (root / f"{split}.gloss").write_text("\n".join(GLOSSES[i % 4] for i in range(len(lengths))) + "\n")
    (root / f"{split}.text").write_text("\n".join(f"text {i}" for i in range(len(lengths))) + "\n")
    (root / f"{split}.files").write_text("\n".join(names) + "\n")
    return seqs


@pytest.fixture
def pt(tmp_path):
    seqs = {split: _write_split(tmp_path, split, lens) for split, lens in
            {"train": [4, 7, 12, 5], "dev": [3, 12, 6], "test": [2, 2]}.items()}
    return tmp_path, seqs


def _dm(pt_dir: Path, **kw) -> GlossToPoseDataModule:
    return GlossToPoseDataModule(dataset="phoenix2014t", pt_dir=str(pt_dir),
                                 gloss_vocab=str(pt_dir / "train.gloss"), **kw)


def test_production_batch_contract(pt):
    pt_dir, seqs = pt
    dm = _dm(pt_dir, batch_size=3)
    assert dm.gloss_vocab.itos[:4] == ["<pad>", "<unk>", "<mask>", "MORGEN"]  # built from train
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["poses"].shape == (3, 12, 50, 3) and batch["poses"].dtype == torch.float32
    assert batch["pose_mask"].dtype == torch.bool
    assert batch["pose_mask"].sum(1).tolist() == [3, 12, 6]
    for b, seq in enumerate(seqs["dev"]):
        np.testing.assert_allclose(batch["poses"][b, :len(seq)].numpy(), seq, atol=1e-6)
    assert (batch["poses"][~batch["pose_mask"]] == 0).all()  # zeros at padding
    assert batch["gloss"] == [g.split() for g in GLOSSES[:3]]
    assert batch["gloss_ids"].shape == (3, 3) and batch["gloss_ids"].dtype == torch.long
    assert batch["gloss_mask"].sum(1).tolist() == [2, 1, 3]
    assert (batch["gloss_ids"][~batch["gloss_mask"]] == GlossVocab.PAD).all()
    assert dm.gloss_vocab.decode(batch["gloss_ids"][2]) == ["MORGEN", "SONNE", "WARM"]
    assert batch["name"] == ["dev/clip-0", "dev/clip-1", "dev/clip-2"]
    assert batch["text"] == ["text 0", "text 1", "text 2"]


def test_max_frames_drops_long_train_sequences_only(pt):
    dm = _dm(pt[0], max_frames=10)
    dm.setup()
    assert len(dm.datasets["train"]) == 3 and dm.num_too_long == 1
    assert len(dm.datasets["dev"]) == 3  # dev keeps its 12-frame sequence
    names = sorted(n for batch in dm.train_dataloader() for n in batch["name"])
    assert names == ["train/clip-0", "train/clip-1", "train/clip-3"]


def test_line_count_mismatch_fails_at_setup(pt):
    pt_dir = pt[0]
    (pt_dir / "dev.gloss").write_text("A\nB\n")
    with pytest.raises(ValueError, match=r"line counts disagree.*dev\.gloss: 2"):
        _dm(pt_dir).setup("validate")


def test_bad_skels_line_raise_or_skip(pt):
    pt_dir = pt[0]
    lines = (pt_dir / "dev.skels").read_text().splitlines()
    lines[1] = lines[1] + " 0.5"  # one value too many
    (pt_dir / "dev.skels").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"dev\.skels line 2 \(sample 'dev/clip-1'\).*not a multiple of 151"):
        _dm(pt_dir).setup("validate")
    dm = _dm(pt_dir, on_bad_sample="skip")
    dm.setup("validate")
    assert dm.skipped == {"invalid": ["dev/clip-1"]} and dm.num_skipped == 1
    assert [n for b in dm.val_dataloader() for n in b["name"]] == ["dev/clip-0", "dev/clip-2"]


def test_an_empty_gloss_line_is_a_bad_sample_at_setup_not_in_training(pt):
    pt_dir = pt[0]
    lines = (pt_dir / "dev.gloss").read_text().splitlines()
    lines[1] = ""  # sequential_knn_lengths would fail on it deep in a training step
    (pt_dir / "dev.gloss").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"dev\.gloss line 2: empty gloss"):
        _dm(pt_dir).setup("validate")
    dm = _dm(pt_dir, on_bad_sample="skip")
    dm.setup("validate")
    assert dm.skipped == {"invalid": ["dev/clip-1"]}
    assert all(len(gloss) > 0 for b in dm.val_dataloader() for gloss in b["gloss"])


def test_vocab_saved_to_the_run_folder(pt, tmp_path):
    import lightning as L

    dm = _dm(pt[0])
    trainer = L.Trainer(default_root_dir=str(tmp_path / "run"), logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    dm.trainer = trainer
    dm.setup("validate")
    saved = tmp_path / "run" / "gloss_vocab.json"
    assert GlossVocab.load(saved) == dm.gloss_vocab


def test_constructor_rejects_bad_arguments(pt):
    with pytest.raises(ValueError, match="dataset must be one of"):
        GlossToPoseDataModule(dataset="csl_daily")
    with pytest.raises(ValueError, match="needs pt_dir"):
        GlossToPoseDataModule(dataset="phoenix2014t", gloss_vocab=str(pt[0] / "train.gloss"))
    with pytest.raises(ValueError, match="its own gloss_vocab"):
        GlossToPoseDataModule(dataset="phoenix2014t", pt_dir=str(pt[0]))
    with pytest.raises(ValueError, match="on_bad_sample"):
        _dm(pt[0], on_bad_sample="warn")


def test_synthsign_corpus_through_the_real_readers(tmp_path):
    dm = GlossToPoseDataModule(data_dir=str(tmp_path / "synthsign"), batch_size=2,
                               synthsign_kwargs={"num_train": 4, "num_dev": 3, "num_test": 2})
    dm.prepare_data()
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "dev", "test")] == [4, 3, 2]
    for batch in dm.train_dataloader():
        assert (batch["gloss_ids"] != GlossVocab.UNK).all()  # the lexicon covers the corpus
        assert [dm.gloss_vocab.decode(ids) for ids in batch["gloss_ids"]] == batch["gloss"]
        assert batch["poses"].shape[-2:] == (50, 3)
        assert (batch["poses"][:, :, 1] == 0).all()  # PT's neck root sits at the origin
