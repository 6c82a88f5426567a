"""Translation and recognition metrics with Uni-Sign's evaluation protocol.

BLEU is sacrebleu's corpus BLEU (tokenize 13a, exp smoothing, as Uni-Sign's vendored 1.4.2);
``bleuN`` is the cumulative score: brevity penalty x geometric mean of the 1..N-gram precisions.
ROUGE-L is the F score of the ``rouge`` 1.0.1 package (summary-level LCS, averaged over
sentence pairs); other ROUGE implementations give different numbers. Chinese is scored on
characters, with full-width ，？ mapped to the ASCII forms mT5 decodes. All scores are 0-100.
"""
from __future__ import annotations

import os
import re

import jiwer
from rouge import Rouge
from sacrebleu.metrics import BLEU

CHARACTER_LEVEL_LANGUAGES = ("chinese", "zh")  # scored per character, as Uni-Sign does for CSL
_PREDICTION_LINE = re.compile(r"sample: (?P<name>.*?), (?:prediction|ground-truth): (?P<text>.*)")


def _split_hypothesis(text: str) -> str:
    """Uni-Sign's CSL prediction processing: drop spaces and newlines, space-separate characters."""
    return " ".join(text.replace(" ", "").replace("\n", ""))


def _split_reference(text: str) -> str:
    """Uni-Sign's CSL reference processing: ASCII ，？, drop spaces, space-separate characters.

    ！ is not mapped (as in Uni-Sign), which costs references holding it a little.
    """
    return " ".join(text.replace("，", ",").replace("？", "?").replace(" ", ""))


def _bleu(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Cumulative corpus BLEU-1..4 from one pass of 4-gram statistics."""
    stats = BLEU(tokenize="13a").corpus_score(hypotheses, [references])
    return {f"bleu{n}": BLEU.compute_bleu(stats.counts, stats.totals, stats.sys_len, stats.ref_len,
                                          smooth_method="exp", max_ngram_order=n).score
            for n in range(1, 5)}


def _has_rouge_sentence(text: str) -> bool:
    # rouge 1.0.1 splits on "." and drops empty pieces; with none left it raises ValueError.
    return any(piece for piece in text.split("."))


def _rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F (x100). A pair whose hypothesis or reference has no sentence for ``rouge``
    (empty, or only dots) scores 0 -- the F of an empty text -- instead of crashing the package;
    the mean still runs over all pairs."""
    pairs = [(h, r) for h, r in zip(hypotheses, references) if _has_rouge_sentence(h) and _has_rouge_sentence(r)]
    if not pairs:
        return 0.0
    hyps, refs = map(list, zip(*pairs))
    mean_f = Rouge(metrics=["rouge-l"]).get_scores(hyps, refs, avg=True)["rouge-l"]["f"]
    return 100 * mean_f * len(pairs) / len(hypotheses)


def translation_scores(hypotheses: list[str], references: list[str], language: str) -> dict[str, float]:
    """``{"bleu1".."bleu4", "rougeL"}`` (0-100) of a corpus, with Uni-Sign's protocol.

    ``language`` "Chinese"/"zh" scores characters (idempotent on text that is already
    space-split, like Uni-Sign's released predictions); any other language scores raw text.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("translation_scores needs at least one hypothesis")
    if not language or not language.strip():
        raise ValueError("language must be a non-empty name such as 'Chinese' or 'German'")
    if language.strip().lower() in CHARACTER_LEVEL_LANGUAGES:
        hypotheses = [_split_hypothesis(h) for h in hypotheses]
        references = [_split_reference(r) for r in references]
    return {**_bleu(hypotheses, references), "rougeL": _rouge_l(hypotheses, references)}


def read_unisign_predictions(path: str | os.PathLike) -> dict[str, str]:
    """``{sample name: text}`` from a Uni-Sign ``*_tmp_{pres,refs}.txt`` file, whose lines read
    ``sample: <name>, prediction: <text>`` (or ``ground-truth:``)."""
    texts: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            match = _PREDICTION_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"{path}:{number}: not a 'sample: <name>, prediction|ground-truth: <text>' line: {line[:80]!r}")
            if match["name"] in texts:
                raise ValueError(f"{path}:{number}: sample {match['name']!r} appears twice")
            texts[match["name"]] = match["text"]
    return texts


def gloss_wer(hyps: list[list[str]], refs: list[list[str]]) -> float:
    """Corpus word error rate (0-100) of gloss sequences: total Levenshtein edits (substitutions,
    deletions, insertions) over the total number of reference glosses."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    for kind, sequences in (("hypothesis", hyps), ("reference", refs)):
        for i, seq in enumerate(sequences):
            if isinstance(seq, str) or any(not g or g != g.strip() or len(g.split()) != 1 for g in seq):
                raise ValueError(f"{kind} {i} must be a list of non-empty glosses without spaces, got {seq!r}")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("gloss_wer needs at least one reference gloss")
    # jiwer compares whitespace-separated words, so the glosses (checked space-free) map 1:1.
    out = jiwer.process_words([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    return 100 * (out.substitutions + out.deletions + out.insertions) / total
