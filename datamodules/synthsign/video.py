"""One video: a gloss sequence signed by one person, written as a Uni-Sign pose pickle and
returned as a PT skeleton. Self-contained and picklable so worker processes can run it; every
random draw comes from the video's own generator, so output does not depend on worker count."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.synthsign import body, motion, render
from datamodules.synthsign.lexicon import Entry
from datamodules.synthsign.signer import Person, sample_signer


@dataclass(frozen=True)
class VideoTask:
    glosses: tuple[Entry, ...]
    person: Person
    seed: tuple[int, ...]  # entropy of this video's generator: (corpus seed, split, index)
    pose_path: Path


def render_video(task: VideoTask) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Write the pose pickle; return the PT skeleton (T, 50, 3) and each gloss's frame span."""
    rng = np.random.default_rng(task.seed)
    signer = sample_signer(task.person, rng)
    curves, spans = motion.sentence_curves(list(task.glosses), signer.style, rng)
    points = body.skeleton(curves, signer.body)  # (T, 134, 3)
    keypoints, scores = render.to_coco(points, signer, rng)
    with open(task.pose_path, "wb") as f:
        pickle.dump({"keypoints": keypoints, "scores": scores}, f, protocol=4)
    return render.to_pt(points, signer, rng), spans
