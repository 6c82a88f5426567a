"""The 3-D signer: control curves -> all 133 COCO-WholeBody points plus the neck, per frame.

Arms use two-bone inverse kinematics (the elbow from a fixed "down, out and back" pole), hands
use per-finger flexion chains, the face is a parametric 68-landmark template whose jaw, lips and
brows follow the mouth and brow curves and which turns with the head. Output frame is the body
frame of ``lexicon`` (neck origin, x to the signer's left, y down, z to the camera).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.keypoints import BODY_COCO, LEFT_HAND_COCO, NUM_COCO_KEYPOINTS, RIGHT_HAND_COCO
from datamodules.synthsign import motion

# Named from keypoints.BODY_COCO's documented order.
NOSE, LEFT_EAR, RIGHT_EAR, LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, RIGHT_ELBOW, LEFT_WRIST, \
    RIGHT_WRIST = BODY_COCO
# COCO-WholeBody facts keypoints.py does not hold (yet): eyes, legs, feet, and the 68-point face
# block 23-90 in dlib order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67).
LEFT_EYE, RIGHT_EYE = 1, 2
LEGS_AND_FEET = list(range(11, 23))  # hips, knees, ankles, 6 foot points
FACE_START = 23
NECK = NUM_COCO_KEYPOINTS  # one extra point after the 133: PT's root
NUM_POINTS = NUM_COCO_KEYPOINTS + 1

_MIRROR = np.array([-1.0, 1.0, 1.0])
# Static lower body, left side (mirrored for the right): hip, knee, ankle, then big toe, small
# toe, heel. Outside a sign-language crop except the hips, so only their presence matters.
_LEFT_LEG = np.array([[0.09, 0.52, 0.0], [0.10, 0.95, 0.05], [0.10, 1.38, 0.0]])
_LEFT_FOOT = np.array([[0.12, 1.42, 0.12], [0.16, 1.42, 0.10], [0.10, 1.42, -0.04]])
_LOWER_BODY = np.concatenate([np.stack([_LEFT_LEG, _LEFT_LEG * _MIRROR], 1).reshape(6, 3),
                              _LEFT_FOOT, _LEFT_FOOT * _MIRROR])  # (12, 3), COCO order 11-22
_SHOULDER_DROP = 0.02  # shoulders sit slightly below the neck joint
# Elbow pole of the right arm (down, outward, behind); mirrored for the left arm.
_RIGHT_POLE = np.array([-0.5, 0.8, -0.4])
_HEAD_PIVOT = np.array([0.0, -0.04, 0.0])  # the head turns about the top of the neck
_EARS = np.array([[0.075, -0.17, 0.0], [-0.075, -0.17, 0.0]])  # left, right

# Right hand in its own frame (fingers up = -y, palm facing +z, thumb towards +x, i.e. the
# midline): base joint and phalanx lengths of thumb, index, middle, ring, pinky.
_FINGER_BASE = np.array([[0.020, -0.015, 0.010], [0.022, -0.085, 0.0], [0.007, -0.09, 0.0],
                         [-0.008, -0.085, 0.0], [-0.022, -0.078, 0.0]])
_PHALANGES = np.array([[0.030, 0.028, 0.024], [0.040, 0.025, 0.020], [0.045, 0.028, 0.020],
                       [0.042, 0.026, 0.020], [0.032, 0.020, 0.018]])
_SPLAY = np.array([0.4, 0.30, 0.10, -0.10, -0.30])  # radians each finger fans out at full spread
_THUMB_TILT = 0.8  # radians the straight thumb points away from the fingers, towards +x
_THUMB_CURL = np.array([-0.7, -0.2, 0.7]) / np.linalg.norm([-0.7, -0.2, 0.7])  # across the palm
_PALM = np.array([0.0, 0.0, 1.0])  # fingers curl towards the palm side
_CURL_SHARE = np.array([1.0, 1.1, 0.7])  # MCP, PIP, DIP share of a finger's flexion


@dataclass(frozen=True)
class Proportions:
    """One person's body measurements in body units."""

    shoulder: float = 0.16  # half shoulder width
    upper_arm: float = 0.21
    forearm: float = 0.19
    hand: float = 1.0  # hand size multiplier
    head: float = 1.0  # head size multiplier


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """(..., 3) rotation angles about x, y, z -> (..., 3, 3) matrices R = Rz Ry Rx."""
    cx, cy, cz = np.cos(angles).T
    sx, sy, sz = np.sin(angles).T
    one, zero = np.ones_like(cx), np.zeros_like(cx)
    shape = (*angles.shape[:-1], 3, 3)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(shape)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(shape)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(shape)
    return rz @ ry @ rx


