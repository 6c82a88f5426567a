"""``.pose`` files (the ``pose-format`` package of sign-language-processing and sign.mt) in and out.

``read_pose_format(path)`` returns what ``datamodules.formats.read_pose_pickle`` returns for a Uni-Sign
pickle: ``(keypoints (T, 133, 2), scores (T, 133))`` float32, COCO-WholeBody order, x divided by the
header's width and y by its height (Uni-Sign's normalisation), person 0 of the file. Two layouts are
recognised by their component names; anything else raises ValueError naming the file and its
components:

**COCO-WholeBody 133** (pose-format's ``utils/cocowholebody133_header.py``, also AlphaPose's ``*_133``
names): points are taken in order, pixel coordinates.

=============================  ======  ==========================
component                      points  COCO-WholeBody indices
=============================  ======  ==========================
``BODY`` / ``BODY_133``          23    0-22 (17 body + 6 feet)
``FACE`` / ``FACE_133``          68    23-90
``LEFT_HAND`` / ``..._133``      21    91-111
``RIGHT_HAND`` / ``..._133``     21    112-132
=============================  ======  ==========================

**MediaPipe Holistic** (pose-format's ``utils/holistic.py``: ``POSE_LANDMARKS``, ``FACE_LANDMARKS``,
``LEFT_HAND_LANDMARKS``, ``RIGHT_HAND_LANDMARKS``, optionally ``POSE_WORLD_LANDMARKS``, which is
ignored; pixel x, y). ``POSE_LANDMARKS`` is required, the others may be missing (their points then
get score 0). Points are matched by *name*, so reduced files (``pose.get_components`` with a subset
of points, e.g. the 8 upper-body points and the 128 contour face points of pose-format's own
``tests/data/mediapipe.pose``) read too. Every COCO point without a counterpart below gets (0, 0)
with score 0, which the readers treat as unconfident.

===========================================  ================================================
MediaPipe                                    COCO-WholeBody
===========================================  ================================================
POSE NOSE, LEFT_EYE, RIGHT_EYE               0, 1, 2
POSE LEFT_EAR, RIGHT_EAR                     3, 4
POSE LEFT/RIGHT SHOULDER, ELBOW, WRIST       5/6, 7/8, 9/10
POSE LEFT/RIGHT HIP, KNEE, ANKLE             11/12, 13/14, 15/16
POSE LEFT_HEEL, RIGHT_HEEL                   19, 22 (the toes 17, 18, 20, 21: no counterpart)
LEFT_HAND WRIST, THUMB_CMC ... PINKY_TIP     91-111, in order (both use OpenPose's hand order)
RIGHT_HAND WRIST ... PINKY_TIP               112-132
FACE mesh 127, 93, 58+172, 150, 152,         23, 25, 27, 29, 31, 33, 35, 37, 39 (jaw: the
379, 397+288, 323, 356                       9 points of Uni-Sign's face part)
FACE mesh 78, 82, 13, 312, 308, 317, 14, 87  83-90 (inner lips)
FACE mesh 4 (else POSE NOSE)                 53 (nose tip, Uni-Sign's face anchor)
===========================================  ================================================

Only the 18 face points Uni-Sign reads (``keypoints.FACE_COCO``) are mapped; the other 50 face points
get score 0. "a+b" is the mean of two mesh points (score: the lower of the two). The face-mesh ->
68-point correspondences are PeizhiYan/Mediapipe_2_Dlib_Landmarks (``mp2dlib.py``, 478-point mesh,
iBUG-68 order). MediaPipe's LEFT/RIGHT are the signer's, as COCO-WholeBody's. Scores are the file's
confidences (pose visibility for the body, 1 for a detected hand or face) and 0 where the point is
masked. Caveat: the contour-only face of reduced files has no nose point, so with no ``NOSE`` in
``POSE_LANDMARKS`` either the face anchor has score 0 (Uni-Sign's face part is then expressed
relative to (0, 0)).

``write_pose_format(path, poses, fps)`` writes production output, (T, 50, 3) joints of the PT
skeleton (``keypoints.PT_*``), as one ``.pose`` component ``PT_SKELETON`` (50 XYZC points, the
``PT_BONES`` as limbs, confidence 1) that ``pose_format.Pose.read`` reads and its ``PoseVisualizer``
draws. Coordinates go onto a 650 x 650 canvas as Progressive Transformers' ``plot_videos.py`` draws
them: ``pixel = 720 * joint + (350, 250, 0)`` (``PT_POSE_SCALE``, ``PT_POSE_OFFSET``; divide back for
the model's units).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from datamodules.atomic_write import write_bytes_atomically
from datamodules.keypoints import (FACE_COCO, LEFT_HAND_COCO, NUM_COCO_KEYPOINTS, PT_BONES,
                                   PT_LEFT_HAND, PT_NUM_JOINTS, PT_RIGHT_HAND, RIGHT_HAND_COCO)

PathLike = str | Path

# pose-format reads a whole file and copies its arrays, so a file costs about twice its size in memory.
# 1 GiB: ~670k frames (6 hours at 30 fps) of 133 (x, y, confidence) float32 points for one person.
MAX_POSE_FILE_BYTES = 1 << 30

# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------

# COCO-WholeBody parts as pose-format's cocowholebody133 header splits them: (first index, points).
# Part boundaries as in keypoints.py's docstring (0-22 body and feet, 23-90 face, then the hands).
COCO_WHOLEBODY_PARTS = {"BODY": (0, 23), "FACE": (23, 68),
                        "LEFT_HAND": (LEFT_HAND_COCO[0], 21), "RIGHT_HAND": (RIGHT_HAND_COCO[0], 21)}
assert sum(n for _, n in COCO_WHOLEBODY_PARTS.values()) == NUM_COCO_KEYPOINTS
ALPHAPOSE_SUFFIX = "_133"  # pose-format's alphapose_133.py: the same parts named BODY_133, ...

HOLISTIC_COMPONENTS = ("POSE_LANDMARKS", "FACE_LANDMARKS", "LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS")
HOLISTIC_IGNORED = ("POSE_WORLD_LANDMARKS",)  # metric 3-D copy of the pose: no image coordinates

# MediaPipe PoseLandmark names -> COCO-WholeBody index (the table in the module docstring).
HOLISTIC_POSE_TO_COCO = {
    "NOSE": 0, "LEFT_EYE": 1, "RIGHT_EYE": 2, "LEFT_EAR": 3, "RIGHT_EAR": 4,
    "LEFT_SHOULDER": 5, "RIGHT_SHOULDER": 6, "LEFT_ELBOW": 7, "RIGHT_ELBOW": 8,
    "LEFT_WRIST": 9, "RIGHT_WRIST": 10, "LEFT_HIP": 11, "RIGHT_HIP": 12,
    "LEFT_KNEE": 13, "RIGHT_KNEE": 14, "LEFT_ANKLE": 15, "RIGHT_ANKLE": 16,
    "LEFT_HEEL": 19, "RIGHT_HEEL": 22,
}
# MediaPipe HandLandmark names, in MediaPipe's order, which is COCO-WholeBody's (OpenPose's) hand order.
HOLISTIC_HAND_POINTS = ("WRIST",
                        "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP",
                        *(f"{finger}_{joint}" for finger in ("INDEX_FINGER", "MIDDLE_FINGER", "RING_FINGER", "PINKY")
                          for joint in ("MCP", "PIP", "DIP", "TIP")))
# Uni-Sign's 18 face points (keypoints.FACE_COCO order: 9 jaw, 8 inner lips, nose tip) -> face-mesh
# indices, from PeizhiYan/Mediapipe_2_Dlib_Landmarks mp2dlib.py (iBUG-68 rows 1, 3, ..., 17; 61-68; 31).
FACE_MESH_FOR_UNISIGN = (
    (127,), (93,), (58, 172), (150,), (152,), (379,), (397, 288), (323,), (356,),  # jaw
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),  # inner lips
    (4,),  # nose tip
)
HOLISTIC_FACE_TO_COCO = dict(zip(FACE_COCO, FACE_MESH_FOR_UNISIGN))
assert len(HOLISTIC_FACE_TO_COCO) == len(FACE_COCO) == len(FACE_MESH_FOR_UNISIGN)
NOSE_TIP_COCO = FACE_COCO[-1]  # 53, Uni-Sign's face anchor

# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _import_pose_format():
    try:
        import pose_format
    except ImportError as err:
        raise ImportError(".pose files need the pose-format package: pip install 'signlab[pose-format]' "
                          "(or pip install pose-format)") from err
    return pose_format


def read_pose_format(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ``.pose`` file as ``(keypoints (T, 133, 2), scores (T, 133))`` float32, normalised by the
    header's width and height, person 0: the structure ``read_pose_pickle`` returns.

    COCO-WholeBody-133 and MediaPipe Holistic files (module docstring for the mapping). A file
    pose-format cannot parse, with components of neither layout, no frame, no person, a zero
    width or height, or non-finite coordinates of a scored point raises ValueError naming it; so
    does a file over ``MAX_POSE_FILE_BYTES`` or whose header declares more pose data than the file
    holds (``check_declared_size``), before anything is read or allocated.
    """
    pose_format = _import_pose_format()
    path = Path(path)
    size = path.stat().st_size  # a missing file stays FileNotFoundError, as for the pickles
    if size > MAX_POSE_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes; a .pose file may hold at most {MAX_POSE_FILE_BYTES} "
                         "(pose-format reads all of it, then copies it)")
    data = path.read_bytes()
    try:
        check_declared_size(data)
        pose = pose_format.Pose.read(data)
    except Exception as err:  # struct.error, ValueError, UnicodeDecodeError, ... on a corrupt file
        raise ValueError(f"{path}: not a readable .pose file ({type(err).__name__}: {err})") from err
    try:
        return _to_coco_wholebody(pose)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_declared_size(data: bytes) -> None:
    """ValueError when the body sizes a version-0.2 header declares (frames x people x points x
    (dims + 1) float32 values: coordinates and confidence) exceed the bytes after it: a truncated
    file, or a forged one whose counts would make pose-format size its arrays from the header
    rather than the file. Version 0.1 files are skipped: pose-format derives their frame count from
    the file size."""
    from pose_format.pose_header import PoseHeader
    from pose_format.utils.reader import BufferReader, ConstStructs
    reader = BufferReader(data)
    header = PoseHeader.read(reader)
    if round(header.version, 3) != 0.2:
        return
    reader.unpack(ConstStructs.float)  # fps
    frames = reader.unpack(ConstStructs.uint)
    people = reader.unpack(ConstStructs.ushort)
    points, dims = sum(len(c.points) for c in header.components), header.num_dims()
    declared = frames * people * points * (dims + 1) * np.dtype(np.float32).itemsize
    if declared > reader.bytes_left():
        raise ValueError(f"the header declares {frames} frames x {people} people x {points} points x "
                         f"{dims} dims + confidence ({declared} bytes) but the file holds "
                         f"{reader.bytes_left()} bytes of pose data")


