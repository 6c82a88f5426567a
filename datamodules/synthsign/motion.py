"""Control curves: a gloss sequence becomes per-frame articulator parameters.

Each sign is a short curve per channel (wrist paths from its location and movement, finger
flexion from its handshape(s), palm orientation, mouth, brows, head). Signs are joined by
co-articulated transitions (a smooth blend from the end of one sign into the start of the next)
and the whole sequence is low-pass filtered, so neighbouring signs bleed into each other as in
real signing. All positions are in the body frame of ``lexicon`` (neck origin, x to the signer's
left, y down, z to the camera).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.synthsign.lexicon import DIRECTIONS, HANDSHAPES, LOCATIONS, ORIENTATIONS, Entry

# Channel layout of a curve array (T, NUM_CHANNELS).
RIGHT_WRIST, LEFT_WRIST = slice(0, 3), slice(3, 6)
RIGHT_HAND, LEFT_HAND = slice(6, 12), slice(12, 18)  # 5 flexions + spread
RIGHT_ORIENT, LEFT_ORIENT = slice(18, 21), slice(21, 24)  # x, y, z rotation angles
HEAD = slice(24, 27)  # pitch (nod), yaw (shake), roll
MOUTH_OPEN, MOUTH_WIDTH, BROW = 27, 28, 29
NUM_CHANNELS = 30

_MIRROR = np.array([-1.0, 1.0, 1.0])  # reflect a right-hand position to the left side
# Hands at rest on the lap: wrists low, fingers forward and relaxed.
_REST_WRIST = np.array([-0.13, 0.40, 0.08])
_REST_HAND = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.2])
_REST_ORIENT = np.array(ORIENTATIONS["down"])
# Two-handed "base" signs: flat left palm up in front of the chest, right hand just above it.
_BASE_LEFT = np.array([0.04, 0.18, 0.20])
_BASE_RIGHT = np.array([-0.01, 0.11, 0.22])
_CYCLIC = ("circle", "repeat")  # movements whose alternate-hand copy is half a cycle late


@dataclass(frozen=True)
class Style:
    """How one signer performs: where they sign and how fast."""

    location_bias: np.ndarray  # (3,) added to every right-hand location (mirrored for the left)
    speed: float  # duration multiplier (> 1 is slower)
    size: float  # movement amplitude multiplier


def rest_frame() -> np.ndarray:
    """(NUM_CHANNELS,) hands on the lap, neutral face."""
    frame = np.zeros(NUM_CHANNELS)
    frame[RIGHT_WRIST] = _REST_WRIST
    frame[LEFT_WRIST] = _REST_WRIST * _MIRROR
    frame[RIGHT_HAND] = frame[LEFT_HAND] = _REST_HAND
    frame[RIGHT_ORIENT] = frame[LEFT_ORIENT] = _REST_ORIENT
    return frame


def _smoothstep(s: np.ndarray) -> np.ndarray:
    return s * s * (3.0 - 2.0 * s)


def _path(movement: str, direction: np.ndarray, size: float, s: np.ndarray) -> np.ndarray:
    """(n, 3) wrist offset along the movement at phases ``s`` in [0, 1]."""
    d = direction / np.linalg.norm(direction)
    perp = np.cross(d, [0.0, 0.0, 1.0])
    if np.linalg.norm(perp) < 1e-6:  # movement towards the camera: turn in the image plane
        perp = np.cross(d, [0.0, 1.0, 0.0])
    perp /= np.linalg.norm(perp)
    s = s[:, None]
    if movement == "hold":
        return 0.15 * size * np.sin(np.pi * s) * d  # a held sign still drifts a little
    if movement == "line":
        return (2 * s - 1) * size * d
    if movement == "arc":
        return (2 * s - 1) * size * d + 0.6 * size * np.sin(np.pi * s) * perp
    if movement == "circle":
        return size * (np.cos(2 * np.pi * s) * d + np.sin(2 * np.pi * s) * perp)
    if movement == "repeat":
        return size * np.abs(np.sin(2 * np.pi * s)) * d  # two taps
    raise ValueError(f"unknown movement {movement!r}")


def _mouth(pattern: str, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(open, width) curves of a mouth pattern; width < 0 rounds the lips, > 0 spreads them."""
    bump = np.sin(np.pi * s)
    zero = np.zeros_like(s)
    table = {"none": (zero, zero), "open": (bump, 0.1 * bump), "round": (0.5 * bump, -0.8 * bump),
             "wide": (0.2 * bump, 0.9 * bump), "repeat": (np.abs(np.sin(2 * np.pi * s)), zero)}
    if pattern not in table:
        raise ValueError(f"unknown mouth pattern {pattern!r}")
    return table[pattern]


