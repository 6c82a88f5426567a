"""Pose extraction: the signer rule on made-up detections, and the whole path through real rtmlib
(its YOLOX and RTMPose classes, pre- and post-processing) on ONNX Runtime, with two tiny ONNX models
built here and a short video written here. Nothing is downloaded.

The tiny models are honest stand-ins with the real models' interfaces, not pose estimators:
- "detector": YOLOX-with-NMS output (1, N, 5) = fixed boxes (x0, y0, x1, y1, score), whatever the image
  (the image still flows into the graph);
- "pose model": RTMPose's SimCC outputs simcc_x (1, 133, 2W), simcc_y (1, 133, 2H) computed from the
  crop rtmlib feeds it: per column / row, the brightest value (sigmoid of the normalised intensity),
  so every keypoint lands on the bright square inside the box, keypoint k shifted by a few pixels
  in a 5 x 5 grid (a person-sized spread, not one point). rtmlib decodes them as for RTMW.
"""
from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from datamodules import extract_poses as ep
from datamodules.formats import read_pose_pickle

W, H = 128, 96  # video frame size
POSE_W, POSE_H = 48, 64  # the tiny pose model's input (rtmlib's (w, h))
SIGNER_BOX = (30.0, 15.0, 110.0, 90.0)
BYSTANDER_BOX = (0.0, 0.0, 24.0, 24.0)
FRAMES = 8


def _signer_square(t):
    return 50 + 3 * t, 40  # top-left corner of the signer's 12 x 12 white square in frame t


def _write_video(path, frames=FRAMES, signer=True):
    cv2 = pytest.importorskip("cv2", reason="the `extract` extra (opencv-python) is not installed")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for t in range(frames):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[4:12, 4:12] = 150  # the bystander: a grey square in the corner
        if signer:
            x, y = _signer_square(t)
            frame[y:y + 12, x:x + 12] = 255
        writer.write(frame)
    writer.release()
    return path