def _sources(header) -> np.ndarray:
    """(133, 2) indices into the file's flat point list for every COCO-WholeBody point: the mean of
    the two is taken (a one-point source is repeated), -1 for no counterpart."""
    offsets, start = {}, 0
    for component in header.components:
        offsets[component.name] = (start, component)
        start += len(component.points)
    names = set(offsets)
    src = np.full((NUM_COCO_KEYPOINTS, 2), -1, np.int64)

    for suffix in ("", ALPHAPOSE_SUFFIX):
        if names == {part + suffix for part in COCO_WHOLEBODY_PARTS}:
            for part, (first, count) in COCO_WHOLEBODY_PARTS.items():
                offset, component = offsets[part + suffix]
                if len(component.points) != count:
                    raise ValueError(f"COCO-WholeBody component {component.name} has {len(component.points)} "
                                     f"points, expected {count}")
                src[first:first + count] = (offset + np.arange(count))[:, None]
            return src

    if "POSE_LANDMARKS" in names and names <= set(HOLISTIC_COMPONENTS + HOLISTIC_IGNORED):
        def index(component: str) -> dict[str, int]:
            if component not in offsets:
                return {}
            offset, comp = offsets[component]
            return {name: offset + i for i, name in enumerate(comp.points)}

        pose = index("POSE_LANDMARKS")
        for name, coco in HOLISTIC_POSE_TO_COCO.items():
            if name in pose:
                src[coco] = pose[name]
        for component, coco in (("LEFT_HAND_LANDMARKS", LEFT_HAND_COCO), ("RIGHT_HAND_LANDMARKS", RIGHT_HAND_COCO)):
            hand = index(component)
            for name, target in zip(HOLISTIC_HAND_POINTS, coco):
                if name in hand:
                    src[target] = hand[name]
        face = index("FACE_LANDMARKS")  # points named by their mesh index: "0" ... "467" (or "477")
        for coco, mesh in HOLISTIC_FACE_TO_COCO.items():
            if all(str(m) in face for m in mesh):
                src[coco] = [face[str(mesh[0])], face[str(mesh[-1])]]
        if src[NOSE_TIP_COCO, 0] < 0 and "NOSE" in pose:  # reduced faces keep no nose point; the pose's
            src[NOSE_TIP_COCO] = pose["NOSE"]              # nose is the same anatomical point
        return src

    raise ValueError(
        f"unknown .pose components {[c.name for c in header.components]}: expected COCO-WholeBody 133 "
        f"({', '.join(COCO_WHOLEBODY_PARTS)}, or with the suffix {ALPHAPOSE_SUFFIX}) or MediaPipe Holistic "
        f"({', '.join(HOLISTIC_COMPONENTS)}, optionally {', '.join(HOLISTIC_IGNORED)}; POSE_LANDMARKS required)")