def sign_curves(entry: Entry, frames: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    """(frames, NUM_CHANNELS) curves of one sign performed once by one signer."""
    sign = entry.sign
    s = np.linspace(0.0, 1.0, frames)
    out = np.tile(rest_frame(), (frames, 1))
    # Each performance lands a little differently: location and size vary from token to token.
    size = sign.size * style.size * rng.uniform(0.85, 1.15)
    jitter = rng.normal(0.0, 0.008, 3)  # ~1 cm: token-to-token location spread
    direction = np.array(DIRECTIONS[sign.direction])
    base = np.array(_BASE_RIGHT if sign.hands == "base" else LOCATIONS[sign.location])
    anchor = base + style.location_bias + jitter
    right = anchor + _path(sign.movement, direction, size, s)
    out[:, RIGHT_WRIST] = right
    shape = np.array(HANDSHAPES[sign.handshape])
    end_shape = np.array(HANDSHAPES[sign.end_handshape])
    out[:, RIGHT_HAND] = shape + _smoothstep(s)[:, None] * (end_shape - shape)
    out[:, RIGHT_ORIENT] = ORIENTATIONS[sign.orientation]
    if sign.hands in ("mirror", "alternate"):
        if sign.hands == "alternate":
            s_alt = (s + 0.5) % 1.0 if sign.movement in _CYCLIC else 1.0 - s
            right = anchor + _path(sign.movement, direction, size, s_alt)
        out[:, LEFT_WRIST] = right * _MIRROR
        out[:, LEFT_HAND] = out[:, RIGHT_HAND]
        out[:, LEFT_ORIENT] = out[:, RIGHT_ORIENT]
    elif sign.hands == "base":
        out[:, LEFT_WRIST] = _BASE_LEFT + style.location_bias * _MIRROR
        out[:, LEFT_HAND] = HANDSHAPES["flat"]
        out[:, LEFT_ORIENT] = ORIENTATIONS["up"]
    out[:, MOUTH_OPEN], out[:, MOUTH_WIDTH] = _mouth(sign.mouth, s)
    out[:, BROW] = sign.brow * np.minimum(1.0, 3.0 * np.sin(np.pi * s))  # quick rise, hold, fall
    if sign.head == "shake":
        out[:, HEAD.start + 1] = 0.25 * np.sin(4 * np.pi * s)  # two side-to-side shakes
    elif sign.head == "tilt":
        out[:, HEAD.start] = 0.15 * np.sin(np.pi * s)  # chin forward
    return out


def _blend(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """(frames, C) transition strictly between frames ``a`` and ``b`` (ends excluded)."""
    t = _smoothstep(np.arange(1, frames + 1) / (frames + 1))[:, None]
    return a + t * (b - a)


def _low_pass(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter over time (axis 0) with edge replication; ``x`` is (T, C)."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(x[:1], radius, 0), x, np.repeat(x[-1:], radius, 0)])
    return sum(w * padded[i:i + len(x)] for i, w in enumerate(kernel))


def sentence_curves(glosses: list[Entry], style: Style, rng: np.random.Generator
                    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Curves (T, NUM_CHANNELS) of a signed sentence, from rest to rest, and each gloss's
    [start, end) frame span."""
    rest = rest_frame()
    pieces = [np.tile(rest, (int(rng.integers(1, 3)), 1))]
    spans = []
    previous = rest
    cursor = len(pieces[0])
    for entry in glosses:
        frames = max(4, round(entry.sign.frames * style.speed) + int(rng.integers(-1, 2)))
        sign = sign_curves(entry, frames, style, rng)
        gap = int(rng.integers(2, 5))  # co-articulated transition, 2-4 frames
        pieces += [_blend(previous, sign[0], gap), sign]
        spans.append((cursor + gap, cursor + gap + frames))
        cursor += gap + frames
        previous = sign[-1]
    pieces += [_blend(previous, rest, 2), np.tile(rest, (int(rng.integers(1, 3)), 1))]
    curves = _low_pass(np.concatenate(pieces), sigma=0.8)  # σ in frames: blends sign edges
    return curves, spans
