"""``.pose`` interop: files written with pose-format's own API read back through ``read_pose_format``,
and ``write_pose_format`` output read by pose-format's ``Pose.read`` (and drawn by its visualiser)."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

pose_format = pytest.importorskip("pose_format", reason="the `pose-format` extra is not installed")
from pose_format import Pose  # noqa: E402
from pose_format.numpy.pose_body import NumPyPoseBody  # noqa: E402
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions  # noqa: E402
from pose_format.utils.cocowholebody133_header import cocowholebody_components  # noqa: E402

from datamodules import pose_format_io as pfio  # noqa: E402
from datamodules.formats import read_pose_pickle  # noqa: E402
from datamodules.keypoints import FACE_COCO, PT_BONES, PT_NUM_JOINTS  # noqa: E402

WIDTH, HEIGHT = 640, 480

# MediaPipe PoseLandmark names in MediaPipe's order (mediapipe is not installed here; pose-format's
# holistic header takes them from mediapipe.solutions.holistic.PoseLandmark).
BLAZEPOSE = ["NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
             "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
             "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY",
             "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP",
             "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL",
             "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX"]


def _write(path, components, data, confidence, fmt_dims=None, fps=25.0):
    header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(*(fmt_dims or (WIDTH, HEIGHT, 0))),
                        components=components)
    with open(path, "wb") as f:
        Pose(header, NumPyPoseBody(fps=fps, data=data, confidence=confidence)).write(f)
    return path


def _coco_pose(rng, frames=5, people=2):
    pixels = rng.uniform(0, 1, (frames, people, 133, 2)) * [WIDTH, HEIGHT]
    confidence = rng.uniform(0.05, 1, (frames, people, 133))
    confidence[1, 0, 100:] = 0  # a frame whose right hand and part of the left are not detected
    return pixels.astype(np.float32), confidence.astype(np.float32)


@pytest.mark.parametrize("suffix", ["", "_133"])
def test_coco_wholebody_file_written_by_pose_format_reads_as_the_pickle_does(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pixels, confidence = _coco_pose(rng)
    components = cocowholebody_components()
    for c in components:
        c.name += suffix  # AlphaPose's 133 layout: the same parts named BODY_133, ...
    path = _write(tmp_path / "coco.pose", components, pixels, confidence)

    keypoints, scores = pfio.read_pose_format(path)
    assert keypoints.shape == (5, 133, 2) and scores.shape == (5, 133)
    assert keypoints.dtype == scores.dtype == np.float32
    expected = pixels[:, 0] / np.array([WIDTH, HEIGHT], np.float32)  # person 0, Uni-Sign's normalisation
    seen = confidence[:, 0] > 0
    np.testing.assert_allclose(keypoints[seen], expected[seen], rtol=1e-6)
    np.testing.assert_array_equal(scores, confidence[:, 0])
    assert (keypoints[1, 100:] == 0).all()  # undetected points: (0, 0), score 0

    # the same data as a Uni-Sign pickle (T, 1, 133, 2) reads identically through read_pose_pickle
    with open(tmp_path / "coco.pkl", "wb") as f:
        pickle.dump({"keypoints": np.where(seen[..., None], expected, 0)[:, None],
                     "scores": confidence[:, :1]}, f)
    pkl_keypoints, pkl_scores = read_pose_pickle(tmp_path / "coco.pkl")
    np.testing.assert_allclose(keypoints, pkl_keypoints, rtol=1e-6)
    np.testing.assert_array_equal(scores, pkl_scores)


def _holistic_components(face_points, pose_points=BLAZEPOSE, world=True):
    hand = list(pfio.HOLISTIC_HAND_POINTS)
    comps = [PoseHeaderComponent("POSE_LANDMARKS", list(pose_points), [], [(255, 0, 0)], "XYZC"),
             PoseHeaderComponent("FACE_LANDMARKS", [str(i) for i in face_points], [], [(128, 0, 0)], "XYZC"),
             PoseHeaderComponent("LEFT_HAND_LANDMARKS", hand, [], [(0, 255, 0)], "XYZC"),
             PoseHeaderComponent("RIGHT_HAND_LANDMARKS", hand, [], [(0, 0, 255)], "XYZC")]
    if world:
        comps.append(PoseHeaderComponent("POSE_WORLD_LANDMARKS", list(pose_points), [], [(255, 0, 0)], "XYZC"))
    return comps


def _holistic_file(path, face_points, pose_points=BLAZEPOSE, frames=3):
    """A Holistic-shaped file (pixel x, y, z and confidence, as pose-format's holistic.py writes) whose
    every point sits at a distinct known pixel: point k of the flat list at (k + 0.5, 2k + 1)."""
    comps = _holistic_components(face_points, pose_points)
    total = sum(len(c.points) for c in comps)
    data = np.zeros((frames, 1, total, 3), np.float32)
    data[..., 0] = np.arange(total) + 0.5
    data[..., 1] = 2 * np.arange(total) + 1
    data[..., 2] = -7  # z: ignored
    confidence = np.full((frames, 1, total), 0.9, np.float32)
    starts = np.cumsum([0] + [len(c.points) for c in comps])
    confidence[2, 0, starts[3]:starts[4]] = 0  # right hand missing in frame 2
    _write(path, comps, data, confidence, fmt_dims=(WIDTH, HEIGHT, 1000))
    return {c.name: {name: int(starts[i]) + j for j, name in enumerate(c.points)} for i, c in enumerate(comps)}


def _pixel(k):
    return np.array([(k + 0.5) / WIDTH, (2 * k + 1) / HEIGHT], np.float32)


def test_holistic_file_maps_pose_hands_and_unisign_face_points(tmp_path):
    where = _holistic_file(tmp_path / "holistic.pose", face_points=range(478))
    keypoints, scores = pfio.read_pose_format(tmp_path / "holistic.pose")
    assert keypoints.shape == (3, 133, 2) and scores.shape == (3, 133)
    pose, face = where["POSE_LANDMARKS"], where["FACE_LANDMARKS"]
    lhand, rhand = where["LEFT_HAND_LANDMARKS"], where["RIGHT_HAND_LANDMARKS"]
    # body: by name, signer's left to COCO's left
    for name, coco in [("NOSE", 0), ("LEFT_EAR", 3), ("RIGHT_EAR", 4), ("LEFT_SHOULDER", 5), ("RIGHT_WRIST", 10),
                       ("LEFT_HEEL", 19), ("RIGHT_HEEL", 22)]:
        np.testing.assert_allclose(keypoints[0, coco], _pixel(pose[name]), rtol=1e-6)
    # hands: MediaPipe's order is COCO-WholeBody's
    np.testing.assert_allclose(keypoints[0, 91], _pixel(lhand["WRIST"]), rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 111], _pixel(lhand["PINKY_TIP"]), rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 116], _pixel(rhand["THUMB_TIP"]), rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 120], _pixel(rhand["INDEX_FINGER_TIP"]), rtol=1e-6)
    # face: the 18 Uni-Sign points, the two-point ones averaged
    np.testing.assert_allclose(keypoints[0, 23], _pixel(face["127"]), rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 27], (_pixel(face["58"]) + _pixel(face["172"])) / 2, rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 85], _pixel(face["13"]), rtol=1e-6)
    np.testing.assert_allclose(keypoints[0, 53], _pixel(face["4"]), rtol=1e-6)  # nose tip from the mesh
    mapped = set(pfio.HOLISTIC_POSE_TO_COCO.values()) | set(range(91, 133)) | set(FACE_COCO)
    unmapped = sorted(set(range(133)) - mapped)
    assert (scores[:2, sorted(mapped)] == np.float32(0.9)).all()
    assert (scores[:, unmapped] == 0).all() and (keypoints[:, unmapped] == 0).all()
    assert {17, 18, 20, 21, 24, 30, 60}.issubset(unmapped)  # toes and non-Uni-Sign face points
    assert (scores[2, 112:] == 0).all() and (keypoints[2, 112:] == 0).all()  # the missing right hand


def test_reduced_holistic_uses_the_pose_nose_as_face_anchor_or_none(tmp_path):
    contour_face = [0, 13, 14, 58, 78, 82, 87, 93, 127, 150, 152, 172, 288, 308, 312, 317, 323, 356, 379, 397]
    where = _holistic_file(tmp_path / "a.pose", face_points=contour_face)
    keypoints, scores = pfio.read_pose_format(tmp_path / "a.pose")
    np.testing.assert_allclose(keypoints[0, 53], _pixel(where["POSE_LANDMARKS"]["NOSE"]), rtol=1e-6)
    assert (scores[:, FACE_COCO] > 0).all()

    upper_body = ["LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST",
                  "LEFT_HIP", "RIGHT_HIP"]  # what pose-format's own tests/data/mediapipe.pose keeps
    _holistic_file(tmp_path / "b.pose", face_points=contour_face, pose_points=upper_body)
    keypoints, scores = pfio.read_pose_format(tmp_path / "b.pose")
    assert scores[0, 53] == 0 and (scores[:, [0, 1, 2, 3, 4]] == 0).all()
    assert (scores[0, [5, 6, 7, 8, 9, 10, 11, 12]] > 0).all()


def test_unknown_corrupt_and_empty_files_name_the_file(tmp_path):
    openpose = [PoseHeaderComponent("pose_keypoints_2d", [f"p{i}" for i in range(25)], [], [(0, 0, 0)], "XYC")]
    path = _write(tmp_path / "openpose.pose", openpose, np.zeros((2, 1, 25, 2), np.float32),
                  np.ones((2, 1, 25), np.float32))
    with pytest.raises(ValueError, match=r"openpose\.pose: unknown \.pose components \['pose_keypoints_2d'\]"):
        pfio.read_pose_format(path)

    extra = _holistic_components(range(468)) + [PoseHeaderComponent("EXTRA", ["x"], [], [(0, 0, 0)], "XYZC")]
    total = sum(len(c.points) for c in extra)
    path = _write(tmp_path / "extra.pose", extra, np.zeros((1, 1, total, 3), np.float32),
                  np.ones((1, 1, total), np.float32))
    with pytest.raises(ValueError, match=r"extra\.pose: unknown \.pose components"):
        pfio.read_pose_format(path)

    pixels, confidence = _coco_pose(np.random.default_rng(1))
    good = _write(tmp_path / "good.pose", cocowholebody_components(), pixels, confidence)
    (tmp_path / "cut.pose").write_bytes(good.read_bytes()[:200])  # inside the header
    with pytest.raises(ValueError, match=r"cut\.pose: not a readable \.pose file"):
        pfio.read_pose_format(tmp_path / "cut.pose")

    path = _write(tmp_path / "empty.pose", cocowholebody_components(), np.zeros((0, 1, 133, 2), np.float32),
                  np.zeros((0, 1, 133), np.float32))
    with pytest.raises(ValueError, match=r"empty\.pose: empty pose sequence"):
        pfio.read_pose_format(path)

    path = _write(tmp_path / "flat.pose", cocowholebody_components(), pixels, confidence, fmt_dims=(0, 480, 0))
    with pytest.raises(ValueError, match=r"flat\.pose: header dimensions 0 x 480"):
        pfio.read_pose_format(path)

    pixels[0, 0, 5] = np.nan
    path = _write(tmp_path / "nan.pose", cocowholebody_components(), pixels, confidence)
    with pytest.raises(ValueError, match=r"nan\.pose: NaN"):
        pfio.read_pose_format(path)
    with pytest.raises(FileNotFoundError):
        pfio.read_pose_format(tmp_path / "missing.pose")


def _header_end(data: bytes) -> int:
    from pose_format.utils.reader import BufferReader
    reader = BufferReader(data)
    PoseHeader.read(reader)
    return reader.read_offset


@pytest.mark.parametrize("people", [1, 60000])
def test_forged_frame_count_is_refused_before_pose_format_allocates(tmp_path, monkeypatch, people):
    pixels, confidence = _coco_pose(np.random.default_rng(3), frames=4, people=1)
    good = _write(tmp_path / "good.pose", cocowholebody_components(), pixels, confidence)
    data = bytearray(good.read_bytes())
    body = _header_end(bytes(data))  # then fps (float), frames (uint32), people (uint16)
    data[body + 4:body + 8] = (4_000_000_000).to_bytes(4, "little")
    data[body + 8:body + 10] = people.to_bytes(2, "little")
    (tmp_path / "forged.pose").write_bytes(bytes(data))

    def no_body(*args, **kwargs):
        raise AssertionError("the body was read despite the forged header")

    monkeypatch.setattr(NumPyPoseBody, "read", classmethod(no_body))
    with pytest.raises(ValueError, match=r"forged\.pose: not a readable \.pose file .*declares 4000000000 frames x "
                                         rf"{people} people x 133 points x 2 dims"):
        pfio.read_pose_format(tmp_path / "forged.pose")
    monkeypatch.undo()
    keypoints, _ = pfio.read_pose_format(good)  # the untouched file still reads
    assert keypoints.shape == (4, 133, 2)


def test_file_over_the_budget_is_refused_unread(tmp_path, monkeypatch):
    pixels, confidence = _coco_pose(np.random.default_rng(4), frames=3, people=1)
    path = _write(tmp_path / "big.pose", cocowholebody_components(), pixels, confidence)
    monkeypatch.setattr(pfio, "MAX_POSE_FILE_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(type(path), "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(ValueError, match=rf"big\.pose: {path.stat().st_size} bytes; a \.pose file may hold at most"):
        pfio.read_pose_format(path)


def test_written_production_output_reads_back_through_pose_format(tmp_path):
    rng = np.random.default_rng(2)
    poses = rng.uniform(-0.4, 0.4, (7, PT_NUM_JOINTS, 3)).astype(np.float32)
    poses[:, 1] = 0  # the PT neck is the origin
    path = pfio.write_pose_format(tmp_path / "out" / "sample.pose", poses, fps=25)
    assert path == tmp_path / "out" / "sample.pose"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sample.pose"]  # no temporary left behind

    pose = Pose.read(path.read_bytes())
    assert pose.body.fps == 25
    assert pose.body.data.shape == (7, 1, PT_NUM_JOINTS, 3)
    (component,) = pose.header.components
    assert component.name == "PT_SKELETON" and component.format == "XYZC"
    assert len(component.points) == PT_NUM_JOINTS
    assert [tuple(limb) for limb in component.limbs] == [tuple(b) for b in PT_BONES]
    back = (np.asarray(pose.body.data)[:, 0] - np.array(pfio.PT_POSE_OFFSET)) / pfio.PT_POSE_SCALE
    np.testing.assert_allclose(back, poses, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(pose.body.confidence), 1)
    np.testing.assert_allclose(np.asarray(pose.body.data)[0, 0, 1, :2], [350, 250])  # the neck, PT's plot offset

    # pose-format's own visualiser draws it: coloured pixels on the white canvas
    from pose_format.pose_visualizer import PoseVisualizer
    frame = next(iter(PoseVisualizer(pose).draw(max_frames=1)))
    assert frame.shape[:2] == (pfio.PT_POSE_CANVAS, pfio.PT_POSE_CANVAS)
    assert (frame != 255).any(axis=-1).sum() > 500


def test_write_rejects_bad_input_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pose"
    good = np.zeros((2, PT_NUM_JOINTS, 3), np.float32)
    with pytest.raises(ValueError, match=r"x\.pose: poses have shape \(2, 49, 3\)"):
        pfio.write_pose_format(path, good[:, :49], fps=25)
    with pytest.raises(ValueError, match=r"shape \(0, 50, 3\)"):
        pfio.write_pose_format(path, good[:0], fps=25)
    with pytest.raises(ValueError, match="NaN"):
        pfio.write_pose_format(path, np.full_like(good, np.nan), fps=25)
    for fps in (0, -1, float("nan"), "25"):
        with pytest.raises(ValueError, match="fps"):
            pfio.write_pose_format(path, good, fps=fps)
    assert not path.exists()

    pfio.write_pose_format(path, good, fps=25)
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the temporary and the rename
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        pfio.write_pose_format(path, good + 0.1, fps=30)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pose"]
    Pose.read(io.BytesIO(before).read())


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pose_format", None)
    with pytest.raises(ImportError, match=r"pip install 'signlab\[pose-format\]'"):
        pfio.read_pose_format(tmp_path / "x.pose")
    with pytest.raises(ImportError, match="pose-format"):
        pfio.write_pose_format(tmp_path / "x.pose", np.zeros((1, PT_NUM_JOINTS, 3)), fps=25)
