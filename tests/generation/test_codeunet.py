"""CodeUnet, the plain Transformer denoiser, the gloss encoder and the shared Transformer pieces."""
from __future__ import annotations

import pytest
import torch

from generation.codeunet import CodeUnet, GlossEncoder, TransformerDenoiser
from generation.diffusion import frames_to_tokens
from generation.transformer import AdaLayerNorm, PartHead, TimestepEmbedding

K, T = 6, 10


def make(kind: str, num_parts: int):
    torch.manual_seed(0)
    if kind == "unet":
        model = CodeUnet(
            K, num_parts, d_model=32, heads=4, num_levels=2, blocks_per_level=2, middle_blocks=2, dropout=0.0, num_timesteps=T
        )
    else:
        model = TransformerDenoiser(K, num_parts, d_model=32, heads=4, depth=3, dropout=0.0, num_timesteps=T)
    # move AdaLN off its identity start so the timestep actually matters in these checks
    for name, p in model.named_parameters():
        if "to_scale_shift" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def inputs(frames: list[int], num_parts: int, max_frames: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    max_frames = max_frames or max(frames)
    codes = torch.randint(0, K, (len(frames), max_frames, num_parts), generator=g)
    frame_mask = torch.arange(max_frames)[None] < torch.tensor(frames)[:, None]
    x, token_mask = frames_to_tokens(codes, frame_mask, K + 1)
    x = torch.where(token_mask & (torch.rand(x.shape, generator=g) < 0.3), K, x)  # some [MASK]s
    memory = torch.randn(len(frames), 4, 32, generator=g)
    gloss_mask = torch.arange(4)[None] < torch.tensor([4, 2] * len(frames))[: len(frames), None]
    t = torch.randint(1, T + 1, (len(frames),), generator=g)
    return x, t, token_mask, memory, gloss_mask


@pytest.mark.parametrize("kind", ["unet", "transformer"])
@pytest.mark.parametrize("num_parts", [1, 3])
@pytest.mark.parametrize("frames", [[7, 5], [1, 1], [13, 9], [8, 3]])
def test_output_shape_for_any_length(kind, num_parts, frames):
    model = make(kind, num_parts)
    x, t, token_mask, memory, gloss_mask = inputs(frames, num_parts)
    logits = model(x, t, token_mask, memory, gloss_mask)
    assert logits.shape == (len(frames), max(frames) * num_parts, K)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["unet", "transformer"])