def _to_coco_wholebody(pose) -> tuple[np.ndarray, np.ndarray]:
    header, body = pose.header, pose.body
    src = _sources(header)
    data = body.data
    if data.ndim != 4 or data.shape[-1] < 2:
        raise ValueError(f"pose data has shape {data.shape}, expected (frames, people, points, >= 2 dims)")
    frames, people = data.shape[:2]
    if frames == 0:
        raise ValueError("empty pose sequence (0 frames)")
    if people == 0:
        raise ValueError("no person in the pose data")
    width, height = header.dimensions.width, header.dimensions.height
    if width <= 0 or height <= 0:
        raise ValueError(f"header dimensions {width} x {height}: cannot normalise by width and height")
    xy = np.asarray(np.ma.getdata(data)[:, 0, :, :2], np.float64)  # (T, N, 2) pixels
    masked = np.ma.getmaskarray(data)[:, 0, :, :2].any(-1)
    score = np.where(masked, 0.0, np.asarray(body.confidence, np.float64)[:, 0])  # (T, N)

    have = src[:, 0] >= 0  # (133,)
    safe = np.where(have[:, None], src, 0)
    keypoints = xy[:, safe].mean(axis=2) / np.array([width, height], np.float64)  # (T, 133, 2)
    scores = np.where(have, score[:, safe].min(axis=2), 0.0)  # (T, 133)
    scored = scores > 0
    if not np.isfinite(keypoints[scored]).all() or not np.isfinite(scores).all():
        raise ValueError("NaN or infinite keypoint coordinates or scores")
    keypoints[~scored] = 0.0  # unscored points: (0, 0), whatever the file holds under the mask
    return keypoints.astype(np.float32), scores.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Writing production output
