"""Skeleton facts, in one place: COCO-WholeBody parts (translation) and the PT 50-joint skeleton
(production). Every other module imports its index lists and bones from here.

COCO-WholeBody-133 (0-based): 0-16 body (0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows,
9/10 wrists, 11-16 legs), 17-22 feet, 23-90 face (68 points), 91-111 left hand, 112-132 right hand.
"Left" is the signer's left throughout.
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# Translation: the four Uni-Sign parts (69 nodes), in Uni-Sign's node order.
# --------------------------------------------------------------------------------------------

NUM_COCO_KEYPOINTS = 133

# nose, left/right ear, left/right shoulder, left/right elbow, left/right wrist
BODY_COCO = [0, 3, 4, 5, 6, 7, 8, 9, 10]
LEFT_HAND_COCO = list(range(91, 112))
RIGHT_HAND_COCO = list(range(112, 133))
# 9 jaw-contour points, 8 inner-lip points, then the nose tip (the anchor, last). Uni-Sign's text
# says 16 face points but its code lists these 18.
FACE_COCO = list(range(23, 40, 2)) + list(range(83, 91)) + [53]

PART_NAMES = ("body", "left", "right", "face")
PART_COCO = {"body": BODY_COCO, "left": LEFT_HAND_COCO, "right": RIGHT_HAND_COCO, "face": FACE_COCO}
PART_NODES = {name: len(idx) for name, idx in PART_COCO.items()}  # body 9, hands 21, face 18

# Node (within the part) that hands and face are expressed relative to.
PART_ANCHOR = {"left": 0, "right": 0, "face": len(FACE_COCO) - 1}

# Body node whose (detached) feature is added to each part stream after the spatial GCN chain:
# left wrist -> left hand, right wrist -> right hand, nose -> face.
BODY_CONTEXT_NODE = {"left": BODY_COCO.index(9), "right": BODY_COCO.index(10), "face": BODY_COCO.index(0)}

# Edges within each part, as node indices of that part.
BODY_EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (3, 5), (5, 7), (4, 6), (6, 8)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4),
              (0, 5), (5, 6), (6, 7), (7, 8),
              (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16),
              (0, 17), (17, 18), (18, 19), (19, 20)]
_JAW = list(range(9))
_LIPS = list(range(9, 17))
FACE_EDGES = ([(a, b) for a, b in zip(_JAW, _JAW[1:])]
              + [(a, b) for a, b in zip(_LIPS, _LIPS[1:] + _LIPS[:1])]
              + [(i, 17) for i in range(17)])
PART_EDGES = {"body": BODY_EDGES, "left": HAND_EDGES, "right": HAND_EDGES, "face": FACE_EDGES}

SCORE_THRESHOLD = 0.3  # Uni-Sign's confidence threshold (datasets.py, thr=0.3)

# --------------------------------------------------------------------------------------------
# Production: the Progressive Transformers (PT) 50-joint skeleton of PHOENIX-2014T .skels files.
# OpenPose body order for 0-7; the neck (1) is the root and is (0, 0, 0) in every PT frame.
# --------------------------------------------------------------------------------------------

PT_NUM_JOINTS = 50
PT_VALUES_PER_FRAME = PT_NUM_JOINTS * 3 + 1  # 50 joints x (x, y, z), then the counter i/T

PT_HEAD, PT_NECK = 0, 1
PT_RIGHT_ARM = (2, 3, 4)  # shoulder, elbow, wrist (OpenPose's right)
PT_LEFT_ARM = (5, 6, 7)
# Joints 8-28 hang off wrist 7: the signer's left hand. PT's plot code calls it "left hand" too;
# G2P-DDM labels the same slice "rhand" (it names hands as seen in the image).
PT_LEFT_HAND = tuple(range(8, 29))
PT_RIGHT_HAND = tuple(range(29, 50))
PT_BODY = tuple(range(0, 8))

# Pose-VQVAE patches in PT joint order: body, then joints 8-28, then joints 29-49.
PT_PARTS = {"body": PT_BODY, "left_hand": PT_LEFT_HAND, "right_hand": PT_RIGHT_HAND}
PT_PART_NAMES = tuple(PT_PARTS)


def _hand_bones(root: int) -> list[tuple[int, int]]:
    """Wrist -> 5 fingers x 4 joints, with the hand's joints numbered from ``root``."""
    bones = []
    for finger in range(5):
        first = root + 1 + 4 * finger
        chain = [root] + list(range(first, first + 4))
        bones += list(zip(chain, chain[1:]))
    return bones


