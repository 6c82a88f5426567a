"""The production caches: targets and gloss lengths reused only for the tokenizer and (k, l) that made them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from generation.length import sequential_knn_lengths
from lightning_modules.production_caches import TargetsCache, weights_fingerprint


class CountingTokenizer(nn.Module):
    """A VQ-VAE stand-in: codes and latents read off the poses (frame t of part p: its first value),
    counting the samples it encodes."""

    num_parts = 3

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.encoded = 0

    def encode_latents(self, poses, frame_mask):  # (b, T, 50, 3), (b, T) -> (b, T, P), (b, T, P, 4)
        self.encoded += len(poses)
        latents = (poses[:, :, : self.num_parts, :1] * self.scale).expand(-1, -1, -1, 4).detach()
        return latents[..., 0].abs().long() % 7, latents


def batch_of(glosses_per_sample: list[list[int]], names: list[str]) -> dict:
    """Poses whose gloss i holds the value 10·i, with the frame and gloss masks."""
    frames = [sum(g) for g in glosses_per_sample]
    poses = torch.zeros(len(frames), max(frames), 50, 3)
    for i, lengths in enumerate(glosses_per_sample):
        poses[i, : frames[i]] = torch.cat([torch.full((n, 50, 3), 10.0 * j) for j, n in enumerate(lengths)])
    g_max = max(map(len, glosses_per_sample))
    return {"poses": poses, "pose_mask": torch.arange(max(frames))[None] < torch.tensor(frames)[:, None],
            "gloss_mask": torch.arange(g_max)[None] < torch.tensor([len(g) for g in glosses_per_sample])[:, None],
            "name": names}


BATCH = batch_of([[5, 7], [6, 3, 6]], ["a", "b"])


def test_targets_are_the_codes_and_knn_lengths_of_each_sample_padded_with_zeros():
    tokenizer = CountingTokenizer()
    codes, lengths = TargetsCache(2, 2).lookup(BATCH, tokenizer)
    assert codes.shape == (2, 15, 3) and lengths.tolist() == [[5, 7, 0], [6, 3, 6]]
    expected_codes, latents = tokenizer.encode_latents(BATCH["poses"], BATCH["pose_mask"])
    assert codes[0, :12].equal(expected_codes[0, :12]) and (codes[0, 12:] == 0).all()
    assert lengths[1, :3].equal(sequential_knn_lengths(latents[1].flatten(1), 3, 2, 2))


def test_targets_are_encoded_once_and_a_saved_file_is_reused_by_a_new_cache(tmp_path):
    path = tmp_path / "cache" / "targets.pt"
    tokenizer = CountingTokenizer()
    cache = TargetsCache(2, 2)
    first = cache.lookup(BATCH, tokenizer)
    cache.lookup(BATCH, tokenizer)
    assert tokenizer.encoded == 2  # the second lookup read the cache
    cache.save(path, tokenizer)
    written = path.stat().st_mtime_ns
    cache.save(path, tokenizer)  # nothing new: the file is not rewritten
    assert path.stat().st_mtime_ns == written

    reader, fresh = TargetsCache(2, 2), CountingTokenizer()
    reader.load(path, fresh)
    again = reader.lookup(BATCH, fresh)
    assert fresh.encoded == 0 and all(a.equal(b) for a, b in zip(first, again))


@pytest.mark.parametrize("change", ["k", "l", "tokenizer weights"])
def test_a_file_made_for_another_tokenizer_or_knn_window_is_ignored(tmp_path, change):
    path = tmp_path / "targets.pt"
    cache = TargetsCache(2, 2)
    cache.lookup(BATCH, CountingTokenizer())
    cache.save(path, CountingTokenizer())
    k, l, scale = {"k": (3, 2, 1.0), "l": (2, 3, 1.0), "tokenizer weights": (2, 2, 2.0)}[change]
    reader, tokenizer = TargetsCache(k, l), CountingTokenizer(scale)
    reader.load(path, tokenizer)
    assert not reader.entries
    reader.lookup(BATCH, tokenizer)
    assert tokenizer.encoded == 2


def test_clear_forgets_entries_and_the_fingerprint_when_the_weights_change(tmp_path):
    tokenizer = CountingTokenizer()
    cache = TargetsCache(2, 2)
    cache.lookup(BATCH, tokenizer)
    cache.save(tmp_path / "old.pt", tokenizer)
    with torch.no_grad():
        tokenizer.scale.fill_(3.0)  # what loading a checkpoint's VQ-VAE weights does
    cache.clear()
    assert not cache.entries
    cache.lookup(BATCH, tokenizer)
    cache.save(tmp_path / "new.pt", tokenizer)
    assert torch.load(tmp_path / "new.pt", weights_only=True)["fingerprint"] == weights_fingerprint(tokenizer)
    assert torch.load(tmp_path / "old.pt", weights_only=True)["fingerprint"] != weights_fingerprint(tokenizer)


def test_entries_that_no_longer_fit_the_batch_and_foreign_files_are_named_errors(tmp_path):
    cache = TargetsCache(2, 2)
    cache.lookup(BATCH, CountingTokenizer())
    renamed = batch_of([[4, 4]], ["a"])  # sample "a" now has 8 frames, not 12
    with pytest.raises(ValueError, match="sample 'a'"):
        cache.lookup(renamed, CountingTokenizer())
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": 1}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not a PoseVQ-Diffusion targets cache"):
        TargetsCache(2, 2).load(foreign, CountingTokenizer())


@pytest.mark.parametrize("entry", [
    "codes",  # not a pair
    (torch.zeros(12, 3, dtype=torch.long),),  # one tensor
    (torch.zeros(12, 3), torch.tensor([5, 7])),  # float codes
    (torch.zeros(12, 2, dtype=torch.long), torch.tensor([5, 7])),  # another tokenizer's part count
    (torch.zeros(12, 3, dtype=torch.long), torch.tensor([[5, 7]])),  # lengths not 1-D
])
def test_a_malformed_entry_in_a_saved_file_is_an_error_naming_the_file_and_sample(tmp_path, entry):
    tokenizer = CountingTokenizer()
    cache = TargetsCache(2, 2)
    cache.lookup(BATCH, tokenizer)
    path = tmp_path / "targets.pt"
    cache.save(path, tokenizer)
    stored = torch.load(path, weights_only=True)
    stored["targets"]["b"] = entry
    torch.save(stored, path)
    fresh = TargetsCache(2, 2)
    with pytest.raises(ValueError, match=r"targets\.pt: the entry of sample 'b' is not"):
        fresh.load(path, tokenizer)
    assert fresh.entries == {}  # nothing half-loaded
    stored["targets"]["b"] = cache.entries["b"]  # the well-formed file loads
    torch.save(stored, path)
    fresh.load(path, tokenizer)
    assert fresh.entries.keys() == {"a", "b"}
