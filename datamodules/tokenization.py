"""Text tokenizers (translation targets) and the gloss vocabulary (production sources).

Both are built from a *spec string*, so a model and its DataModule that are given the same spec
agree on the vocabulary at ``__init__`` without reading any data:

- ``load_tokenizer(spec)``: a local HF tokenizer directory (mT5's SentencePiece), a Hugging
  Face Hub id such as ``google/mt5-base`` (from the standard HF cache, downloaded into it when
  online; cache only with ``HF_HUB_OFFLINE=1``), a ``tokenizer.json`` file, a PT ``.text`` file
  (a German word-level tokenizer built over its lines, as ``load_gloss_vocab`` builds the gloss
  vocab from ``.gloss``), or ``"synthsign-de"`` / ``"synthsign-zh"`` (a word- / character-level
  tokenizer built in memory over every sentence the SynthSign grammar can emit).
- ``load_gloss_vocab(spec)``: a saved vocab JSON, a PT ``train.gloss`` file, or ``"synthsign"``.

To train a word/character tokenizer on a real corpus instead of using mT5's:
``python -m datamodules.tokenization --language de --out tokenizer.json labels.train``
(Uni-Sign label files or PT ``.text`` files), then pass the JSON path as the spec.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import is_offline_mode

from datamodules.hub import hub_id_failure, is_hub_id

# mT5's convention: pad 0, eos 1, unk 2, so targets built here look like mT5 targets.
TEXT_SPECIALS = ("<pad>", "</s>", "<unk>")
SYNTHSIGN_LANGUAGES = ("de", "zh")


def build_word_level_tokenizer(sentences: Iterable[str], language: str) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``sentences``: words for ``"de"``, characters for ``"zh"``.

    Ids: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then the corpus vocabulary; encode appends
    ``</s>``; decode joins words with spaces (de) or characters with nothing (zh).
    """
    if language not in SYNTHSIGN_LANGUAGES:
        raise ValueError(f"language must be one of {SYNTHSIGN_LANGUAGES}, got {language!r}")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    if language == "de":
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex("."), behavior="isolated"),  # one token per character
        ])
        tok.decoder = decoders.Fuse()  # characters back into one unspaced string
    tok.train_from_iterator(list(sentences), trainers.WordLevelTrainer(special_tokens=list(TEXT_SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def load_tokenizer(spec: str) -> PreTrainedTokenizerFast:
    """Load a text tokenizer from ``spec`` (see module docstring).

    A Hugging Face Hub id (``google/mt5-base``) loads as any transformers program loads it: from
    the standard Hugging Face cache, downloading what is missing when online; with
    ``HF_HUB_OFFLINE=1`` only from the cache (FileNotFoundError saying what to download otherwise).
    Every other spec is read from local files or built in memory.

    Raises ValueError if the tokenizer lacks a pad token or does not append eos on encode
    (the translation targets rely on both).
    """
    if spec.startswith("synthsign-"):
        language = spec.removeprefix("synthsign-")
        if language not in SYNTHSIGN_LANGUAGES:
            raise ValueError(f"unknown tokenizer spec {spec!r}; expected synthsign-de or synthsign-zh")
        from datamodules.synthetic import spoken_sentences_for_tokenizer

        tokenizer = build_word_level_tokenizer(spoken_sentences_for_tokenizer(language), language)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        elif path.is_file() and path.suffix == ".json":
            raw = Tokenizer.from_file(str(path))
            vocab = raw.get_vocab()
            named = {role: tok for role, tok in zip(("pad_token", "eos_token", "unk_token"),
                                                    TEXT_SPECIALS) if tok in vocab}
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **named)
        elif path.is_file() and path.suffix == ".text":
            # PT's .text files are PHOENIX-2014T's lower-cased German, one sentence per line
            sentences = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not sentences:
                raise ValueError(f"tokenizer spec {spec!r}: the .text file has no sentences")
            tokenizer = build_word_level_tokenizer(sentences, "de")
        elif path.suffix not in (".json", ".text") and is_hub_id(spec):
            tokenizer = _hub_tokenizer(spec)
        else:
            raise ValueError(f"tokenizer spec {spec!r} is neither synthsign-de/zh, a tokenizer directory, "
                             "an existing tokenizer.json file, a PT .text file nor a Hugging Face Hub id")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {spec!r} has no pad or eos token")
    if tokenizer("a")["input_ids"][-1:] != [tokenizer.eos_token_id]:
        raise ValueError(f"tokenizer {spec!r} does not append its eos token on encode")
    return tokenizer


def _hub_tokenizer(repo_id: str) -> PreTrainedTokenizerFast:
    try:
        # No local_files_only: transformers reads HF_HUB_OFFLINE itself and then stays in the cache.
        return AutoTokenizer.from_pretrained(repo_id)
    except OSError as err:
        raise FileNotFoundError(hub_id_failure("tokenizer", repo_id, err, is_offline_mode())) from err


class GlossVocab:
    """Gloss <-> id table. Specials: ``<pad>``=0, ``<unk>``=1, ``<mask>``=2 (the diffusion
    models' absorbing token); glosses follow in the order given."""

    SPECIALS = ("<pad>", "<unk>", "<mask>")
    PAD, UNK, MASK = 0, 1, 2

    def __init__(self, glosses: Sequence[str]):
        glosses = [g for g in dict.fromkeys(glosses) if g not in self.SPECIALS]  # dedupe, keep order
        self.itos = list(self.SPECIALS) + glosses
        self.stoi = {g: i for i, g in enumerate(self.itos)}

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]]) -> "GlossVocab":
        """Build from gloss sequences: most frequent first, ties alphabetical (deterministic)."""
        counts = Counter(g for seq in sequences for g in seq)
        return cls(sorted(counts, key=lambda g: (-counts[g], g)))

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlossVocab) and self.itos == other.itos

    def encode(self, glosses: Sequence[str]) -> list[int]:
        return [self.stoi.get(g, self.UNK) for g in glosses]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> glosses, dropping padding."""
        return [self.itos[i] for i in map(int, ids) if i != self.PAD]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"itos": self.itos}, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "GlossVocab":
        try:
            itos = json.loads(Path(path).read_text(encoding="utf-8"))["itos"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a gloss vocab JSON ({err})") from err
        if list(itos[:len(cls.SPECIALS)]) != list(cls.SPECIALS):
            raise ValueError(f"{path}: vocab must start with {cls.SPECIALS}")
        return cls(itos[len(cls.SPECIALS):])


def load_gloss_vocab(spec: str) -> GlossVocab:
    """``spec``: a saved vocab ``.json``, a PT ``.gloss`` file (one space-separated gloss
    sequence per line; the vocab is built from it), or ``"synthsign"``."""
    if spec == "synthsign":
        from datamodules.synthetic import gloss_names

        return GlossVocab(list(gloss_names()))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"gloss vocab spec {spec!r} is neither 'synthsign' nor an existing file")
    if path.suffix == ".json":
        return GlossVocab.load(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # PT files are UTF-8; a BOM is dropped
    return GlossVocab.from_sequences(line.split() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.tokenization",
                                     description="Train a word (de) / character (zh) tokenizer.json.")
    parser.add_argument("corpus", nargs="+", type=Path,
                        help="Uni-Sign label files (labels.train) or PT .text files")
    parser.add_argument("--language", required=True, choices=SYNTHSIGN_LANGUAGES)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from datamodules.formats import read_unisign_labels

    sentences = []
    for path in args.corpus:
        if path.suffix == ".text":
            sentences += path.read_text(encoding="utf-8-sig").splitlines()
        else:
            sentences += [label["text"] for label in read_unisign_labels(path).values()]
    tokenizer = build_word_level_tokenizer(sentences, args.language)
    tokenizer.backend_tokenizer.save(str(args.out))
    print(f"{args.out}: {len(tokenizer)} tokens from {len(sentences)} sentences")


if __name__ == "__main__":
    main()
