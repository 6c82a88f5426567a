"""Render one 3-D skeleton into the two real formats.

PT: 50 joints, 3-D, neck exactly at the origin (the body frame already is neck-centred), small
lifting noise. COCO-WholeBody: orthographic projection to [0, 1] image coordinates, detector
jitter, per-part confidence scores, and occasional dropped detections (a hand or a whole frame
with scores below Uni-Sign's 0.3 threshold and scrambled coordinates).
"""
from __future__ import annotations

import numpy as np

from datamodules.keypoints import (LEFT_HAND_COCO, PT_HEAD, PT_LEFT_ARM, PT_LEFT_HAND, PT_NECK,
                                   PT_NUM_JOINTS, PT_RIGHT_ARM, PT_RIGHT_HAND, RIGHT_HAND_COCO,
                                   SCORE_THRESHOLD)
from datamodules.synthsign import body
from datamodules.synthsign.signer import Signer

# Skeleton row feeding each PT joint.
PT_FROM_SKELETON = np.zeros(PT_NUM_JOINTS, dtype=np.int64)
PT_FROM_SKELETON[PT_HEAD] = body.NOSE
PT_FROM_SKELETON[PT_NECK] = body.NECK
PT_FROM_SKELETON[list(PT_RIGHT_ARM)] = [body.RIGHT_SHOULDER, body.RIGHT_ELBOW, body.RIGHT_WRIST]
PT_FROM_SKELETON[list(PT_LEFT_ARM)] = [body.LEFT_SHOULDER, body.LEFT_ELBOW, body.LEFT_WRIST]
PT_FROM_SKELETON[list(PT_LEFT_HAND)] = LEFT_HAND_COCO
PT_FROM_SKELETON[list(PT_RIGHT_HAND)] = RIGHT_HAND_COCO

PT_NOISE = 0.002  # σ of PT's 2-D-to-3-D lifting noise, body units (~2 mm)
HAND_DROP_RATE = 0.015  # expected dropped-hand events per frame and hand
FRAME_DROP_RATE = 0.01  # probability that a frame loses its whole detection
_HANDS = (np.array(LEFT_HAND_COCO), np.array(RIGHT_HAND_COCO))
_FACE = slice(body.FACE_START, body.FACE_START + 68)


def _per_point(upper_body: float, hips: float, legs: float, face: float, hands: float
               ) -> np.ndarray:
    """(133,) one value per COCO-WholeBody point, by body region."""
    values = np.full(body.NECK, legs)  # knees, ankles, feet: below a sign-language crop
    values[:11] = upper_body  # nose, eyes, ears, shoulders, elbows, wrists
    values[11:13] = hips
    values[_FACE] = face
    for hand in _HANDS:
        values[hand] = hands
    return values


# Detector confidence range per point (hands get a per-frame level instead, see to_coco).
_SCORE_LOW = _per_point(0.85, 0.35, 0.02, 0.75, 0.0)
_SCORE_HIGH = _per_point(0.99, 0.70, 0.20, 0.95, 0.0)
# Detector jitter σ in image units (1 px of a 512 px frame is 0.002); legs are static guesses.
_JITTER = _per_point(0.0015, 0.0015, 0.0, 0.001, 0.002)


def place(points: np.ndarray, signer: Signer) -> np.ndarray:
    """Scale and turn body-frame points (T, N, 3) about the neck (the origin)."""
    rot = body.rotation_matrix(signer.rotation)
    return (points * signer.scale) @ rot.T


def to_pt(points: np.ndarray, signer: Signer, rng: np.random.Generator) -> np.ndarray:
    """(T, 50, 3) float32 PT skeleton from skeleton points (T, body.NUM_POINTS, 3)."""
    pt = place(points[:, PT_FROM_SKELETON], signer)
    pt += rng.normal(0.0, PT_NOISE, pt.shape)
    pt[:, PT_NECK] = 0.0  # PT's root is exactly zero in every frame
    return pt.astype(np.float32)


def _drop(xy: np.ndarray, scores: np.ndarray, frames: np.ndarray, joints: np.ndarray,
          rng: np.random.Generator) -> None:
    """Lose a detection in place: scores below the threshold, coordinates scrambled."""
    sel = np.ix_(frames, joints)
    scores[sel] = rng.uniform(0.0, 0.8 * SCORE_THRESHOLD, scores[sel].shape)
    shift = rng.normal(0.0, 0.03, (len(frames), 1, 2))  # the detector latched onto something else
    xy[sel] += shift + rng.normal(0.0, 0.01, xy[sel].shape)


def to_coco(points: np.ndarray, signer: Signer, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Uni-Sign pose arrays from skeleton points (T, body.NUM_POINTS, 3): keypoints
    (T, 1, 133, 2) float32 in [0, 1] and scores (T, 1, 133) float32."""
    frames = len(points)
    world = place(points[:, :body.NECK], signer)  # (T, 133, 3)
    xy = signer.center + signer.zoom * world[..., :2]  # orthographic camera
    xy += rng.normal(0.0, 1.0, xy.shape) * _JITTER[:, None]
    scores = _SCORE_LOW + (_SCORE_HIGH - _SCORE_LOW) * rng.random(xy.shape[:2])  # (T, 133)
    for hand in _HANDS:  # one confidence per hand and frame, a little spread over its joints
        level = rng.uniform(0.55, 0.95, (frames, 1))
        scores[:, hand] = np.clip(level + rng.normal(0.0, 0.03, (frames, len(hand))), 0.0, 1.0)
        for _ in range(rng.poisson(HAND_DROP_RATE * frames)):
            start = int(rng.integers(frames))
            _drop(xy, scores, np.arange(start, min(frames, start + int(rng.integers(1, 5)))),
                  hand, rng)
    lost = np.flatnonzero(rng.random(frames) < FRAME_DROP_RATE)
    _drop(xy, scores, lost, np.arange(xy.shape[1]), rng)
    outside = ((xy < 0.0) | (xy > 1.0)).any(-1)
    scores[outside] = np.minimum(scores[outside], 0.1)  # nothing is detected outside the frame
    xy = np.clip(xy, 0.0, 1.0)
    return xy[:, None].astype(np.float32), scores[:, None].astype(np.float32)
