"""Translation metrics (Uni-Sign protocol) and gloss WER."""
import math
from pathlib import Path

import pytest

from lightning_modules.metrics import gloss_wer, read_unisign_predictions, translation_scores

SHARED_PREDICTIONS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "unisign_predictions"


def test_identical_corpus_scores_100():
    scores = translation_scores(["the cat sat on the mat"], ["the cat sat on the mat"], "German")
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL"}
    for value in scores.values():
        assert value == pytest.approx(100, abs=1e-4)


def test_bleu_n_is_cumulative_and_rouge_l_is_lcs_f():
    # n-gram precisions 3/4, 2/3, 1/2 and 0/1 (exp smoothing: 1 / (2 * 1)); no brevity penalty
    s = translation_scores(["a b c d"], ["a b c e"], "English")
    p = [3 / 4, 2 / 3, 1 / 2, 1 / 2]
    for n in range(1, 5):
        assert s[f"bleu{n}"] == pytest.approx(100 * math.prod(p[:n]) ** (1 / n), abs=1e-6)
    assert s["rougeL"] == pytest.approx(75, abs=1e-4)  # LCS 3 of 4 words each side


def test_brevity_penalty():
    s = translation_scores(["a b"], ["a b c d"], "English")
    assert s["bleu1"] == pytest.approx(100 * math.exp(1 - 4 / 2), abs=1e-6)
    assert s["bleu2"] == pytest.approx(100 * math.exp(1 - 4 / 2), abs=1e-6)


def test_chinese_is_scored_on_characters_with_ascii_punctuation():
    raw = translation_scores(["今天星期五。"], ["今天星期几？"], "Chinese")
    split = translation_scores(["今 天 星 期 五 。"], ["今 天 星 期 几 ?"], "English")
    assert raw == pytest.approx(split)
    # already split text (Uni-Sign's released files) is scored the same: the split is idempotent
    assert translation_scores(["今 天 星 期 五 。"], ["今 天 星 期 几 ?"], "zh") == pytest.approx(raw)
    # full-width ，？ in references match the ASCII forms mT5 decodes
    assert translation_scores(["好,的?"], ["好，的？"], "chinese")["bleu1"] == pytest.approx(100)
    # the same text word-level would be one unmatched token
    assert translation_scores(["今天星期五。"], ["今天星期几？"], "German")["bleu1"] == 0


def test_empty_hypothesis_scores_zero_instead_of_crashing():
    s = translation_scores(["a b", "", "."], ["a b", "c d", "e f"], "English")
    assert s["rougeL"] == pytest.approx(100 / 3, abs=1e-4)  # 1, 0, 0 averaged over three pairs
    assert translation_scores([""], ["c d"], "Chinese") == pytest.approx(
        {"bleu1": 0, "bleu2": 0, "bleu3": 0, "bleu4": 0, "rougeL": 0})


def test_translation_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        translation_scores(["a", "b"], ["a"], "German")
    with pytest.raises(ValueError, match="at least one"):
        translation_scores([], [], "German")
    with pytest.raises(ValueError, match="language"):
        translation_scores(["a"], ["a"], "")


def test_read_unisign_predictions(tmp_path):
    path = tmp_path / "dev_tmp_pres.txt"
    path.write_text("sample: a.mp4, prediction: Hello, world.\n"
                    "sample: S1_P0, prediction: 她 今 年 。\n"
                    "sample: empty, prediction: \n", encoding="utf-8")
    assert read_unisign_predictions(path) == {"a.mp4": "Hello, world.", "S1_P0": "她 今 年 。", "empty": ""}
    refs = tmp_path / "dev_tmp_refs.txt"
    refs.write_text("sample: a.mp4, ground-truth: Hi!\n", encoding="utf-8")
    assert read_unisign_predictions(refs) == {"a.mp4": "Hi!"}

    bad = tmp_path / "bad.txt"
    bad.write_text("sample: a, prediction: x\nnonsense\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        read_unisign_predictions(bad)
    bad.write_text("sample: a, prediction: x\nsample: a, prediction: y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'a' appears twice"):
        read_unisign_predictions(bad)


def test_gloss_wer_counts_edits_over_reference_glosses():
    # 1 substitution + 1 deletion over 4, then 1 insertion over 2: 3 / 6
    hyps = [["A", "X", "C"], ["B", "C", "D"]]
    refs = [["A", "B", "C", "E"], ["B", "C"]]
    assert gloss_wer(hyps, refs) == pytest.approx(50)
    assert gloss_wer([["A"]], [["A"]]) == 0
    assert gloss_wer([[]], [["A", "B"]]) == pytest.approx(100)


def test_gloss_wer_rejects_bad_input():
    with pytest.raises(ValueError, match="1 hypotheses but 2"):
        gloss_wer([["A"]], [["A"], ["B"]])
    with pytest.raises(ValueError, match="hypothesis 0"):
        gloss_wer(["A B"], [["A", "B"]])
    with pytest.raises(ValueError, match="reference 0"):
        gloss_wer([["A"]], [["A B"]])
    with pytest.raises(ValueError, match="at least one reference gloss"):
        gloss_wer([["A"]], [[]])


# Uni-Sign's released pose-only predictions and their published scores (shared/data/README.md)
PUBLISHED = [
    ("eval_csl_daily_pose_only", "dev", "Chinese", 53.30, 25.27, 54.30),
    ("eval_csl_daily_pose_only", "test", "Chinese", 53.87, 25.70, 55.00),
    ("eval_how2sign_pose_only", "test", "English", 39.38, 14.50, 34.51),
    ("eval_openasl_pose_only", "dev", "English", 49.71, 22.38, 42.81),
    ("eval_openasl_pose_only", "test", "English", 49.09, 22.64, 42.83),
]


@pytest.mark.parametrize("folder, split, language, bleu1, bleu4, rouge_l", PUBLISHED)
def test_reproduces_uni_sign_published_scores(folder, split, language, bleu1, bleu4, rouge_l):
    directory = SHARED_PREDICTIONS / folder
    if not directory.is_dir():
        pytest.skip(f"{directory} is absent (shared reference data is optional)")
    hyps = read_unisign_predictions(directory / f"{split}_tmp_pres.txt")
    refs = read_unisign_predictions(directory / f"{split}_tmp_refs.txt")
    assert hyps.keys() == refs.keys()
    names = list(hyps)
    scores = translation_scores([hyps[n] for n in names], [refs[n] for n in names], language)
    assert scores["bleu1"] == pytest.approx(bleu1, abs=0.01)
    assert scores["bleu4"] == pytest.approx(bleu4, abs=0.01)
    assert scores["rougeL"] == pytest.approx(rouge_l, abs=0.01)
    assert scores["bleu1"] > scores["bleu2"] > scores["bleu3"] > scores["bleu4"]
