"""SynthSign: the embedded default corpus, written in both real on-disk formats.

A deterministic generator of signed sentences. Each gloss is a motion primitive (handshape,
orientation, location, movement, one or two hands, mouth, brows, head; see
``synthsign.lexicon``); sentences follow a sign-language grammar and come with spoken text in a
different order with function words (``synthsign.grammar``); per-video signer variation,
co-articulation, detector jitter and dropped detections make it a learning problem rather than a
lookup table. One 3-D skeleton per frame is rendered to both layouts::

    root/
      unisign/labels.{train,dev,test}     gzip pickle {name: {name, gloss, text, video_path}}
      unisign/pose_format/<name>.pkl      {"keypoints": (T, 1, 133, 2), "scores": (T, 1, 133)}
      pt/{train,dev,test}.{skels,gloss,text,files}   PT format, 50 joints, neck at the origin
      alignments.json                     per video, each gloss's [start, end) frames (not in
                                          either real schema; for probes and debugging)
      MANIFEST.json                       settings and counts, written last

Spoken language per layout (``language``): "zh+de" (default) writes Chinese-like text in the
Uni-Sign labels (as CSL-Daily) and German-like text in PT's ``.text`` (as PHOENIX-2014T); "zh" or
"de" writes that one language in both.

CLI: ``python -m datamodules.synthetic --out DIR [--num-train N] [--num-dev N] [--num-test N]
[--num-glosses N] [--seed S] [--language zh+de|zh|de] [--workers N]``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datamodules.formats import write_skels
from datamodules.synthsign.grammar import (Decks, Sentence, realise, sample_sentence,
                                           spoken_vocabulary)
from datamodules.synthsign.lexicon import DEFAULT_NUM_GLOSSES, Entry, build_lexicon
from datamodules.synthsign.signer import NUM_PEOPLE, sample_person
from datamodules.synthsign.video import VideoTask, render_video

FORMAT_VERSION = 1  # bump when the generator's output changes for the same settings
SPLITS = ("train", "dev", "test")
# language setting -> (Uni-Sign text language, PT text language)
LANGUAGE_MODES = {"zh+de": ("zh", "de"), "zh": ("zh", "zh"), "de": ("de", "de")}
DEFAULTS = {"num_train": 1500, "num_dev": 150, "num_test": 150,
            "num_glosses": DEFAULT_NUM_GLOSSES, "seed": 0, "language": "zh+de"}
MANIFEST = "MANIFEST.json"


def gloss_names(num_glosses: int = DEFAULT_NUM_GLOSSES) -> list[str]:
    """The gloss vocabulary, sorted (no files needed; identical for every seed)."""
    return sorted(entry.gloss for entry in build_lexicon(num_glosses))


def spoken_sentences_for_tokenizer(language: str, num_glosses: int = DEFAULT_NUM_GLOSSES
                                   ) -> list[str]:
    """Lines holding every word ("de") or character ("zh") the generator can write, for
    training a tokenizer; covers every corpus with at most ``num_glosses`` glosses."""
    return spoken_vocabulary(build_lexicon(num_glosses), language)


def _settings(**kwargs) -> dict:
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown SynthSign setting(s) {sorted(unknown)}; "
                        f"expected some of {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **kwargs}
    for key in ("num_train", "num_dev", "num_test", "seed"):
        lowest = 0 if key == "seed" else 1
        if not isinstance(settings[key], int) or settings[key] < lowest:
            raise ValueError(f"SynthSign {key} must be an int >= {lowest}, got {settings[key]!r}")
    if settings["language"] not in LANGUAGE_MODES:
        raise ValueError(f"SynthSign language must be one of {sorted(LANGUAGE_MODES)}, "
                         f"got {settings['language']!r}")
    build_lexicon(settings["num_glosses"])  # validates num_glosses
    return settings


def plan_split(lexicon: list[Entry], seed: int, split: str, count: int
               ) -> list[tuple[Sentence, int]]:
    """The sentences of one split and the person signing each (no rendering)."""
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
    rng = random.Random(f"synthsign/{seed}/{split}")
    decks = Decks(lexicon, rng)
    return [(sample_sentence(decks, rng), rng.randrange(NUM_PEOPLE)) for _ in range(count)]


def _write_gzip_pickle(path: Path, obj) -> None:
    # mtime=0 and no file name in the header, so equal content gives byte-identical files.
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4), mtime=0))


def _write_split(out: Path, split: str, names: list[str], sentences: list[Sentence],
                 results, languages: tuple[str, str], bar: tqdm) -> tuple[int, dict]:
    """Write one split's labels and PT files from the rendered ``results`` (an iterator of
    (PT skeleton, gloss spans) in sentence order); return its frame count and alignments."""
    unisign_language, pt_language = languages
    labels, alignments = {}, {}
    pt = {"skels": [], "gloss": [], "text": [], "files": []}
    for name, sentence, (skeleton, spans) in zip(names, sentences, results):
        glosses = [entry.gloss for entry in sentence.glosses]
        labels[name] = {"name": name, "gloss": glosses, "text": realise(sentence, unisign_language),
                        "video_path": f"{name}.mp4"}
        pt["skels"].append(skeleton)
        pt["gloss"].append(" ".join(glosses))
        pt["text"].append(realise(sentence, pt_language))
        pt["files"].append(f"{split}/{name}")
        alignments[name] = [[g, start, end] for g, (start, end) in zip(glosses, spans)]
        bar.update()
    _write_gzip_pickle(out / "unisign" / f"labels.{split}", labels)
    write_skels(out / "pt" / f"{split}.skels", pt["skels"])
    for suffix in ("gloss", "text", "files"):
        lines = "".join(line + "\n" for line in pt[suffix])
        (out / "pt" / f"{split}.{suffix}").write_text(lines, encoding="utf-8")
    return sum(len(s) for s in pt["skels"]), alignments


def generate(out: str | Path, *, num_train: int = DEFAULTS["num_train"],
             num_dev: int = DEFAULTS["num_dev"], num_test: int = DEFAULTS["num_test"],
             num_glosses: int = DEFAULTS["num_glosses"], seed: int = DEFAULTS["seed"],
             language: str = DEFAULTS["language"], workers: int | None = None,
             progress: bool = False) -> dict:
    """Write a SynthSign corpus into ``out`` (missing or empty) and return its manifest.

    ``workers`` processes render videos (None: 2 for large corpora, else 1); the output is the
    same for any count. ``progress`` shows a tqdm bar. The manifest is written last, so a
    folder without one is incomplete (``ensure_synthsign`` never exposes such a folder).
    """
    settings = _settings(num_train=num_train, num_dev=num_dev, num_test=num_test,
                         num_glosses=num_glosses, seed=seed, language=language)
    sizes = {"train": num_train, "dev": num_dev, "test": num_test}
    if workers is None:  # processes pay off only for a few hundred videos
        workers = min(2, os.cpu_count() or 1) if sum(sizes.values()) >= 300 else 1
        if multiprocessing.current_process().daemon:  # daemons may not start processes
            workers = 1
    if workers < 1:
        raise ValueError(f"SynthSign workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: SynthSign output folder must be missing or empty")
    lexicon = build_lexicon(num_glosses)
    poses_dir = out / "unisign" / "pose_format"
    poses_dir.mkdir(parents=True)
    (out / "pt").mkdir()
    # Generator entropy (seed, 0, person) for people and (seed, split 1-3, index) for videos.
    people = [sample_person(np.random.default_rng([seed, 0, k])) for k in range(NUM_PEOPLE)]
    bar = tqdm(total=sum(sizes.values()), desc="SynthSign", unit="video", disable=not progress)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    sentence_id, frames, alignments = 0, {}, {}
    try:
        for split_index, split in enumerate(SPLITS, start=1):
            names, sentences, tasks = [], [], []
            for i, (sentence, person) in enumerate(plan_split(lexicon, seed, split, sizes[split])):
                names.append(f"S{sentence_id + i:06d}_P{person:04d}_T00")  # CSL-Daily naming
                sentences.append(sentence)
                tasks.append(VideoTask(tuple(sentence.glosses), people[person],
                                       (seed, split_index, i), poses_dir / f"{names[-1]}.pkl"))
            sentence_id += len(tasks)
            results = (pool.imap(render_video, tasks, chunksize=16) if pool
                       else map(render_video, tasks))
            frames[split], alignments[split] = _write_split(
                out, split, names, sentences, results, LANGUAGE_MODES[language], bar)
    finally:
        if pool:
            pool.close()
            pool.join()
        bar.close()
    (out / "alignments.json").write_text(json.dumps(alignments, ensure_ascii=False),
                                         encoding="utf-8")
    manifest = {"generator": "synthsign", "version": FORMAT_VERSION, "settings": settings,
                "videos": sizes, "frames": frames, "vocabulary": len(lexicon),
                "files": {"unisign/pose_format": sum(sizes.values()), "unisign/labels": len(SPLITS),
                          "pt": 4 * len(SPLITS)}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def read_manifest(root: str | Path) -> dict | None:
    """The corpus manifest under ``root``, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable SynthSign manifest ({err})") from err


