"""The SynthSign lexicon: every gloss is a motion primitive plus its spoken forms.

A sign is described the way sign phonology does: handshape (per-finger flexion and spread),
palm orientation, location relative to the body, movement (hold, line, arc, circle, repeated
tap), one or two hands, and non-manual parts (mouth pattern, brows, head). The lexicon depends
only on ``num_glosses`` (never on the corpus seed) and a smaller lexicon is a prefix of a larger
one, so a tokenizer or gloss vocabulary built for the default size covers every smaller corpus.

Body frame used by every position here: neck at the origin, x towards the signer's left (image
right), y down, z towards the camera; units are PT's (shoulder half-width about 0.16).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_NUM_GLOSSES = 120
MIN_NUM_GLOSSES = 14  # the two function glosses plus one full category cycle
_LEXICON_SEED = 2014  # fixed: the lexicon is part of the corpus definition, not of a sample

# Flexion per finger (thumb, index, middle, ring, pinky; 0 straight, 1 fully curled), then
# finger spread (0 together, 1 fanned).
HANDSHAPES: dict[str, tuple[float, ...]] = {
    "flat": (0.1, 0.0, 0.0, 0.0, 0.0, 0.0),
    "five": (0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    "fist": (0.4, 1.0, 1.0, 1.0, 1.0, 0.0),
    "index": (0.8, 0.0, 1.0, 1.0, 1.0, 0.0),
    "v": (0.8, 0.0, 0.0, 1.0, 1.0, 0.8),
    "w": (0.8, 0.0, 0.0, 0.0, 1.0, 0.6),
    "y": (0.0, 1.0, 1.0, 1.0, 0.0, 1.0),
    "l": (0.0, 0.0, 1.0, 1.0, 1.0, 0.5),
    "c": (0.4, 0.45, 0.45, 0.45, 0.45, 0.2),
    "o": (0.7, 0.7, 0.7, 0.7, 0.7, 0.0),
    "claw": (0.3, 0.6, 0.6, 0.6, 0.6, 1.0),
    "pinky": (0.8, 1.0, 1.0, 1.0, 0.0, 0.0),
    "horns": (0.8, 0.0, 1.0, 1.0, 0.0, 0.8),
    "bent": (0.2, 0.55, 0.55, 0.55, 0.55, 0.0),
}

# Palm orientation of the dominant (right) hand as (x, y, z) rotation angles in radians applied to
# the neutral hand (fingers up, palm facing the camera); the other hand uses the mirror image.
ORIENTATIONS: dict[str, tuple[float, float, float]] = {
    "forward": (0.0, 0.0, 0.0),
    "inward": (0.0, 1.4, 0.0),
    "down": (-1.4, 0.0, 0.0),
    "up": (-1.4, 0.0, 3.0),
    "body": (0.0, 3.0, 0.0),
    "sideways": (0.0, 0.5, 1.2),
}

# Wrist target of the dominant (right) hand for each location, in the body frame.
LOCATIONS: dict[str, tuple[float, float, float]] = {
    "forehead": (-0.05, -0.20, 0.14),
    "eye": (-0.08, -0.16, 0.14),
    "nose": (-0.03, -0.12, 0.17),
    "mouth": (-0.03, -0.06, 0.16),
    "chin": (-0.04, -0.02, 0.15),
    "cheek": (-0.11, -0.10, 0.12),
    "ear": (-0.14, -0.14, 0.06),
    "shoulder": (0.10, 0.06, 0.10),  # the opposite (left) shoulder
    "chest": (-0.02, 0.12, 0.14),
    "belly": (-0.04, 0.28, 0.16),
    "neutral": (-0.08, 0.16, 0.21),
    "high": (-0.10, 0.00, 0.22),
    "side": (-0.24, 0.14, 0.16),
    "low": (-0.06, 0.26, 0.20),
}

MOVEMENTS = ("hold", "line", "arc", "circle", "repeat")
DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "up": (0.0, -1.0, 0.0),
    "down": (0.0, 1.0, 0.0),
    "in": (1.0, 0.0, 0.0),
    "out": (-1.0, 0.0, 0.0),
    "forward": (0.0, 0.0, 1.0),
    "diagonal": (0.6, -0.6, 0.5),
}
# one: right hand only; mirror: both hands mirrored; alternate: mirrored, half a cycle apart;
# base: the left hand holds a flat palm-up base at the chest and the right hand acts on it.
HANDS = ("one", "one", "mirror", "alternate", "base")  # one-handed signs twice as common
MOUTHS = ("none", "open", "round", "wide", "repeat")
BROWS = (0.0, 0.0, 1.0, -1.0)  # neutral twice as common, raised, furrowed

CATEGORIES = ("noun", "verb", "adjective", "time", "place", "negation", "question")
# Category of the content entries, cycled: nouns and verbs most common, as in real corpora.
_CATEGORY_CYCLE = ("noun", "verb", "noun", "adjective", "time", "noun", "verb", "place",
                   "noun", "adjective", "verb", "place")
GENDERS = ("der", "die", "das")

_CONSONANTS = "BDFGKLMNPRSTWZ"
_VOWELS = "AEIOU"
_CODAS = ("", "", "N", "R", "S", "L")
# Characters the grammar uses as function words; content words never use them.
ZH_FUNCTION_CHARS = "在不的什么，。？"
_ZH_FIRST, _ZH_LAST = 0x4E00, 0x9FA5  # CJK Unified Ideographs, the common block


@dataclass(frozen=True)
class SignSpec:
    """The manual and non-manual parameters of one sign."""

    handshape: str
    end_handshape: str  # equals ``handshape`` unless the sign changes handshape
    orientation: str
    location: str
    movement: str
    direction: str
    size: float  # movement amplitude in body units
    hands: str
    mouth: str
    brow: float
    head: str  # "none", "shake" (negation) or "tilt" (question)
    frames: int  # base duration at 12.5 fps before the signer's speed is applied


@dataclass(frozen=True)
class Entry:
    """One gloss: its name, grammatical category, spoken forms and sign."""

    gloss: str  # upper-case, PHOENIX style
    category: str
    de: str  # lower-case German-like stem
    zh: str  # one or two Chinese-like characters
    gender: str  # article for nouns and places ("" otherwise)
    sign: SignSpec


def _function_entries() -> list[Entry]:
    """Negation and the wh-question word: fixed, with head shake and furrowed brows."""
    nicht = SignSpec("flat", "flat", "down", "neutral", "line", "out", 0.08, "one", "none", 0.0,
                     "shake", 8)
    was = SignSpec("five", "five", "up", "low", "repeat", "in", 0.04, "mirror", "open", -1.0,
                   "tilt", 9)
    return [Entry("NICHT", "negation", "nicht", "不", "", nicht),
            Entry("WAS", "question", "was", "什么", "", was)]


def _unique_word(rng: random.Random, taken: set[str]) -> str:
    """A fresh pseudo-word CVCV plus an optional N/R/S/L coda: an inflected form (stem + t, e or
    en) is never itself a stem, so spoken words map back to one gloss."""
    while True:
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
        word += rng.choice(_CODAS)
        if word not in taken:
            taken.add(word)
            return word


def _unique_zh(rng: random.Random, taken: set[str]) -> str:
    while True:
        chars = "".join(chr(rng.randint(_ZH_FIRST, _ZH_LAST)) for _ in range(rng.choice((1, 2, 2))))
        if chars not in taken and not set(chars) & set(ZH_FUNCTION_CHARS):
            taken.add(chars)
            return chars


def _random_sign(rng: random.Random, category: str) -> SignSpec:
    handshape = rng.choice(sorted(HANDSHAPES))
    changes = rng.random() < 0.2  # about one sign in five opens or closes the hand
    hands = rng.choice(HANDS)
    location = "chest" if hands == "base" else rng.choice(sorted(LOCATIONS))
    return SignSpec(
        handshape=handshape,
        end_handshape=rng.choice(sorted(HANDSHAPES)) if changes else handshape,
        orientation=rng.choice(sorted(ORIENTATIONS)),
        location=location,
        movement=rng.choice(MOVEMENTS),
        direction=rng.choice(sorted(DIRECTIONS)),
        size=round(rng.uniform(0.03, 0.08), 3),  # 3-8 cm: small to large sign movements
        hands=hands,
        mouth=rng.choice(MOUTHS),
        brow=rng.choice(BROWS),
        head="none",
        frames=rng.randint(5, 10) + (1 if category == "verb" else 0),
    )


def _manual_key(sign: SignSpec) -> tuple:
    """What must differ between two glosses so that no two signs look alike."""
    return (sign.handshape, sign.end_handshape, sign.orientation, sign.location, sign.movement,
            sign.direction, sign.hands)


def build_lexicon(num_glosses: int = DEFAULT_NUM_GLOSSES) -> list[Entry]:
    """The first ``num_glosses`` entries of the fixed master lexicon (function words first)."""
    if not isinstance(num_glosses, int) or num_glosses < MIN_NUM_GLOSSES:
        raise ValueError(f"num_glosses must be an int >= {MIN_NUM_GLOSSES}, got {num_glosses!r}")
    rng = random.Random(_LEXICON_SEED)
    entries = _function_entries()
    words = {e.gloss for e in entries}
    chars = {e.zh for e in entries}
    signs = {_manual_key(e.sign) for e in entries}
    while len(entries) < num_glosses:
        category = _CATEGORY_CYCLE[(len(entries) - 2) % len(_CATEGORY_CYCLE)]
        gloss = _unique_word(rng, words)
        zh = _unique_zh(rng, chars)
        gender = rng.choice(GENDERS) if category in ("noun", "place") else ""
        sign = _random_sign(rng, category)
        while _manual_key(sign) in signs:
            sign = _random_sign(rng, category)
        signs.add(_manual_key(sign))
        entries.append(Entry(gloss, category, gloss.lower(), zh, gender, sign))
    return entries
