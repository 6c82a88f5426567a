"""A tiny corpus in CSL-Daily's layout (gzip label pickles with `video_path`, one Uni-Sign pose
pickle per video, a word-level tokenizer), the DataModule over it, and batch comparison."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from datamodules.keypoints import PART_NAMES
from datamodules.tokenization import build_word_level_tokenizer
from datamodules.translation import SignTranslationDataModule

TEXTS = ["他今年四岁。", "你们好", "今天天气很好，", "我们去学校"]


def make_pose(num_frames: int, rng: np.random.Generator, score: float = 0.9):
    """A Uni-Sign pose pickle's content: random keypoints, some scores under the 0.3 threshold."""
    keypoints = rng.uniform(0.3, 0.7, (num_frames, 1, 133, 2))
    scores = np.clip(rng.normal(score, 0.3, (num_frames, 1, 133)), 0, 1)
    return {"keypoints": keypoints, "scores": scores.astype(np.float32)}


def write_csl(root: Path, lengths: dict[str, list[int]], rng) -> tuple[Path, Path, str]:
    """One sample per entry of `lengths[split]` (its frame count); returns (label folder, pose
    folder, tokenizer file)."""
    label_dir, pose_dir = root / "labels", root / "poses"
    label_dir.mkdir()
    pose_dir.mkdir()
    for split, lens in lengths.items():
        labels = {}
        for i, t in enumerate(lens):
            name = f"S{split}{i:03d}_P0000_T00"
            labels[name] = {"name": name, "gloss": ["你们", "好"], "text": TEXTS[i % len(TEXTS)],
                            "video_path": f"{name}.mp4"}
            (pose_dir / f"{name}.pkl").write_bytes(pickle.dumps(make_pose(t, rng)))
        (label_dir / f"labels.{split}").write_bytes(gzip.compress(pickle.dumps(labels)))
    tok_path = root / "tokenizer.json"
    build_word_level_tokenizer(TEXTS, "zh").backend_tokenizer.save(str(tok_path))
    return label_dir, pose_dir, str(tok_path)


def csl_datamodule(csl: tuple[Path, Path, str], **kw) -> SignTranslationDataModule:
    """The DataModule over `write_csl`'s folders."""
    label_dir, pose_dir, tok = csl
    return SignTranslationDataModule(dataset="csl_daily", label_dir=str(label_dir),
                                     pose_dir=str(pose_dir), tokenizer=tok, **kw)


def assert_same_batches(a: list[dict], b: list[dict], whole: set[str] | None = None) -> None:
    """Equal batches; with ``whole``, the parts of samples not named there (cut to max_len)
    only up to float32 rounding."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if whole is not None and key in PART_NAMES:
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=1e-6)
                rows = [i for i, name in enumerate(x["name"]) if name in whole]
                assert torch.equal(x[key][rows], y[key][rows]), key
            elif isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key
