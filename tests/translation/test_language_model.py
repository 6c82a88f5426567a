"""mT5 wrapper: loading (local directory, Hub id through the HF cache) without re-initialisation,
train mode after loading, prompt placement, loss, generation."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast

from tests.hf_cache import COMMIT, cached_snapshot, use_cache
from translation.language_model import PROMPT, SignLanguageModel, build_mt5

WORDS = ["Translate", "sign", "language", "video", "to", "Chinese", ":", "he", "is", "four", "today"]
TINY_MT5 = dict(vocab_size=8, d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=1,
                num_decoder_layers=1, dropout_rate=0.0)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # appends eos like the T5 tokenizer does
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture()
def lm(tokenizer) -> SignLanguageModel:
    torch.manual_seed(0)
    return SignLanguageModel(tokenizer, "Chinese", config=TINY_MT5).eval()


def targets(tokenizer):
    batch = tokenizer(["he is four today", "he is"], padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].bool()


def test_config_build_resizes_embeddings_to_the_tokenizer(lm, tokenizer):
    assert lm.model.get_input_embeddings().num_embeddings == len(tokenizer) == 14
    assert lm.model.lm_head.out_features == len(tokenizer)
    assert lm.d_model == 16


def test_pretrained_round_trip_keeps_the_saved_weights(lm, tokenizer, tmp_path):
    lm.model.save_pretrained(tmp_path)
    saved = {k: v.clone() for k, v in lm.model.state_dict().items()}
    for loaded in (build_mt5(str(tmp_path)), SignLanguageModel(tokenizer, "Chinese", pretrained=str(tmp_path)).model):
        state = loaded.state_dict()
        assert state.keys() == saved.keys()
        for name, value in saved.items():
            assert torch.equal(state[name], value), name


def test_loader_errors_name_the_path(tmp_path, tokenizer, lm, offline_cache):
    with pytest.raises(ValueError, match="exactly one"):
        build_mt5(None, None)
    with pytest.raises(ValueError, match="exactly one"):
        build_mt5(str(tmp_path), TINY_MT5)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        build_mt5(str(tmp_path))  # a directory without weights
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/nowhere': no such directory"):
        build_mt5(str(tmp_path / "nowhere"))  # a path, never taken for a Hub id
    with pytest.raises(FileNotFoundError, match="no-such-org/mt5-nothing"):
        build_mt5("no-such-org/mt5-nothing")  # neither a directory nor cached, and offline
    # a pretrained model smaller than the tokenizer is an error, not a silent resize
    small = build_mt5(config={**TINY_MT5, "vocab_size": 8})
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="14 tokens but the pretrained mT5 only 8"):
        SignLanguageModel(tokenizer, "Chinese", pretrained=str(tmp_path / "small"))


def test_prompt_is_embedded_before_the_poses_with_its_mask(lm, tokenizer):
    ids = tokenizer(PROMPT.format(language="Chinese"))["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert lm.prompt_ids.tolist() == ids
    poses = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    embeds, attention = lm.encoder_inputs(poses, mask)
    P = len(ids)
    assert embeds.shape == (2, P + 5, 16) and attention.shape == (2, P + 5)
    table = lm.model.get_input_embeddings().weight
    torch.testing.assert_close(embeds[:, :P], table[ids].expand(2, -1, -1))
    torch.testing.assert_close(embeds[:, P:], poses)
    assert attention[0].tolist() == [1] * (P + 5)
    assert attention[1].tolist() == [1] * (P + 3) + [0, 0]


def test_masked_frames_do_not_affect_logits(lm, tokenizer):
    ids, tmask = targets(tokenizer)
    poses = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = lm(poses, mask, ids, tmask)
    changed = poses.clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(lm(changed, mask, ids, tmask).logits, out.logits)


def test_loss_is_label_smoothed_ce_over_real_tokens_only(lm, tokenizer):
    ids, tmask = targets(tokenizer)
    assert not tmask.all()  # the second sentence is padded
    poses, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    out = lm(poses, mask, ids, tmask)
    assert out.logits.shape == (2, ids.shape[1], len(tokenizer))
    assert out.decoder_hidden.shape == (2, ids.shape[1], 16)
    expected = F.cross_entropy(out.logits[tmask], ids[tmask], label_smoothing=0.2)
    torch.testing.assert_close(out.loss, expected)

    # whatever sits in the padded positions changes neither the loss nor the real logits
    other = ids.masked_fill(~tmask, 5)
    out2 = lm(poses, mask, other, tmask)
    torch.testing.assert_close(out2.loss, out.loss)
    torch.testing.assert_close(out2.logits[tmask], out.logits[tmask])


def test_loss_backpropagates_into_pose_embeddings(lm, tokenizer):
    ids, tmask = targets(tokenizer)
    poses = torch.randn(2, 5, 16, requires_grad=True)
    lm.train()
    lm(poses, torch.ones(2, 5, dtype=torch.bool), ids, tmask).loss.backward()
    assert poses.grad is not None and poses.grad.abs().sum() > 0


def test_generate_returns_one_decoded_string_per_clip(lm, tokenizer):
    poses, mask = torch.randn(3, 4, 16), torch.tensor([[True] * 4, [True] * 2 + [False] * 2, [True] * 4])
    texts = lm.generate(poses, mask, num_beams=2, max_new_tokens=6)
    assert isinstance(texts, list) and len(texts) == 3
    for text in texts:
        assert isinstance(text, str)
        assert "<pad>" not in text and "</s>" not in text
        assert len(text.split()) <= 6 and set(text.split()) <= set(WORDS) | {"<unk>"}


def test_bad_inputs_raise(lm, tokenizer):
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        lm.encoder_inputs(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame_mask"):
        lm.encoder_inputs(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="language"):
        SignLanguageModel(tokenizer, " ", config=TINY_MT5)
    with pytest.raises(ValueError, match="pad/eos"):
        SignLanguageModel(tokenizer, "Chinese", config={**TINY_MT5, "eos_token_id": 3})


def test_untied_lm_head_survives_loading(tmp_path):
    """mT5 checkpoints have an lm_head separate from the embeddings; loading must keep it."""
    torch.manual_seed(0)
    saved = MT5ForConditionalGeneration(MT5Config(vocab_size=16, d_model=8, d_ff=16, d_kv=4, num_layers=1,
                                                  num_heads=2, tie_word_embeddings=False))
    assert not torch.equal(saved.lm_head.weight, saved.shared.weight)
    saved.save_pretrained(tmp_path)
    loaded = build_mt5(pretrained=str(tmp_path))
    torch.testing.assert_close(loaded.lm_head.weight, saved.lm_head.weight, rtol=0, atol=0)
    assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()


def test_config_without_vocab_size_takes_the_tokenizers(tokenizer):
    """A demo config names only the widths; the model must not default to mT5's 250k vocabulary."""
    config = {k: v for k, v in TINY_MT5.items() if k != "vocab_size"}
    small = SignLanguageModel(tokenizer, "Chinese", config=config)
    assert small.model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert small.model.lm_head.out_features == len(tokenizer)


