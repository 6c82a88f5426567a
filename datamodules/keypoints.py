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


# Where each part starts in the 69-node layout (PART_NAMES order): normalise_parts gathers the
# part nodes once and works on whole arrays.
_ALL_PART_COCO = np.array([i for name in PART_NAMES for i in PART_COCO[name]])
_PART_STARTS = np.cumsum([0] + [PART_NODES[n] for n in PART_NAMES])
_PART_RANGE = {n: (a, b) for n, a, b in zip(PART_NAMES, _PART_STARTS, _PART_STARTS[1:])}


def body_crop_box(xy: np.ndarray, score: np.ndarray, threshold: float = SCORE_THRESHOLD,
                  ) -> tuple[np.ndarray, float]:
    """Uni-Sign's ``crop_scale`` box: body xy (T, 9, 2), scores (T, 9) -> (corner (2,), scale).

    The square box of side ``scale = max(w, h)`` around all confident points of all frames;
    ``scale == 0.0`` when fewer than 4 points are confident or the box is degenerate.
    """
    valid = xy[score > threshold]  # (N, 2) over every frame
    if len(valid) < MIN_VALID_BODY_POINTS:
        return np.zeros(2, xy.dtype), 0.0
    lo, hi = valid.min(axis=0), valid.max(axis=0)
    scale = float((hi - lo).max())
    return (lo + hi - scale) / 2, scale  # top-left corner of the square centred on the bbox


def normalise_parts(keypoints: np.ndarray, scores: np.ndarray,
                    threshold: float = SCORE_THRESHOLD) -> tuple[dict[str, np.ndarray], float]:
    """Split COCO-WholeBody frames into Uni-Sign's four parts and normalise them.

    keypoints (T, 133, 2) in image-normalised coordinates, scores (T, 133) ->
    ``({"body": (T, 9, 3), "left": (T, 21, 3), "right": (T, 21, 3), "face": (T, 18, 3)}, scale)``
    float32, channels (x, y, score). The body's square crop box (``body_crop_box``) is mapped
    to [-1, 1]; hands and face are taken relative to their anchor node (wrist root, nose tip)
    and divided by the box side; everything is clipped to [-1, 1] and low-score points become
    (0, 0, 0). ``scale == 0`` means every part is zero (Uni-Sign's behaviour when the body is
    not confidently detected). xy and scores stay separate contiguous arrays until the last
    steps: numpy is several times slower on strided (..., :2) views of an (x, y, score) array.
    """
    xy = np.take(keypoints, _ALL_PART_COCO, axis=1).astype(np.float32, copy=False)  # (T, 69, 2)
    score = np.take(scores, _ALL_PART_COCO, axis=1).astype(np.float32, copy=False)  # (T, 69)
    b0, b1 = _PART_RANGE["body"]
    corner, scale = body_crop_box(xy[:, b0:b1], score[:, b0:b1], threshold)
    if scale == 0:
        out = np.zeros((*xy.shape[:2], 3), np.float32)
    else:
        xy[:, b0:b1] = ((xy[:, b0:b1] - corner) / scale - 0.5) * 2
        for name, anchor in PART_ANCHOR.items():
            a, b = _PART_RANGE[name]
            xy[:, a:b] -= xy[:, a + anchor:a + anchor + 1]  # numpy buffers the overlap: the anchor becomes 0
            xy[:, a:b] /= scale
        out = np.stack([xy[..., 0], xy[..., 1], score], axis=-1)  # (T, 69, 3)
        np.clip(out, -1, 1, out=out)  # Uni-Sign clips the score channel too
        out = np.where(out[..., 2:] <= threshold, np.float32(0), out)
    parts = {n: np.ascontiguousarray(out[:, a:b]) for n, (a, b) in _PART_RANGE.items()}
    return parts, scale