def _check_corpus(root: Path, manifest: dict, settings: dict) -> None:
    """Raise unless ``root`` holds the complete corpus ``settings`` describe."""
    wanted = {"version": FORMAT_VERSION, **settings}
    found = {"version": manifest.get("version"), **manifest.get("settings", {})}
    if found != wanted:
        diff = {k: (found.get(k), wanted[k]) for k in wanted if found.get(k) != wanted[k]}
        raise ValueError(f"{root} holds a SynthSign corpus generated with different settings "
                         f"(found vs requested: {diff}); pass matching settings, choose another "
                         f"folder, or delete {root} to regenerate")
    poses = root / "unisign" / "pose_format"
    count = sum(1 for _ in os.scandir(poses)) if poses.is_dir() else 0
    expected = manifest.get("files", {}).get("unisign/pose_format")
    if count != expected:
        raise ValueError(f"{root}: SynthSign corpus is incomplete ({count} pose files in {poses}, "
                         f"manifest says {expected}); delete {root} to regenerate")


def ensure_synthsign(root: str | Path, *, workers: int | None = None, progress: bool = False,
                     **generator_kwargs) -> Path:
    """Make sure ``root`` holds the SynthSign corpus for these settings; return ``root``.

    Generates into a temporary sibling folder and renames it into place, so readers never see a
    half-written corpus; if another process wins the race, its corpus is kept and ours dropped.
    Raises ValueError when ``root`` holds a corpus for other settings or other files.
    ``generator_kwargs`` are ``generate``'s settings; ``workers``/``progress`` as there.
    """
    root = Path(root)
    settings = _settings(**generator_kwargs)
    manifest = read_manifest(root)
    if manifest is None:
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ValueError(f"{root} exists and is not a SynthSign corpus (no {MANIFEST}); "
                             "refusing to write into it")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate(tmp, workers=workers, progress=progress, **settings)
            try:
                os.replace(tmp, root)  # atomic; fails if root was filled meanwhile
            except OSError:
                if read_manifest(root) is None:  # not a lost race: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = read_manifest(root)
    _check_corpus(root, manifest, settings)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic",
                                     description="Generate the SynthSign corpus.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (missing or empty)")
    for key in ("num_train", "num_dev", "num_test", "num_glosses", "seed"):
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=DEFAULTS[key])
    parser.add_argument("--language", choices=sorted(LANGUAGE_MODES), default=DEFAULTS["language"])
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: 2 for large corpora)")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    try:
        manifest = generate(out, progress=True, **args)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    videos, frames = manifest["videos"], manifest["frames"]
    per_split = ", ".join(f"{s} {videos[s]}" for s in SPLITS)
    print(f"SynthSign: {sum(videos.values())} videos ({per_split}), "
          f"{sum(frames.values())} frames, {manifest['vocabulary']} glosses -> {out}")


if __name__ == "__main__":
    main()
