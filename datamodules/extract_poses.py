"""Videos -> Uni-Sign pose pickles (COCO-WholeBody 133 keypoints) with rtmlib's whole-body models.

    python -m datamodules.extract_poses VIDEOS... --out POSE_DIR [--device cpu|cuda] [--mode lightweight]
                                        [--workers N] [--overwrite]

VIDEOS are video files and folders. A folder is searched recursively for video files (``--extensions``)
and for frame folders (a folder holding image files and no video, e.g. PHOENIX-2014T's
``fullFrame-210x260px/<split>/<name>/images0001.png``: its images, sorted by name, are one video). The
pickle of each keeps its path relative to the folder given: ``POSE_DIR/<relative folder>/<name>.pkl``,
so ``PHOENIX-2014T/features/fullFrame-210x260px`` gives the ``<split>/<name>.pkl`` layout the
translation DataModule reads. A video given as a file goes to ``POSE_DIR/<stem>.pkl``.

Each pickle is ``{"keypoints": (T, 1, 133, 2) float32, "scores": (T, 1, 133) float32, "width",
"height", "fps"}``: x divided by the frame width and y by its height, as Uni-Sign's
``demo/pose_extraction.py``. That script stores a per-frame list of every detected person (float64);
here one person (the signer, below) is kept and the frames are stacked. Both
``datamodules.formats.read_pose_pickle`` and Uni-Sign's ``datasets.py`` read either (Uni-Sign
indexes ``keypoints[t][0]``).

**One signer per video.** Per frame, the estimator gives every person it found; a person with fewer
than 2 body keypoints (COCO 0-16) scoring above 0.3 (``SCORE_THRESHOLD``) is ignored. Each person's
box is the extent of those confident body keypoints. The signer is chosen in the first
``SEED_FRAMES`` frames that have anyone: the person with the highest prominence = box area as a
fraction of the frame x centrality (1 - distance of the box centre from the frame centre / half
the frame diagonal); ties go to the largest box diagonal, then the earliest. From that frame the
signer is followed forwards and backwards: in each frame the person whose box centre is nearest to
the signer's last box centre, if that distance is under ``MAX_JUMP`` x the last box's diagonal
(at least ``MIN_TRACK_SCALE`` of the frame diagonal, so a small or degenerate box can still be
followed); otherwise the signer is missing in that frame and the last box stays the reference.

**Frames without the signer** (no one detected, or only other people) are written as keypoints
(0, 0) with score 0: every reader treats them as unconfident. (rtmlib's ``Wholebody`` itself never
returns nobody: with no detection it estimates one pose over the whole frame, whose scores are
usually low.) A video in which no one is ever detected, that cannot be opened, or that has no
decodable frame is a failure: no pickle is written for it.

**Resumable and safe to kill.** A video whose pickle exists is skipped (``--overwrite`` redoes
it); every pickle is written to a temporary file in the same folder and renamed, so a killed run
leaves whole pickles only (and perhaps a ``.<name>.pkl.*.tmp`` to delete). ``--workers N`` runs N
processes, each with its own estimator (ONNX Runtime sessions are per process), after one is made in
the main process first (rtmlib downloads its files once, and a model that cannot load stops the
run before any video, exit code 2); on a CPU, ONNX
Runtime already uses several threads per session, so more workers than cores gain nothing. Every
failure is named at the end, with its reason; the exit code is 1 if any video failed.

The estimator is anything with ``estimator(frame) -> (keypoints (P, 133, 2) pixels, scores
(P, 133))`` for a BGR uint8 frame (``PoseEstimator``): rtmlib's ``Wholebody`` is one (YOLOX person
detector + RTMW/DWPose SimCC pose model on ONNX Runtime; it downloads its ONNX files the first
time unless ``--det``/``--pose`` name local ones). Tests pass their own.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import multiprocessing
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from datamodules.keypoints import NUM_COCO_KEYPOINTS, SCORE_THRESHOLD
from datamodules.atomic_write import write_bytes_atomically

VIDEO_EXTENSIONS = ("mp4", "avi", "mov", "mkv", "webm", "mpg", "mpeg", "m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# The signer rule (module docstring). Boxes come from the body keypoints: hands and face move with
# the signing, the torso and head much less, so frame-to-frame box centres stay close.
BODY_POINTS = 17  # COCO-WholeBody 0-16: the body without feet
MIN_BODY_POINTS = 2  # a box needs two points
SEED_FRAMES = 10  # a third of a second at 30 fps: a passer-by rarely dominates all of it
MAX_JUMP = 0.5  # per frame, in signer-box diagonals: a neighbour standing beside the signer is ~1 away
MIN_TRACK_SCALE = 0.1  # of the frame diagonal: the least box size the jump is measured against
PICKLE_PROTOCOL = 4  # readable by every Python 3.8+, which Uni-Sign's code runs on


class PoseEstimator(Protocol):
    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BGR uint8 frame (H, W, 3) -> keypoints (P, 133, 2) in pixels, scores (P, 133); P may be 0."""