def test_padding_does_not_leak(kind):
    """Valid positions see neither padded tokens nor padded glosses, and batching/padding a
    sequence does not change its logits."""
    model = make(kind, 3)
    x, t, token_mask, memory, gloss_mask = inputs([7, 5], 3, max_frames=11)
    logits = model(x, t, token_mask, memory, gloss_mask)
    x2, memory2 = x.clone(), memory.clone()
    x2[~token_mask] = torch.randint(0, K + 2, (int((~token_mask).sum()),))
    memory2[~gloss_mask] = 100.0
    logits2 = model(x2, t, token_mask, memory2, gloss_mask)
    torch.testing.assert_close(logits2[token_mask], logits[token_mask], atol=1e-5, rtol=1e-5)
    alone = model(x[1:2, : 5 * 3], t[1:2], token_mask[1:2, : 5 * 3], memory[1:2, :2], gloss_mask[1:2, :2])
    torch.testing.assert_close(alone[0], logits[1, : 5 * 3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["unet", "transformer"])
def test_depends_on_tokens_timestep_and_glosses(kind):
    model = make(kind, 3)
    x, t, token_mask, memory, gloss_mask = inputs([6, 6], 3)
    base = model(x, t, token_mask, memory, gloss_mask)
    assert not torch.allclose(model(x, t % T + 1, token_mask, memory, gloss_mask), base)
    assert not torch.allclose(model(x, t, token_mask, memory + 1.0, gloss_mask), base)
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % K
    assert not torch.allclose(model(x2, t, token_mask, memory, gloss_mask)[:, -1], base[:, -1])  # long-range


def test_codeunet_halves_the_frame_rate_per_level():
    model = make("unet", 3)
    seen = []
    model.middle[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    x, t, token_mask, memory, gloss_mask = inputs([13, 9], 3)
    model(x, t, token_mask, memory, gloss_mask)
    assert seen == [4 * 3]  # 13 frames padded to 16, two halvings -> 4 frames × 3 parts


@pytest.mark.slow  # Dynamo tracing of the 2-level U: ~20 s on 2 shared cores
def test_compiled_trunk_is_one_graph_and_returns_the_eager_logits():
    """`compile_trunk` (the sampling benchmark's torch.compile hook) must trace the U as a single
    graph, keep the parameters' names and change no logit. The eager backend checks the tracing
    alone; static shapes keep it short (the benchmark times inductor with dynamic shapes)."""
    model = make("unet", 3)
    keys = list(model.state_dict())
    batch = inputs([7, 5], 3)
    with torch.no_grad():
        eager = model(*batch)
        model.compile_trunk(backend="eager", fullgraph=True, dynamic=False)  # fullgraph: a graph break raises
        torch.testing.assert_close(model(*batch), eager)
    assert list(model.state_dict()) == keys


def test_bad_inputs_raise():
    model = make("unet", 3)
    x, t, token_mask, memory, gloss_mask = inputs([4, 4], 3)
    with pytest.raises(ValueError, match="frames of 3 parts"):
        model(x[:, :-1], t, token_mask[:, :-1], memory, gloss_mask)
    with pytest.raises(ValueError, match="token ids"):
        model(x + K + 2, t, token_mask, memory, gloss_mask)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, t + T, token_mask, memory, gloss_mask)


def test_gloss_encoder_outputs_and_null_condition():
    torch.manual_seed(0)
    enc = GlossEncoder(20, d_model=16, heads=2, depth=2, max_len=7, dropout=0.0)
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = ids != 0
    out = enc.eval()(ids, mask)
    assert out.memory.shape == (2, 3, 16) and out.length_logits.shape == (2, 3, 7)
    assert set(out.cond) == {"gloss_memory", "gloss_mask"}
    # padded glosses do not influence the valid ones
    ids2 = ids.clone()
    ids2[1, 2] = 9
    torch.testing.assert_close(enc(ids2, mask).memory[1, :2], out.memory[1, :2])
    dropped = enc.train()(ids, mask, drop_prob=1.0)
    assert torch.equal(dropped.memory, enc.null.expand(2, 3, 16))
    assert torch.allclose(dropped.length_logits, enc.eval()(ids, mask).length_logits)  # lengths see the glosses
    assert torch.equal(enc.unconditional(mask)["gloss_memory"], enc.null.expand(2, 3, 16))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        enc(ids + 20, mask)
    with pytest.raises(ValueError, match="at least one gloss"):
        enc(ids, torch.zeros_like(mask))


def test_adaln_and_part_head_follow_their_formulas():
    torch.manual_seed(0)
    norm, emb = AdaLayerNorm(8), TimestepEmbedding(T, 8)
    h, t = torch.randn(2, 5, 8), torch.tensor([1, 7])
    torch.testing.assert_close(norm(h, emb(t)), torch.nn.functional.layer_norm(h, (8,)))  # identity start
    torch.nn.init.normal_(norm.to_scale_shift[1].weight)
    scale, shift = norm.to_scale_shift(emb(t)).chunk(2, dim=-1)
    expected = scale[:, None] * torch.nn.functional.layer_norm(h, (8,)) + shift[:, None]
    torch.testing.assert_close(norm(h, emb(t)), expected)
    head = PartHead(8, 4, 3)
    out = head(h)
    for n in range(5):
        torch.testing.assert_close(out[:, n], head.heads[n % 3](h[:, n]))
    torch.testing.assert_close(head(h[:, 2:], offset=2), out[:, 2:])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 states, bf16 logits: no dtype clash
        mixed = head(h)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), out, atol=0.05, rtol=0.05)
