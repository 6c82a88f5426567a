"""Signers: fixed people (body proportions, signing style) filmed per video from a slightly
different position, distance, angle and tempo."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from datamodules.synthsign.body import Proportions
from datamodules.synthsign.motion import Style

NUM_PEOPLE = 10  # CSL-Daily has 10 signers, PHOENIX-2014T 9


@dataclass(frozen=True)
class Person:
    body: Proportions
    style: Style


@dataclass(frozen=True)
class Signer:
    """One person in one video."""

    body: Proportions
    style: Style
    scale: float  # overall size of this person in this video (PT and image)
    rotation: np.ndarray  # (3,) x, y, z angles of the whole body about the neck
    center: np.ndarray  # (2,) image position of the neck, in [0, 1] image units
    zoom: float  # image units per body unit


def sample_person(rng: np.random.Generator) -> Person:
    body = Proportions(shoulder=0.16 * rng.uniform(0.92, 1.08),
                       upper_arm=0.21 * rng.uniform(0.95, 1.05),
                       forearm=0.19 * rng.uniform(0.95, 1.05),
                       hand=rng.uniform(0.9, 1.1), head=rng.uniform(0.92, 1.08))
    style = Style(location_bias=rng.normal(0.0, 0.012, 3),  # ~1 cm habit: higher, further out
                  speed=rng.uniform(0.85, 1.2), size=rng.uniform(0.85, 1.15))
    return Person(body, style)


def sample_signer(person: Person, rng: np.random.Generator) -> Signer:
    """The person in one video: tempo varies a little per take, the camera more."""
    style = replace(person.style, speed=person.style.speed * rng.uniform(0.92, 1.08))
    rotation = np.clip(rng.normal(0.0, [0.05, 0.12, 0.04]), -0.25, 0.25)  # pitch, yaw, roll (rad)
    center = np.array([0.5, 0.36]) + rng.uniform(-0.04, 0.04, 2)
    return Signer(person.body, style, scale=rng.uniform(0.92, 1.08), rotation=rotation,
                  center=center, zoom=rng.uniform(0.85, 1.05))