class VideoError(ValueError):
    """A video that cannot be opened, decoded, or in which no one is detected."""


class EstimatorError(RuntimeError):
    """The pose estimator cannot be made (e.g. rtmlib cannot download its models)."""


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def rtmlib_wholebody(mode: str = "lightweight", device: str = "cpu", backend: str = "onnxruntime",
                     det: str | None = None, det_input_size: Sequence[int] = (640, 640),
                     pose: str | None = None, pose_input_size: Sequence[int] = (288, 384)) -> PoseEstimator:
    """rtmlib's ``Wholebody`` (YOLOX + RTMW SimCC, COCO-WholeBody 133 points): ``mode`` picks rtmlib's
    downloaded models (Uni-Sign's script uses ``lightweight``); ``det``/``pose`` are local ONNX files
    or URLs that replace them, with their input sizes. Called once per worker process."""
    try:
        from rtmlib import Wholebody
    except ImportError as err:
        raise ImportError("pose extraction needs rtmlib and ONNX Runtime: pip install 'signlab[extract]'") from err
    return Wholebody(det=det, det_input_size=tuple(det_input_size), pose=pose,
                     pose_input_size=tuple(pose_input_size), mode=mode, backend=backend, device=device)


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise ImportError("reading videos needs OpenCV: pip install 'signlab[extract]'") from err
    return cv2