def assert_same_weights(model, saved: dict) -> None:
    state = model.state_dict()
    assert state.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(state[name], value), name


def test_loaded_weights_come_back_in_train_mode(lm, tmp_path):
    """from_pretrained returns eval mode; Lightning would keep it, training without dropout."""
    lm.model.save_pretrained(tmp_path)
    assert all(m.training for m in build_mt5(str(tmp_path)).modules())


def test_hub_id_offline_loads_from_the_cache(lm, tokenizer, offline_cache):
    """`mt5_pretrained: google/mt5-base` with HF_HUB_OFFLINE=1 reads the standard cache layout."""
    lm.model.save_pretrained(cached_snapshot(offline_cache, "google/mt5-base"))
    model = build_mt5("google/mt5-base")
    assert_same_weights(model, lm.model.state_dict())
    assert all(m.training for m in model.modules())
    assert_same_weights(SignLanguageModel(tokenizer, "Chinese", pretrained="google/mt5-base").model,
                        lm.model.state_dict())


def test_hub_id_offline_missing_says_what_to_download(offline_cache):
    with pytest.raises(FileNotFoundError) as err:
        build_mt5("google/mt5-base")
    message = str(err.value)
    assert "'google/mt5-base'" in message and "HF_HUB_OFFLINE=1" in message and str(offline_cache) in message
    assert "huggingface-cli download google/mt5-base" in message
    # a relative directory spelled like an id (the paper configs' pretrained/mt5-base): the message
    # names the directory that was looked for as well
    with pytest.raises(FileNotFoundError, match=f"no local directory '{Path.cwd() / 'pretrained/mt5-base'}'"):
        build_mt5("pretrained/mt5-base")


def test_hub_id_online_downloads_into_the_cache(lm, fake_hub, tmp_path, monkeypatch):
    """Online, transformers' own download code fetches the weights (from a fake Hub) into the
    standard cache; offline afterwards, the same id loads from there without a request."""
    cache, server = fake_hub
    lm.model.save_pretrained(tmp_path / "remote")
    server.repos["google/mt5-base"] = tmp_path / "remote"
    assert_same_weights(build_mt5("google/mt5-base"), lm.model.state_dict())
    for name in ("config.json", "model.safetensors"):
        assert ("GET", f"/google/mt5-base/resolve/main/{name}") in server.requests
        snapshot = cache / "models--google--mt5-base" / "snapshots" / COMMIT
        assert (snapshot / name).read_bytes() == (tmp_path / "remote" / name).read_bytes()
    with pytest.raises(FileNotFoundError, match="'nobody/nothing': no local directory .*, and as a Hugging Face "
                                                "Hub id it could not be loaded"):
        build_mt5("nobody/nothing")
    use_cache(monkeypatch, cache.parent, offline=True)
    before = len(server.requests)
    assert_same_weights(build_mt5("google/mt5-base"), lm.model.state_dict())
    assert len(server.requests) == before
