"""Skeleton facts, in one place: COCO-WholeBody parts (translation) and the PT 50-joint skeleton
(production). Every other module imports its index lists and bones from here.

COCO-WholeBody-133 (0-based): 0-16 body (0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows,
9/10 wrists, 11-16 legs), 17-22 feet, 23-90 face (68 points), 91-111 left hand, 112-132 right hand.
"Left" is the signer's left throughout.
"""
from __future__ import annotations

import numpy as np
import torch

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
# crop_scale). The translation dataset normalises a whole batch in one call.
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


# The four parts' 69 COCO nodes in PART_NAMES order (what the packed cache stores per frame), and
# where each part starts in that layout.
PART_NODES_COCO = np.array([i for name in PART_NAMES for i in PART_COCO[name]])
_PART_STARTS = np.cumsum([0] + [PART_NODES[n] for n in PART_NAMES]).tolist()
PART_SLICES = {n: slice(a, b) for n, a, b in zip(PART_NAMES, _PART_STARTS, _PART_STARTS[1:])}


def part_nodes(keypoints: np.ndarray, scores: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
    """The 69 part nodes of COCO-WholeBody frames: keypoints (T, 133, 2), scores (T, 133) ->
    (T', 69, 3) float32 (x, y, score), keeping only ``frames`` when given."""
    if frames is not None:  # rows first, then nodes: one 2-D fancy index is several times slower
        keypoints, scores = keypoints[frames], scores[frames]
    out = np.empty((len(keypoints), len(PART_NODES_COCO), 3), np.float32)
    out[..., :2] = np.take(keypoints, PART_NODES_COCO, axis=1)
    out[..., 2] = np.take(scores, PART_NODES_COCO, axis=1)
    return out


def normalise_clips(nodes: np.ndarray, lengths: np.ndarray, threshold: float = SCORE_THRESHOLD,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uni-Sign's part normalisation (``load_part_kp`` / ``crop_scale``) of a batch of clips in one pass.

    nodes (N, 69, 3) = ``part_nodes`` of B clips concatenated along time, ``lengths`` (B,) their
    frame counts -> (normalised (N, 69, 3) float32, box corners (2, B), box sides = scales (B,));
    ``PART_SLICES`` cut the parts.
    Each clip's body crop box (the square of side max(w, h) around the confident body points
    of all its frames) is mapped to [-1, 1]; hands and face are taken relative to their anchor
    node (wrist root, nose tip) and divided by the box side; everything is clipped to [-1, 1]
    and low-score points become (0, 0, 0). A clip with fewer than 4 confident body points (or
    a degenerate box) has scale 0 and is all zeros, Uni-Sign's behaviour.

    Works channel-first, (3, N, 69), so every op runs over contiguous node rows, and interleaves
    the channels back into a contiguous (N, 69, 3) at the end, so every part's frames are
    contiguous (69 · 3)-float rows for the collate to copy.
    """
    x = torch.from_numpy(nodes).permute(2, 0, 1)  # (3, N, 69) view
    lengths = torch.as_tensor(lengths)
    clip = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N,) clip of each frame
    xy, score = x[:2].contiguous(), x[2].contiguous()  # (2, N, 69), (N, 69): owned copies
    body = PART_SLICES["body"]
    corner, scale = map(torch.from_numpy, _crop_boxes(
        body_extremes(torch.from_numpy(nodes[:, body]), threshold).numpy(), np.asarray(lengths)))
    frame_scale = torch.where(scale > 0, scale, 1)[clip][:, None]  # (N, 1); 1 keeps 0-scale clips finite
    xy[:, :, body] -= corner[:, clip, None]
    xy[:, :, body] /= frame_scale
    xy[:, :, body] -= 0.5
    xy[:, :, body] *= 2
    for name, anchor in PART_ANCHOR.items():
        nodes_of = PART_SLICES[name]
        xy[:, :, nodes_of] -= xy[:, :, nodes_of.start + anchor, None].clone()  # the anchor itself becomes 0
        xy[:, :, nodes_of] /= frame_scale
    keep = (score > threshold) & (scale > 0)[clip][:, None]  # (N, 69)
    out = torch.stack((xy[0], xy[1], score), dim=-1).clamp_(-1, 1)  # (N, 69, 3); Uni-Sign clips the score too
    out.mul_(keep[..., None])  # low-score points and unconfident clips become (0, 0, 0)
    return out, corner, scale


def rebox_clips(nodes: np.ndarray, extremes: np.ndarray, lengths: np.ndarray, corners: np.ndarray,
                scales: np.ndarray, threshold: float = SCORE_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalise_clips`` of frame subsets, from their clips normalised whole (the packed cache).

    nodes (N, 69, 3): rows of B clips' whole-clip ``normalise_clips`` output at the sampled
    frames, concatenated; extremes (N, 5): the same frames' ``body_extremes``; lengths (B,); the
    whole clips' corners (2, B) and scales (B,) -> (normalised (N, 69, 3), subset scales (B,)),
    as ``normalise_clips`` gives for the raw subsets, up to float32 rounding.

    A subset's box comes from its own frames' extremes, as in ``normalise_clips``, so it is
    exact, and it lies inside the whole clip's box: side s' <= s. So the map is affine per clip
    with gain a = s / s' >= 1: body n' = a n + (a - 1 + 2 (c - c') / s') (from n = 2 (xy - c) / s
    - 1), hands and face n' = a n. Clipping commutes with it: confident body points lie inside
    both boxes (nothing was clipped), and a hand or face value clipped to +-1 under s is beyond
    +-1 under s' too, since a >= 1.
    """
    lengths = np.asarray(lengths)
    corner, scale = _crop_boxes(extremes, lengths)
    ok = scale > 0
    side = np.where(ok, scale, np.float32(1))  # 1 keeps unconfident subsets finite; they are zeroed below
    scales, corners = np.asarray(scales, np.float32), np.asarray(corners, np.float32)
    gain = np.where(ok, scales / side, np.float32(0))  # (B,)
    shift = np.where(ok, gain - 1 + 2 * (corners - corner) / side, np.float32(0))  # (2, B)
    # numpy rather than torch: a batch's few clips make every op small, where torch's dispatch and
    # threads cost more than the arithmetic. Per-clip rows of factors over a frame's 69 (x, y, score)
    # triples, so the multiply runs along contiguous 207-float rows
    factor = np.empty((len(lengths), *nodes.shape[1:]), np.float32)  # (B, 69, 3)
    factor[...] = ok[:, None, None]  # 0 zeroes an unconfident clip; scores keep factor 1
    factor[..., :2] = gain[:, None, None]
    flat = nodes.reshape(len(nodes), -1)  # (N, 207) view: callers pass an owned copy, changed in place
    flat *= np.repeat(factor.reshape(len(lengths), -1), lengths, axis=0)
    body_out = nodes[:, PART_SLICES["body"]]  # (N, 9, 3) view
    # stored low-score points are (0, 0, 0) and stored scores are clipped, so score > threshold is
    # still Uni-Sign's keep mask: only confident body points move
    body_out[..., :2] += np.repeat(shift.T, lengths, axis=0)[:, None] * (body_out[..., 2:] > threshold)
    np.clip(flat, -1, 1, out=flat)  # the stored scores were clipped already
    return torch.from_numpy(nodes), torch.from_numpy(scale)


BODY_EXTREMES = ("min x", "min y", "max x", "max y", "count")  # the columns of ``body_extremes``


def body_extremes(body: torch.Tensor, threshold: float = SCORE_THRESHOLD) -> torch.Tensor:
    """What a crop box needs from each frame: raw body nodes (N, 9, 3) -> (N, 5) float32 = min x,
    min y, max x, max y over the confident points (+-inf when there are none), and their count
    (``BODY_EXTREMES``)."""
    valid = (body[..., 2] > threshold)[..., None]  # (N, 9, 1)
    xy = body[..., :2]
    inf = torch.tensor(torch.inf)
    return torch.cat((torch.where(valid, xy, inf).amin(1), torch.where(valid, xy, -inf).amax(1),
                      valid.sum(1, dtype=body.dtype)), dim=1)


def _crop_boxes(extremes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip body boxes: ``body_extremes`` of B clips' frames concatenated (N, 5) float32, the
    clips' frame counts (B,), each at least 1 -> top-left corners (2, B), sides (B,), side 0 when a
    clip has fewer than 4 confident points. One segment reduction per statistic (numpy, no
    threads: at a batch's size the per-op cost is what counts)."""
    if len(lengths) == 0 or lengths.min() < 1:  # reduceat cannot express an empty segment
        raise ValueError(f"crop boxes need clips of at least one frame, got lengths {lengths.tolist()}")
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # (B,) where each clip's segment begins
    lo = np.minimum.reduceat(extremes[:, :2], starts, axis=0)  # (B, 2)
    hi = np.maximum.reduceat(extremes[:, 2:4], starts, axis=0)
    ok = (np.add.reduceat(extremes[:, 4], starts) >= MIN_VALID_BODY_POINTS)[:, None]
    lo, hi = np.where(ok, lo, np.float32(0)), np.where(ok, hi, np.float32(0))  # no inf arithmetic below
    scale = (hi - lo).max(1)  # (B,)
    return ((lo + hi - scale[:, None]) / np.float32(2)).T, scale  # corner of the square centred on the bbox