def _tiny_models(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the `test` extra (onnx) is not installed")
    from onnx import TensorProto, helper, numpy_helper

    # detector: images (1, 3, h, w) -> dets (1, 2, 5), the bystander first (person 0 is not the signer)
    boxes = np.array([[[*BYSTANDER_BOX, 0.9], [*SIGNER_BOX, 0.95]]], np.float32)
    det = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["boxes", "nothing"], ["dets"])],
        "tiny_yolox_with_nms",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 2, 5])],
        [numpy_helper.from_array(boxes, "boxes"), numpy_helper.from_array(np.array(0, np.float32), "zero")])

    # pose: input (1, 3, 64, 48) -> simcc_x (1, 133, 96), simcc_y (1, 133, 128)
    k = np.arange(133)
    shift_x, shift_y = 4 * (k % 5 - 2), 4 * ((k // 5) % 5 - 2)  # in SimCC bins (half pixels)
    idx_x = np.clip((np.arange(2 * POSE_W)[None] - shift_x[:, None]) // 2, 0, POSE_W - 1).astype(np.int64)
    idx_y = np.clip((np.arange(2 * POSE_H)[None] - shift_y[:, None]) // 2, 0, POSE_H - 1).astype(np.int64)
    nodes = [helper.make_node("ReduceMean", ["input"], ["grey"], axes=[1], keepdims=0),  # (1, 64, 48)
             helper.make_node("Mul", ["grey", "four"], ["sharp"]),
             helper.make_node("Sigmoid", ["sharp"], ["bright"])]
    for axis, name, idx in ((1, "x", idx_x), (2, "y", idx_y)):  # max over rows -> column profile, and back
        nodes += [helper.make_node("ReduceMax", ["bright"], [f"profile_{name}"], axes=[axis], keepdims=0),
                  helper.make_node("Reshape", [f"profile_{name}", "flat"], [f"flat_{name}"]),
                  helper.make_node("Gather", [f"flat_{name}", f"idx_{name}"], [f"bins_{name}"], axis=0),
                  helper.make_node("Unsqueeze", [f"bins_{name}", "batch_axis"], [f"simcc_{name}"])]
    pose = helper.make_graph(
        nodes, "tiny_rtmpose_simcc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_H, POSE_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 2 * POSE_W]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 2 * POSE_H])],
        [numpy_helper.from_array(np.array(4, np.float32), "four"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat"),
         numpy_helper.from_array(idx_x, "idx_x"), numpy_helper.from_array(idx_y, "idx_y"),
         numpy_helper.from_array(np.array([0], np.int64), "batch_axis")])
    paths = []
    for graph, name in ((det, "det.onnx"), (pose, "pose.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # readable by any ONNX Runtime of the last years
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp_path / name))
        paths.append(str(tmp_path / name))
    return paths


def _rtmlib_factory(tmp_path):
    pytest.importorskip("rtmlib", reason="the `extract` extra is not installed")
    pytest.importorskip("onnxruntime", reason="the `extract` extra is not installed")
    det, pose = _tiny_models(tmp_path)
    # the real rtmlib Wholebody (YOLOX + RTMPose on ONNX Runtime), as the CLI builds it
    return functools.partial(ep.rtmlib_wholebody, det=det, det_input_size=(H, W), pose=pose,
                             pose_input_size=(POSE_W, POSE_H), device="cpu")


def test_rtmlib_on_tiny_onnx_models_writes_the_signer_as_unisign_reads_it(tmp_path):
    (tmp_path / "models").mkdir()
    factory = _rtmlib_factory(tmp_path / "models")
    video = _write_video(tmp_path / "clip.mp4")
    report = ep.extract_poses([video], tmp_path / "poses", factory, progress=False)
    assert report.failed == {} and report.written == [tmp_path / "poses" / "clip.pkl"]

    with open(tmp_path / "poses" / "clip.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["keypoints"].shape == (FRAMES, 1, 133, 2) and data["keypoints"].dtype == np.float32
    assert data["scores"].shape == (FRAMES, 1, 133)
    assert (data["width"], data["height"]) == (W, H) and data["fps"] == pytest.approx(10)
    # Uni-Sign's datasets.py indexes pose['keypoints'][t][0] and len(pose['scores'])
    assert data["keypoints"][3][0].shape == (133, 2) and len(data["scores"]) == FRAMES

    keypoints, scores = read_pose_pickle(tmp_path / "poses" / "clip.pkl")
    assert keypoints.shape == (FRAMES, 133, 2) and (scores > 0.9).all()
    pixels = keypoints * [W, H]
    for t in range(FRAMES):  # the signer's square, not the bystander's (person 0 of every frame)
        x, y = _signer_square(t)
        assert abs(np.median(pixels[t, :, 0]) - x) < 5 and abs(np.median(pixels[t, :, 1]) - y) < 5
        assert 5 < np.ptp(pixels[t, :, 0]) < 30  # the 5 x 5 spread, scaled back by rtmlib's affine
    assert np.all(np.diff(np.median(pixels[:, :, 0], axis=1)) > 0)  # it follows the square
    assert sorted(p.name for p in (tmp_path / "poses").iterdir()) == ["clip.pkl"]  # no temporaries


def test_cli_skips_done_videos_names_failures_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    (tmp_path / "models").mkdir()
    factory = _rtmlib_factory(tmp_path / "models")
    # the CLI's own estimator, rtmlib's Wholebody, given the tiny models instead of the downloaded ones
    monkeypatch.setattr(ep, "rtmlib_wholebody", lambda **cli_kwargs: factory())
    videos = tmp_path / "videos"
    (videos / "dev").mkdir(parents=True)
    _write_video(videos / "dev" / "a.mp4", frames=3)
    _write_video(videos / "b.mp4", frames=3)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    frames = videos / "train" / "c"  # a PHOENIX-style frame folder
    frames.mkdir(parents=True)
    cv2 = pytest.importorskip("cv2", reason="the `extract` extra (opencv-python) is not installed")
    for t in range(3):
        frame = np.zeros((H, W, 3), np.uint8)
        x, y = _signer_square(t)
        frame[y:y + 12, x:x + 12] = 255
        cv2.imwrite(str(frames / f"images{t + 1:04d}.png"), frame)
    out = tmp_path / "poses"

    assert ep.main([str(videos), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 written, 0 already there, 1 failed" in err
    assert f"failed: {videos / 'broken.mp4'}: VideoError: cannot open the video" in err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.pkl"))
    assert written == ["b.pkl", "dev/a.pkl", "train/c.pkl"]
    assert read_pose_pickle(out / "train" / "c.pkl")[0].shape == (3, 133, 2)

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pkl")}
    assert ep.main([str(videos), "--out", str(out)]) == 1  # resumed: only the broken one is tried again
    assert "0 written, 3 already there, 1 failed" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pkl")} == before

    (videos / "broken.mp4").unlink()
    assert ep.main([str(videos / "b.mp4"), "--out", str(out), "--overwrite"]) == 0
    assert "1 written, 0 already there, 0 failed" in capsys.readouterr().err


class _Scripted:
    """A picklable estimator for worker processes, by the frame's grey level: dark, one person;
    mid grey, nobody; bright, the estimator raises (levels far apart: the video codec is lossy)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        value = int(frame[H // 2, W // 2, 0])
        if 50 < value < 150:
            return np.zeros((0, 133, 2)), np.zeros((0, 133))
        if value >= 150:
            raise RuntimeError("estimator crashed")
        keypoints = np.tile(np.linspace([40, 30], [80, 70], 133), (1, 1, 1))
        return keypoints, np.full((1, 133), 0.8)


def _flat_video(path, value, frames=3):
    cv2 = pytest.importorskip("cv2", reason="the `extract` extra (opencv-python) is not installed")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for _ in range(frames):
        writer.write(np.full((H, W, 3), value, np.uint8))
    writer.release()
    return path


def test_parallel_workers_report_every_failure_and_write_the_rest(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    for name in ("one", "two", "three"):
        _flat_video(videos / f"{name}.avi", 0)
    _flat_video(videos / "empty.avi", 100)
    _flat_video(videos / "crash.avi", 220)
    report = ep.extract_poses([videos], tmp_path / "out", _Scripted, workers=2, progress=False)
    assert sorted(p.name for p in report.written) == ["one.pkl", "three.pkl", "two.pkl"]
    assert set(report.failed) == {videos / "empty.avi", videos / "crash.avi"}
    assert "no person detected in any of its 3 frames" in report.failed[videos / "empty.avi"]
    assert "RuntimeError: estimator crashed" in report.failed[videos / "crash.avi"]
    assert not (tmp_path / "out" / "empty.pkl").exists() and not (tmp_path / "out" / "crash.pkl").exists()
    keypoints, scores = read_pose_pickle(tmp_path / "out" / "one.pkl")
    np.testing.assert_allclose(keypoints[0, 0], [40 / W, 30 / H], rtol=1e-6)


def test_bad_estimator_output_and_colliding_outputs_are_named(tmp_path):
    video = _flat_video(tmp_path / "x.avi", 0)
    report = ep.extract_poses([video], tmp_path / "out",
                              lambda: (lambda frame: (np.zeros((1, 17, 2)), np.zeros((1, 17)))), progress=False)
    assert "keypoints (1, 17, 2)" in report.failed[video]
    (tmp_path / "a").mkdir()
    _flat_video(tmp_path / "a" / "x.avi", 0)
    with pytest.raises(ValueError, match=r"x\.avi and .*x\.avi would both be written to .*x\.pkl"):
        ep.find_videos([video, tmp_path / "a"], tmp_path / "out")


def _person(box, score=0.9):
    """Keypoints whose 17 body points span ``box`` (x0, y0, x1, y1), the rest at its centre."""
    x0, y0, x1, y1 = box
    keypoints = np.tile([(x0 + x1) / 2, (y0 + y1) / 2], (133, 1)).astype(np.float32)
    keypoints[:17] = np.linspace([x0, y0], [x1, y1], 17)
    return keypoints, np.full(133, score, np.float32)


def _frame(*people):
    if not people:
        return np.zeros((0, 133, 2), np.float32), np.zeros((0, 133), np.float32)
    return np.stack([p[0] for p in people]), np.stack([p[1] for p in people])


def test_signer_is_the_prominent_person_and_is_tracked_not_taken_by_index():
    signer = lambda dx: _person((60 + dx, 20, 140 + dx, 180))  # noqa: E731  large, central in 200 x 200
    passerby = _person((0, 0, 30, 40))  # small, in a corner
    walker = lambda x: _person((x, 10, x + 90, 190))  # noqa: E731  as big as the signer, walking in
    frames = [_frame(passerby, signer(0)),
              _frame(),  # nobody
              _frame(signer(4), passerby),  # order changes
              _frame(walker(150), signer(6)),  # someone else enters at the edge
              _frame(walker(175)),  # the signer is occluded: only the other person
              _frame(signer(8), _person((0, 0, 30, 40), score=0.1))]  # unconfident person: ignored
    keypoints, scores, found = ep.select_signer(frames, 200, 200)
    assert found == 4
    assert (scores[[1, 4]] == 0).all() and (keypoints[[1, 4]] == 0).all()
    for t, dx in ((0, 0), (2, 4), (3, 6), (5, 8)):
        np.testing.assert_allclose(keypoints[t, 0], [60 + dx, 20])

    # seeded in frame 2 (the most central signer), followed backwards into frame 1; frame 0 has only
    # the passerby, who is not taken
    frames = [_frame(passerby), _frame(signer(-2), passerby), _frame(signer(0))]
    keypoints, scores, found = ep.select_signer(frames, 200, 200)
    assert found == 2 and (scores[0] == 0).all()
    np.testing.assert_allclose(keypoints[1, 0], [58, 20])

    assert ep.select_signer([_frame(), _frame()], 200, 200)[2] == 0


def test_an_estimator_that_cannot_load_stops_the_run_before_any_video(tmp_path, monkeypatch, capsys):
    video = _flat_video(tmp_path / "x.avi", 0)

    def offline(**cli_kwargs):
        raise OSError("no route to host")  # what rtmlib's download gives offline
    monkeypatch.setattr(ep, "rtmlib_wholebody", offline)
    assert ep.main([str(video), "--out", str(tmp_path / "out"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the pose estimator (OSError: no route to host)" in err and "--det and --pose" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