def two_bone_ik(shoulder: np.ndarray, target: np.ndarray, upper: float, fore: float,
                pole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and reachable wrist (T, 3) for wrist targets (T, 3); the elbow bends towards
    ``pole``. Targets out of reach are pulled onto the reachable shell."""
    v = target - shoulder
    dist = np.linalg.norm(v, axis=-1, keepdims=True)
    u = v / np.maximum(dist, 1e-9)  # 1e-9: a target exactly at the shoulder keeps u finite
    reach = np.clip(dist, abs(upper - fore) + 1e-3, upper + fore - 1e-3)  # 1e-3: keep h > 0
    along = (upper ** 2 - fore ** 2 + reach ** 2) / (2 * reach)
    height = np.sqrt(np.maximum(upper ** 2 - along ** 2, 0.0))
    side = pole - np.sum(pole * u, -1, keepdims=True) * u
    side /= np.maximum(np.linalg.norm(side, axis=-1, keepdims=True), 1e-9)
    return shoulder + along * u + height * side, shoulder + reach * u


def hand_points(wrist: np.ndarray, shape: np.ndarray, orient: np.ndarray, left: bool,
                scale: float) -> np.ndarray:
    """(T, 21, 3) hand in COCO/OpenPose order (wrist, then thumb, index, middle, ring, pinky
    with 4 joints each) from wrist (T, 3), flexion + spread (T, 6) and orientation angles
    (T, 3). The left hand is the mirror image of a right hand with the same parameters."""
    frames = len(wrist)
    splay = shape[:, 5:6] * _SPLAY + np.array([_THUMB_TILT, 0, 0, 0, 0])  # (T, 5)
    straight = np.stack([np.sin(splay), -np.cos(splay), np.zeros_like(splay)], -1)  # (T, 5, 3)
    curl = np.broadcast_to(np.stack([_THUMB_CURL] + [_PALM] * 4), (frames, 5, 3))
    angle = np.cumsum(shape[:, :5, None] * _CURL_SHARE * (np.pi / 2), axis=-1)  # (T, 5, 3)
    direction = (np.cos(angle)[..., None] * straight[:, :, None]
                 + np.sin(angle)[..., None] * curl[:, :, None])  # (T, 5, 3 phalanges, 3)
    joints = _FINGER_BASE[:, None] + np.cumsum(_PHALANGES[..., None] * direction, axis=2)
    base = np.broadcast_to(_FINGER_BASE[:, None], (frames, 5, 1, 3))
    fingers = np.concatenate([base, joints], axis=2).reshape(frames, 20, 3)
    local = np.concatenate([np.zeros((frames, 1, 3)), fingers], axis=1) * scale  # (T, 21, 3)
    offsets = local @ rotation_matrix(orient).swapaxes(-1, -2)
    return wrist[:, None] + (offsets * _MIRROR if left else offsets)


def face_points(head: np.ndarray, mouth_open: np.ndarray, mouth_width: np.ndarray,
                brow: np.ndarray, scale: float) -> np.ndarray:
    """(T, 68, 3) face landmarks in dlib order, turned by head angles (T, 3)."""
    frames = len(head)
    t = np.linspace(0.0, np.pi, 17)
    # Jaw from the right ear round the chin to the left ear; the chin drops as the mouth opens.
    jaw = np.stack([np.broadcast_to(-0.068 * np.cos(t), (frames, 17)),
                    -0.17 + 0.105 * np.sin(t) + 0.02 * mouth_open[:, None] * np.sin(t) ** 2,
                    np.broadcast_to(0.02 + 0.05 * np.sin(t), (frames, 17))], -1)
    bx = np.linspace(-0.05, -0.012, 5)
    brow_y = -0.205 - 0.006 * np.sin(np.linspace(0, np.pi, 5)) - 0.008 * brow[:, None]
    brows = np.concatenate([np.stack([np.broadcast_to(bx, (frames, 5)), brow_y,
                                      np.full((frames, 5), 0.08)], -1)] * 2, axis=1)
    brows[:, 5:, 0] = -bx[::-1]  # left brow mirrors the right one, listed inner to outer
    bridge = np.stack([np.zeros(4), np.linspace(-0.19, -0.15, 4), np.linspace(0.085, 0.1, 4)], -1)
    nostrils = np.stack([np.linspace(-0.015, 0.015, 5), np.full(5, -0.143), np.full(5, 0.09)], -1)
    a = np.pi - np.arange(6) * (2 * np.pi / 6)
    eye = np.stack([0.012 * np.cos(a), -0.18 - 0.004 * np.sin(a), np.full(6, 0.085)], -1)
    eyes = np.concatenate([eye + [-0.03, 0, 0], eye + [0.03, 0, 0]])
    static = np.concatenate([bridge, nostrils, eyes])  # (21, 3): nose 27-35, eyes 36-47
    lips = [_lip_ring(12, 0.025, 0.008, 0.008, 0.015, mouth_open, mouth_width),
            _lip_ring(8, 0.018, 0.002, 0.002, 0.016, mouth_open, mouth_width)]
    face = np.concatenate([jaw, brows, np.broadcast_to(static, (frames, 21, 3))] + lips, axis=1)
    return turn_head(face, head, scale)


def turn_head(points: np.ndarray, head: np.ndarray, scale: float) -> np.ndarray:
    """Scale head points (T, K, 3) about the neck top, then turn them by head angles (T, 3)."""
    return ((points - _HEAD_PIVOT) * scale) @ rotation_matrix(head).swapaxes(-1, -2) + _HEAD_PIVOT


def _lip_ring(n: int, half_width: float, upper: float, lower: float, drop: float,
              mouth_open: np.ndarray, mouth_width: np.ndarray) -> np.ndarray:
    """(T, n, 3) lip contour from the right corner over the upper lip and back under the lower
    lip; opening lowers the lower lip by ``drop``, width < 0 rounds and > 0 spreads."""
    a = np.pi - np.arange(n) * (2 * np.pi / n)
    half = half_width * (1.0 + 0.3 * mouth_width)[:, None]  # (T, 1)
    height = np.where(np.sin(a) >= 0, upper, lower + drop * mouth_open[:, None])  # (T, n)
    x = half * np.cos(a)
    y = -0.115 - height * np.sin(a)
    return np.stack([x, y, np.broadcast_to(0.09 - 0.01 * np.sin(a) ** 2, x.shape)], -1)


def skeleton(curves: np.ndarray, body: Proportions) -> np.ndarray:
    """(T, NUM_POINTS, 3) body-frame points (the 133 COCO-WholeBody ones, then the neck) for
    curves (T, motion.NUM_CHANNELS)."""
    frames = len(curves)
    points = np.zeros((frames, NUM_POINTS, 3))
    face = face_points(curves[:, motion.HEAD], curves[:, motion.MOUTH_OPEN],
                       curves[:, motion.MOUTH_WIDTH], curves[:, motion.BROW], body.head)
    points[:, FACE_START:FACE_START + 68] = face
    points[:, NOSE] = face[:, 30]  # dlib 30 is the nose tip
    points[:, LEFT_EYE], points[:, RIGHT_EYE] = face[:, 42:48].mean(1), face[:, 36:42].mean(1)
    ears = np.broadcast_to(_EARS, (frames, 2, 3))
    turned = turn_head(ears, curves[:, motion.HEAD], body.head)
    points[:, LEFT_EAR], points[:, RIGHT_EAR] = turned[:, 0], turned[:, 1]
    points[:, LEGS_AND_FEET] = _LOWER_BODY
    for side, wrist_ch, hand_ch, orient_ch, joints, hand_idx in (
            (1.0, motion.LEFT_WRIST, motion.LEFT_HAND, motion.LEFT_ORIENT,
             (LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST), LEFT_HAND_COCO),
            (-1.0, motion.RIGHT_WRIST, motion.RIGHT_HAND, motion.RIGHT_ORIENT,
             (RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST), RIGHT_HAND_COCO)):
        shoulder = np.array([side * body.shoulder, _SHOULDER_DROP, 0.0])
        pole = _RIGHT_POLE * np.array([-side, 1.0, 1.0])
        elbow, wrist = two_bone_ik(shoulder, curves[:, wrist_ch], body.upper_arm, body.forearm,
                                   pole)
        points[:, joints[0]], points[:, joints[1]], points[:, joints[2]] = shoulder, elbow, wrist
        points[:, hand_idx] = hand_points(wrist, curves[:, hand_ch], curves[:, orient_ch],
                                          left=side > 0, scale=body.hand)
    return points  # the neck row stays exactly zero