def read_frames(source: Path) -> tuple[Iterator[np.ndarray], float]:
    """(BGR frames, fps) of a video file or a folder of frame images (fps 0 when unknown)."""
    cv2 = _cv2()
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)

        def from_images() -> Iterator[np.ndarray]:
            for image in images:
                frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
                if frame is None:
                    raise VideoError(f"cannot decode frame image {image}")
                yield frame
        return from_images(), 0.0
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        capture.release()
        raise VideoError("cannot open the video (missing, not a video, or a codec OpenCV lacks)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)

    def from_video() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()
    return from_video(), fps if math.isfinite(fps) else 0.0


# --------------------------------------------------------------------------------------------
# The signer
# --------------------------------------------------------------------------------------------


def _boxes(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (P, 4) x0 y0 x1 y1 of the confident body keypoints, and which persons count (P,)."""
    body_xy, confident = keypoints[:, :BODY_POINTS], scores[:, :BODY_POINTS] > SCORE_THRESHOLD
    valid = confident.sum(1) >= MIN_BODY_POINTS
    lo = np.where(confident[..., None], body_xy, np.inf).min(1)
    hi = np.where(confident[..., None], body_xy, -np.inf).max(1)
    boxes = np.concatenate([lo, hi], axis=1)
    return np.where(valid[:, None], boxes, 0.0), valid


def select_signer(frames: Sequence[tuple[np.ndarray, np.ndarray]], width: int, height: int,
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """One person per frame (module docstring): per-frame (keypoints (P, 133, 2), scores (P, 133))
    -> keypoints (T, 133, 2), scores (T, 133) in pixels (zeros where the signer is missing), and the
    number of frames the signer was found in (0: no one was ever detected)."""
    n = len(frames)
    out_kp = np.zeros((n, NUM_COCO_KEYPOINTS, 2), np.float32)
    out_sc = np.zeros((n, NUM_COCO_KEYPOINTS), np.float32)
    people = [_boxes(kp, sc) if len(kp) else (np.zeros((0, 4)), np.zeros(0, bool)) for kp, sc in frames]
    frame_diag = math.hypot(width, height)
    centre = np.array([width / 2, height / 2])

    best, seeded = None, 0
    for t, (boxes, valid) in enumerate(people):
        if seeded == SEED_FRAMES:
            break
        if not valid.any():
            continue
        seeded += 1
        for p in np.flatnonzero(valid):
            x0, y0, x1, y1 = boxes[p]
            area = (x1 - x0) * (y1 - y0) / (width * height)
            centrality = max(0.0, 1 - np.linalg.norm([(x0 + x1) / 2, (y0 + y1) / 2] - centre) / (frame_diag / 2))
            key = (area * centrality, math.hypot(x1 - x0, y1 - y0), -t)
            if best is None or key > best[0]:
                best = (key, t, p)
    if best is None:
        return out_kp, out_sc, 0

    _, seed_t, seed_p = best
    found = 0
    for step in (1, -1):  # forwards from the seed frame, then backwards from it
        reference = people[seed_t][0][seed_p]
        for t in range(seed_t if step == 1 else seed_t - 1, n if step == 1 else -1, step):
            boxes, valid = people[t]
            if t == seed_t:
                chosen = seed_p
            else:
                chosen = None
                if valid.any():
                    ref_centre = (reference[:2] + reference[2:]) / 2
                    scale = max(math.hypot(*(reference[2:] - reference[:2])), MIN_TRACK_SCALE * frame_diag)
                    distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - ref_centre, axis=1) / scale
                    distance[~valid] = np.inf
                    if distance.min() < MAX_JUMP:
                        chosen = int(distance.argmin())
            if chosen is None:
                continue
            reference = boxes[chosen]
            keypoints, scores = frames[t]
            out_kp[t], out_sc[t] = keypoints[chosen], scores[chosen]
            found += 1
    return out_kp, out_sc, found


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


def _estimate(estimator: PoseEstimator, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keypoints, scores = (np.asarray(a, np.float32) for a in estimator(frame))
    if keypoints.size == 0 and scores.size == 0:  # nobody, in whatever empty shape
        return np.zeros((0, NUM_COCO_KEYPOINTS, 2), np.float32), np.zeros((0, NUM_COCO_KEYPOINTS), np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_COCO_KEYPOINTS, 2) or scores.shape != keypoints.shape[:2]:
        raise ValueError(f"the pose estimator returned keypoints {keypoints.shape} and scores {scores.shape}, "
                         f"expected (P, {NUM_COCO_KEYPOINTS}, 2) and (P, {NUM_COCO_KEYPOINTS})")
    return keypoints, scores


def extract_video(source: Path, out_path: Path, estimator: PoseEstimator) -> int:
    """Estimate, pick the signer, write ``out_path`` atomically; returns the frame count. Raises
    VideoError (or whatever the estimator raises) without writing anything."""
    frames, fps = read_frames(source)
    per_frame, size = [], None
    for frame in frames:
        if size is None:
            size = frame.shape[1], frame.shape[0]  # (width, height)
        per_frame.append(_estimate(estimator, np.ascontiguousarray(frame, np.uint8)))
    if size is None:
        raise VideoError("no frame could be decoded")
    width, height = size
    keypoints, scores, found = select_signer(per_frame, width, height)
    if found == 0:
        raise VideoError(f"no person detected in any of its {len(per_frame)} frames")
    keypoints /= np.array([width, height], np.float32)
    keypoints[scores <= 0] = 0.0  # the signer missing, or a point the model gives no score: (0, 0)
    data = {"keypoints": keypoints[:, None], "scores": scores[:, None],
            "width": int(width), "height": int(height), "fps": float(fps)}
    buffer = io.BytesIO()
    pickle.dump(data, buffer, protocol=PICKLE_PROTOCOL)
    write_bytes_atomically(out_path, buffer.getvalue())
    return len(per_frame)


# --------------------------------------------------------------------------------------------
# Many videos
# --------------------------------------------------------------------------------------------


def find_videos(inputs: Sequence[str | Path], out_dir: str | Path,
                extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[tuple[Path, Path]]:
    """(source, pickle path) of every video file and frame folder under ``inputs`` (module
    docstring). Raises ValueError for an input that does not exist or two sources that would write
    the same pickle."""
    suffixes = {"." + e.lower().lstrip(".") for e in extensions}
    out_dir = Path(out_dir)
    jobs: list[tuple[Path, Path]] = []
    for given in map(Path, inputs):
        if given.is_file():
            jobs.append((given, out_dir / f"{given.stem}.pkl"))
        elif given.is_dir():
            for folder in sorted([given, *(p for p in given.rglob("*") if p.is_dir())]):
                files = [p for p in folder.iterdir() if p.is_file()]
                videos = sorted(p for p in files if p.suffix.lower() in suffixes)
                relative = folder.relative_to(given)
                jobs += [(video, out_dir / relative / f"{video.stem}.pkl") for video in videos]
                if not videos and folder != given and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
                    jobs.append((folder, out_dir / relative.parent / f"{folder.name}.pkl"))
        else:
            raise ValueError(f"{given}: no such video file or folder")
    seen: dict[Path, Path] = {}
    for source, target in jobs:
        if target in seen:
            raise ValueError(f"{seen[target]} and {source} would both be written to {target}")
        seen[target] = source
    return jobs


@dataclass
class ExtractionReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # pickles that existed already
    failed: dict[Path, str] = field(default_factory=dict)  # source -> reason


_worker_estimator: PoseEstimator | None = None


def _init_worker(factory: Callable[[], PoseEstimator]) -> None:
    global _worker_estimator
    _worker_estimator = factory()


def _run_job(source: Path, target: Path, estimator: PoseEstimator | None = None) -> tuple[Path, str | None]:
    try:
        extract_video(source, target, estimator or _worker_estimator)
        return source, None
    except Exception as err:  # one bad video must not stop the others: named in the report
        return source, f"{type(err).__name__}: {err}"


def extract_poses(inputs: Sequence[str | Path], out_dir: str | Path, estimator_factory: Callable[[], PoseEstimator],
                  workers: int = 1, overwrite: bool = False, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                  progress: bool = True) -> ExtractionReport:
    """Extract every video under ``inputs`` into ``out_dir``. ``estimator_factory`` makes one
    estimator per worker process (with ``workers > 1`` it must be picklable: a module-level function
    or a ``functools.partial`` of one); ``workers == 1`` runs in this process."""
    from tqdm import tqdm
    report = ExtractionReport()
    jobs = []
    for source, target in find_videos(inputs, out_dir, extensions):
        if target.exists() and not overwrite:
            report.skipped.append(target)
        else:
            jobs.append((source, target))
    targets = dict(jobs)
    bar = tqdm(total=len(jobs), desc="extracting poses", unit="video", disable=not progress or not jobs)

    def record(source: Path, error: str | None) -> None:
        if error is None:
            report.written.append(targets[source])
        else:
            report.failed[source] = error
            bar.set_postfix(failed=len(report.failed))
        bar.update()

    # the estimator is made here first even for worker processes: rtmlib downloads its ONNX files
    # once (not N workers racing for one cache file), and a model that cannot load fails the run
    # at once instead of every video
    try:
        estimator = estimator_factory() if jobs else None
    except Exception as err:
        bar.close()
        raise EstimatorError(f"cannot load the pose estimator ({type(err).__name__}: {err}); rtmlib downloads "
                             "its ONNX files on first use: offline, give local files with --det and --pose") from err
    if workers <= 1:
        for source, target in jobs:
            record(*_run_job(source, target, estimator))
    else:
        del estimator  # each worker makes its own
        # spawn, not fork: a forked copy of a process holding ONNX Runtime or CUDA threads can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(estimator_factory,)) as pool:
            futures = {pool.submit(_run_job, source, target): source for source, target in jobs}
            for future in as_completed(futures):
                try:
                    record(*future.result())
                except BrokenProcessPool as err:  # a worker died (out of memory, a crash in native code)
                    record(futures[future], f"the worker process died ({err})")
    bar.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.extract_poses", description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", help="video files and folders (searched recursively)")
    parser.add_argument("--out", required=True, help="folder for the pose pickles")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (ONNX Runtime's CUDA needs onnxruntime-gpu)")
    parser.add_argument("--mode", default="lightweight", choices=["lightweight", "balanced", "performance"],
                        help="rtmlib's model set (default lightweight, as Uni-Sign's demo/pose_extraction.py)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "opencv", "openvino"])
    parser.add_argument("--det", help="local person-detector ONNX file instead of the mode's")
    parser.add_argument("--det-input-size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"),
                        help="the --det model's input (rtmlib's YOLOX order: height, width; 416 416 for YOLOX-tiny)")
    parser.add_argument("--pose", help="local whole-body pose ONNX file instead of the mode's")
    parser.add_argument("--pose-input-size", type=int, nargs=2, default=(288, 384), metavar=("W", "H"),
                        help="the --pose model's input (rtmlib's RTMPose order: width, height)")
    parser.add_argument("--workers", type=int, default=1, help="videos processed in parallel (one process each)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose pickle exists")
    parser.add_argument("--extensions", nargs="+", default=list(VIDEO_EXTENSIONS))
    args = parser.parse_args(argv)
    factory = functools.partial(rtmlib_wholebody, mode=args.mode, device=args.device, backend=args.backend,
                                det=args.det, det_input_size=args.det_input_size, pose=args.pose,
                                pose_input_size=args.pose_input_size)
    try:
        report = extract_poses(args.videos, args.out, factory, workers=args.workers, overwrite=args.overwrite,
                               extensions=args.extensions)
    except (ValueError, ImportError, EstimatorError) as err:  # before any video was tried
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(report.written)} written, {len(report.skipped)} already there, {len(report.failed)} failed "
          f"(pickles in {args.out})", file=sys.stderr)
    for source, reason in sorted(report.failed.items()):
        print(f"failed: {source}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