PT_BODY_BONES = [(1, 0), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7)]
PT_LEFT_HAND_BONES = [(7, 8)] + _hand_bones(8)
PT_RIGHT_HAND_BONES = [(4, 29)] + _hand_bones(29)
PT_BONES = PT_BODY_BONES + PT_LEFT_HAND_BONES + PT_RIGHT_HAND_BONES  # (parent, child), parents first


def pt_parents() -> list[int]:
    """Parent of every PT joint (-1 for the neck root), derived from ``PT_BONES``."""
    parents = [-1] * PT_NUM_JOINTS
    for parent, child in PT_BONES:
        parents[child] = parent
    return parents


# --------------------------------------------------------------------------------------------
# Translation: frame sampling and Uni-Sign's part normalisation (datasets.py: load_part_kp,
# crop_scale). Pure numpy; the datasets call these per sample.
# --------------------------------------------------------------------------------------------

MIN_VALID_BODY_POINTS = 4  # crop_scale gives up (all zeros) with fewer confident body points


def sample_frame_indices(num_frames: int, max_len: int, rng: np.random.Generator | None = None,
                         ) -> np.ndarray:
    """Indices of at most ``max_len`` frames out of ``num_frames``, increasing.

    Short clips keep every frame. Longer clips get a sorted random subset when ``rng`` is given
    (training, as Uni-Sign) and evenly spaced frames otherwise (evaluation: deterministic,
    unlike Uni-Sign, which also samples randomly at test time).
    """
    if num_frames <= 0 or max_len <= 0:
        raise ValueError(f"num_frames ({num_frames}) and max_len ({max_len}) must be positive")
    if num_frames <= max_len:
        return np.arange(num_frames)
    if rng is not None:
        return np.sort(rng.choice(num_frames, size=max_len, replace=False))
    # floor(x + 0.5) is monotone with unit steps, so spacing >= 1 never repeats an index
    # (np.round's half-to-even could map 1.5 and 2.5 to the same frame).
    return np.floor(np.linspace(0, num_frames - 1, max_len) + 0.5).astype(np.int64)


def body_crop_scale(body: np.ndarray, threshold: float = SCORE_THRESHOLD,
                    ) -> tuple[np.ndarray, float]:
    """Uni-Sign's ``crop_scale`` on the body part: (T, 9, 3) xy+score -> normalised, scale.

    The square box of side ``scale = max(w, h)`` around all confident points of all frames is
    mapped to [-1, 1]; points with score <= threshold become (0, 0, 0). Returns
    ``(zeros, 0.0)`` when fewer than 4 points are confident or the box is degenerate.
    """
    valid = body[body[..., 2] > threshold][:, :2]  # (N, 2) over every frame
    if len(valid) < MIN_VALID_BODY_POINTS:
        return np.zeros_like(body), 0.0
    lo, hi = valid.min(axis=0), valid.max(axis=0)
    scale = float((hi - lo).max())
    if scale == 0:
        return np.zeros_like(body), 0.0
    corner = (lo + hi - scale) / 2  # top-left of the square box centred on the bbox
    out = body.copy()
    out[..., :2] = ((body[..., :2] - corner) / scale - 0.5) * 2
    out = np.clip(out, -1, 1)
    out[out[..., 2] <= threshold] = 0
    return out, scale


def normalise_parts(keypoints: np.ndarray, scores: np.ndarray,
                    threshold: float = SCORE_THRESHOLD) -> tuple[dict[str, np.ndarray], float]:
    """Split COCO-WholeBody frames into Uni-Sign's four parts and normalise them.

    keypoints (T, 133, 2) in image-normalised coordinates, scores (T, 133) ->
    ``({"body": (T, 9, 3), "left": (T, 21, 3), "right": (T, 21, 3), "face": (T, 18, 3)}, scale)``
    float32, channels (x, y, score). The body goes through ``body_crop_scale``; hands and face
    are taken relative to their anchor node (wrist root, nose tip), divided by the body scale
    and clipped to [-1, 1]; low-score points are zeroed. ``scale == 0`` means every part is
    zero (Uni-Sign's behaviour when the body is not confidently detected).
    """
    xys = np.concatenate([keypoints, scores[..., None]], axis=-1).astype(np.float32)  # (T, 133, 3)
    body, scale = body_crop_scale(xys[:, BODY_COCO], threshold)
    parts = {"body": body}
    for name in ("left", "right", "face"):
        part = xys[:, PART_COCO[name]].copy()  # (T, V, 3)
        anchor = PART_ANCHOR[name]
        part[..., :2] -= part[:, anchor:anchor + 1, :2]
        if scale == 0:
            part = np.zeros_like(part)
        else:
            part[..., :2] /= scale
            part = np.clip(part, -1, 1)
            part[part[..., 2] <= threshold] = 0
        parts[name] = part
    return parts, scale