# --------------------------------------------------------------------------------------------

# Progressive Transformers' plot_videos.py draws joints * 3 * 240 + (350, 250) on a 650 x 650 frame.
PT_POSE_CANVAS = 650
PT_POSE_SCALE = 720.0
PT_POSE_OFFSET = (350.0, 250.0, 0.0)
PT_COMPONENT = "PT_SKELETON"

PT_BODY_POINT_NAMES = ("HEAD", "NECK", "RIGHT_SHOULDER", "RIGHT_ELBOW", "RIGHT_WRIST",
                       "LEFT_SHOULDER", "LEFT_ELBOW", "LEFT_WRIST")  # OpenPose order, keypoints.py
PT_POINT_NAMES = (PT_BODY_POINT_NAMES + tuple(f"LEFT_HAND_{i}" for i in range(len(PT_LEFT_HAND)))
                  + tuple(f"RIGHT_HAND_{i}" for i in range(len(PT_RIGHT_HAND))))
assert len(PT_POINT_NAMES) == PT_NUM_JOINTS
# per-point colours (RGB): body blue, signer's left hand green, right hand orange
PT_POINT_COLORS = ([(60, 90, 220)] * len(PT_BODY_POINT_NAMES) + [(0, 170, 0)] * len(PT_LEFT_HAND)
                   + [(255, 128, 0)] * len(PT_RIGHT_HAND))




def pt_pose_header():
    """The ``.pose`` header ``write_pose_format`` writes: one 50-point XYZC component on a
    650 x 650 canvas."""
    _import_pose_format()
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
    component = PoseHeaderComponent(name=PT_COMPONENT, points=list(PT_POINT_NAMES),
                                    limbs=[(int(a), int(b)) for a, b in PT_BONES],
                                    colors=PT_POINT_COLORS, point_format="XYZC")
    return PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(PT_POSE_CANVAS, PT_POSE_CANVAS, 0),
                      components=[component])


def write_pose_format(path: PathLike, poses: np.ndarray, fps: float) -> Path:
    """Write generated PT-skeleton poses (T, 50, 3) as a ``.pose`` file (atomically); returns the path.

    Joints map to pixels as ``PT_POSE_SCALE * joint + PT_POSE_OFFSET`` (PT's own plotting), every
    confidence is 1. Raises ValueError for a wrong shape, no frame, non-finite values or an fps that
    is not a positive number.
    """
    _import_pose_format()
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    poses = np.asarray(poses, dtype=np.float32)
    if poses.ndim != 3 or poses.shape[1:] != (PT_NUM_JOINTS, 3) or len(poses) == 0:
        raise ValueError(f"{path}: poses have shape {poses.shape}, expected (T >= 1, {PT_NUM_JOINTS}, 3)")
    if not np.isfinite(poses).all():
        raise ValueError(f"{path}: poses hold NaN or infinite values")
    if not (isinstance(fps, (int, float, np.number)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps must be a positive number, got {fps!r}")
    pixels = poses * np.float32(PT_POSE_SCALE) + np.asarray(PT_POSE_OFFSET, np.float32)
    body = NumPyPoseBody(fps=float(fps), data=pixels[:, None],  # (T, 1 person, 50, 3)
                         confidence=np.ones((len(poses), 1, PT_NUM_JOINTS), np.float32))
    buffer = io.BytesIO()
    Pose(pt_pose_header(), body).write(buffer)
    return write_bytes_atomically(path, buffer.getvalue())
