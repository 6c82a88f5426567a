from __future__ import annotations

import json

import pytest
import sentencepiece

from datamodules.tokenization import (GlossVocab, build_word_level_tokenizer, load_gloss_vocab,
                                      load_tokenizer)
from tests.hf_cache import COMMIT, cached_snapshot, use_cache

DE = ["der regen kommt morgen", "es wird kalt im norden", "morgen wird es warm"]
ZH = ["他今年四岁。", "你们好", "今天天气很好，"]


def test_word_level_de_specials_eos_and_round_trip():
    tok = build_word_level_tokenizer(DE, "de")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # mT5's ids
    ids = tok("es wird warm")["input_ids"]
    assert len(ids) == 4 and ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "es wird warm"
    assert tok("es blitzt")["input_ids"] == [tok.convert_tokens_to_ids("es"), 2, 1]  # unknown word
    assert len(tok) == 3 + len({w for s in DE for w in s.split()})


def test_word_level_zh_is_per_character():
    tok = build_word_level_tokenizer(ZH, "zh")
    ids = tok("他今年好")["input_ids"]
    assert len(ids) == 5 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "他今年好"


def test_word_level_is_deterministic():
    a = build_word_level_tokenizer(DE, "de").get_vocab()
    b = build_word_level_tokenizer(list(DE), "de").get_vocab()
    assert a == b


def test_load_tokenizer_json_file(tmp_path):
    tok = build_word_level_tokenizer(DE, "de")
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert loaded("der regen")["input_ids"] == tok("der regen")["input_ids"]
    assert loaded.pad_token_id == 0


def write_mt5_style_tokenizer(model_dir) -> None:
    """The mT5 layout: spiece.model + tokenizer_config.json (a tiny SentencePiece model)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter((DE + ZH) * 4), model_prefix=str(model_dir / "spiece"),
        vocab_size=40, hard_vocab_limit=False, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
         "unk_token": "<unk>", "extra_ids": 0}))


def assert_mt5_style(tok) -> None:
    ids = tok("der regen kommt")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "der regen kommt"


def test_load_tokenizer_sentencepiece_directory(tmp_path):
    """The mT5 layout loaded from a local directory through AutoTokenizer."""
    write_mt5_style_tokenizer(tmp_path / "mt5")
    assert_mt5_style(load_tokenizer(str(tmp_path / "mt5")))


def test_hub_id_offline_loads_from_the_cache(offline_cache):
    """`tokenizer: google/mt5-base` with HF_HUB_OFFLINE=1 reads the standard cache layout."""
    write_mt5_style_tokenizer(cached_snapshot(offline_cache, "google/mt5-base"))
    assert_mt5_style(load_tokenizer("google/mt5-base"))
    word_level = build_word_level_tokenizer(DE, "de")
    word_level.save_pretrained(cached_snapshot(offline_cache, "signlab/de-words"))
    assert load_tokenizer("signlab/de-words")(DE[0])["input_ids"] == word_level(DE[0])["input_ids"]


def test_hub_id_offline_missing_says_what_to_download(offline_cache):
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer("google/mt5-base")
    message = str(err.value)
    assert "'google/mt5-base'" in message and "HF_HUB_OFFLINE=1" in message
    assert "huggingface-cli download google/mt5-base" in message and str(offline_cache) in message


def test_hub_id_online_downloads_into_the_cache(fake_hub, tmp_path, monkeypatch):
    """Online, transformers' own download code fetches the files (from a fake Hub) into the
    standard cache, and the same spec then loads offline."""
    cache, server = fake_hub
    write_mt5_style_tokenizer(tmp_path / "remote")
    server.repos["google/mt5-base"] = tmp_path / "remote"
    assert_mt5_style(load_tokenizer("google/mt5-base"))
    assert ("GET", "/google/mt5-base/resolve/main/spiece.model") in server.requests
    snapshot = cache / "models--google--mt5-base" / "snapshots" / COMMIT
    assert (snapshot / "spiece.model").read_bytes() == (tmp_path / "remote" / "spiece.model").read_bytes()
    with pytest.raises(FileNotFoundError, match="tokenizer 'nobody/nothing': no local directory .*, and as a "
                                                "Hugging Face Hub id it could not be loaded"):
        load_tokenizer("nobody/nothing")
    use_cache(monkeypatch, cache.parent, offline=True)
    before = len(server.requests)
    assert_mt5_style(load_tokenizer("google/mt5-base"))
    assert len(server.requests) == before


def test_load_tokenizer_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        load_tokenizer(str(tmp_path / "nowhere"))  # a path, never taken for a Hub id
    with pytest.raises(ValueError, match="tok/de.json"):
        load_tokenizer("tok/de.json")  # a missing file spelled like an id is still a missing file
    with pytest.raises(ValueError, match="synthsign-fr"):
        load_tokenizer("synthsign-fr")


def test_load_tokenizer_without_eos_is_refused(tmp_path):
    tok = build_word_level_tokenizer(DE, "de").backend_tokenizer
    tok.post_processor = None  # no eos appended any more
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="does not append its eos"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_synthsign_specs_match_between_calls():
    for spec in ("synthsign-de", "synthsign-zh"):
        a, b = load_tokenizer(spec), load_tokenizer(spec)
        assert a.get_vocab() == b.get_vocab() and len(a) > 3
    assert len(load_gloss_vocab("synthsign")) > 3


def test_gloss_vocab_encode_decode_save_load(tmp_path):
    vocab = GlossVocab.from_sequences([["B", "A"], ["A", "C"], ["A"]])
    assert vocab.itos == ["<pad>", "<unk>", "<mask>", "A", "B", "C"]  # by frequency, then name
    assert vocab.encode(["A", "ZZZ", "C"]) == [3, GlossVocab.UNK, 5]
    assert vocab.decode([3, 5, 0, 0]) == ["A", "C"]
    vocab.save(tmp_path / "v.json")
    assert GlossVocab.load(tmp_path / "v.json") == vocab
    assert load_gloss_vocab(str(tmp_path / "v.json")) == vocab


def test_load_gloss_vocab_from_pt_gloss_file(tmp_path):
    (tmp_path / "train.gloss").write_text("REGEN MORGEN\nMORGEN SONNE\n")
    vocab = load_gloss_vocab(str(tmp_path / "train.gloss"))
    assert vocab.itos[3:] == ["MORGEN", "REGEN", "SONNE"]
    with pytest.raises(ValueError, match="missing.gloss"):
        load_gloss_vocab(str(tmp_path / "missing.gloss"))
    (tmp_path / "bad.json").write_text('{"itos": ["A"]}')
    with pytest.raises(ValueError, match="bad.json"):
        load_gloss_vocab(str(tmp_path / "bad.json"))
    # UTF-8 whatever the locale, and a byte-order mark is not part of the first gloss
    (tmp_path / "bom.gloss").write_bytes("\ufeffÜBER REGEN\nREGEN\n".encode("utf-8"))
    vocab = load_gloss_vocab(str(tmp_path / "bom.gloss"))
    assert vocab.itos[3:] == ["REGEN", "ÜBER"]
    vocab.save(tmp_path / "umlaut.json")
    assert load_gloss_vocab(str(tmp_path / "umlaut.json")) == vocab


def test_cli_trains_tokenizer_json_from_label_file(tmp_path):
    import gzip
    import pickle

    from datamodules.tokenization import main

    labels = {f"S{i}": {"name": f"S{i}", "gloss": [], "text": t, "video_path": f"S{i}.mp4"}
              for i, t in enumerate(ZH)}
    (tmp_path / "labels.train").write_bytes(gzip.compress(pickle.dumps(labels)))
    (tmp_path / "train.text").write_text("\n".join(DE) + "\n")
    main([str(tmp_path / "labels.train"), "--language", "zh", "--out", str(tmp_path / "zh.json")])
    tok = load_tokenizer(str(tmp_path / "zh.json"))
    assert tok.decode(tok(ZH[2])["input_ids"], skip_special_tokens=True) == ZH[2]
    assert len(tok) == 3 + len(set("".join(ZH)))
    main([str(tmp_path / "train.text"), "--language", "de", "--out", str(tmp_path / "de.json")])
    de = load_tokenizer(str(tmp_path / "de.json"))
    assert de.decode(de(DE[1])["input_ids"], skip_special_tokens=True) == DE[1]


def test_load_tokenizer_from_pt_text_file_is_word_level_and_deterministic(tmp_path):
    """PHOENIX's back-translator config names ``pt/train.text``: German words, ids fixed by the file."""
    (tmp_path / "train.text").write_text("\n".join(DE) + "\n\n")  # a trailing blank line is ignored
    a = load_tokenizer(str(tmp_path / "train.text"))
    b = load_tokenizer(str(tmp_path / "train.text"))
    assert a.get_vocab() == b.get_vocab() == build_word_level_tokenizer(DE, "de").get_vocab()
    assert (a.pad_token_id, a.eos_token_id, a.unk_token_id) == (0, 1, 2)
    assert len(a) == 3 + len({w for s in DE for w in s.split()})
    ids = a(DE[1])["input_ids"]
    assert ids[-1] == 1 and 2 not in ids
    assert a.decode(ids, skip_special_tokens=True) == DE[1]
    (tmp_path / "reordered.text").write_text("\n".join(reversed(DE)))
    assert load_tokenizer(str(tmp_path / "reordered.text")).get_vocab() == a.get_vocab()


def test_load_tokenizer_rejects_empty_or_missing_text_file(tmp_path):
    (tmp_path / "empty.text").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.text"):
        load_tokenizer(str(tmp_path / "empty.text"))
    with pytest.raises(ValueError, match="missing.text"):
        load_tokenizer(str(tmp_path / "missing.text"))
