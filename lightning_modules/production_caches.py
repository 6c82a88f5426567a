"""Caches of what production training derives from a frozen Pose-VQVAE: per sample, its codes and
its sequential-KNN gloss lengths (Eq. 11).

Both are valid only for the exact tokenizer and (k, l) that made them, so each file stores those
beside its entries (``KeyedCache``) and is ignored, then rewritten, when they differ. Files are
written atomically with a checksum and read with ``weights_only=True``
(``checkpoint_io.atomic_torch_save`` / ``load_checkpoint_file``): a cache is data, never code.

- ``TargetsCache``: PoseVQDiffusion's training targets, filled the first time a sample's name is
  seen and persisted to ``<run>/cache/posevq_targets.pt`` (``CACHE_FILE``).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from generation.length import sequential_knn_lengths
from lightning_modules.checkpoint_io import atomic_torch_save, load_checkpoint_file

log = logging.getLogger(__name__)

CACHE_FILE = "posevq_targets.pt"


def weights_fingerprint(module: nn.Module) -> str:
    """sha1 of a module's state dict (names and bytes): equal exactly for the same weights."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class KeyedCache:
    """A file ``{**key, entries_name: {name: value}}`` whose entries count only under the same key."""

    def __init__(self, path: str | Path, key: dict, entries_name: str, what: str):
        self.path, self.key, self.entries_name, self.what = Path(path), key, entries_name, what

    def load(self) -> dict:
        """The stored entries, or {} when the file is missing or was made under another key."""
        if not self.path.is_file():
            return {}
        stored = load_checkpoint_file(self.path, weights_only=True)
        if not isinstance(stored, dict) or self.entries_name not in stored:
            raise ValueError(f"{self.path} is not a {self.what} (no {self.entries_name!r} entry)")
        if any(stored.get(k) != v for k, v in self.key.items()):
            log.info("%s was made for another %s; recomputing it", self.path, "/".join(self.key))
            return {}
        return dict(stored[self.entries_name])

    def save(self, entries: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({**self.key, self.entries_name: entries}, self.path)


def _is_target(entry, num_parts: int) -> bool:
    """Whether a cache entry is one sample's (codes (T, num_parts), gloss lengths (M,)), both int64."""
    if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not all(isinstance(t, Tensor) for t in entry):
        return False
    codes, lengths = entry
    return (codes.dtype == lengths.dtype == torch.long and codes.ndim == 2 and codes.shape[1] == num_parts
            and lengths.ndim == 1)


class TargetsCache:
    """Each sample's codes (T, P) and sequential-KNN gloss lengths (M,), by sample name.

    Sequential-KNN runs on the VQ-VAE encoder's *pre-quantisation* latents (parts concatenated,
    (T, P·h)): the quantised ones make every frame sharing a code exactly equidistant, which
    flattens the densities. Entries are kept on the CPU; ``clear`` forgets them (and the
    tokenizer's fingerprint) when the VQ-VAE's weights change.
    """

    def __init__(self, knn_k: int, knn_l: int):
        self.knn_k, self.knn_l = knn_k, knn_l
        self.entries: dict[str, tuple[Tensor, Tensor]] = {}
        self.dirty = False  # entries added since the last load or save
        self._fingerprint: str | None = None

    def clear(self) -> None:
        self.entries.clear()
        self.dirty = False
        self._fingerprint = None

    def _file(self, path: str | Path, vqvae: nn.Module) -> KeyedCache:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(vqvae)
        key = {"fingerprint": self._fingerprint, "k": self.knn_k, "l": self.knn_l}
        return KeyedCache(path, key, "targets", "PoseVQ-Diffusion targets cache")

    def load(self, path: str | Path, vqvae: nn.Module) -> None:
        """Add the entries of ``path`` if it was made for this VQ-VAE and (k, l). An entry that is
        not (codes (T, P) int64, lengths (M,) int64) is an error naming the file and the sample."""
        entries = self._file(path, vqvae).load()
        for name, entry in entries.items():
            if not _is_target(entry, vqvae.num_parts):
                raise ValueError(f"{path}: the entry of sample {name!r} is not (codes (T, {vqvae.num_parts}) int64, "
                                 f"gloss lengths (M,) int64); delete the file to rebuild it")
        self.entries.update(entries)

    def save(self, path: str | Path, vqvae: nn.Module) -> None:
        """Write every entry to ``path`` if any was added since the last load or save."""
        if self.dirty:
            self._file(path, vqvae).save(self.entries)
            self.dirty = False

    @torch.no_grad()
    def lookup(self, batch: dict, vqvae: nn.Module) -> tuple[Tensor, Tensor]:
        """codes (B, T, P) long (0 at padding) and gloss lengths (B, G) long (0 at padding) of a
        production batch, on the batch's device; samples not seen yet are encoded by ``vqvae`` now."""
        poses, frame_mask, gloss_mask = batch["poses"], batch["pose_mask"], batch["gloss_mask"]
        names = list(batch["name"])
        missing = [i for i, name in enumerate(names) if name not in self.entries]
        if missing:
            codes, latents = vqvae.encode_latents(poses[missing], frame_mask[missing])  # (b, T, P), (b, T, P, h)
            for j, i in enumerate(missing):
                valid = frame_mask[i]
                lengths = sequential_knn_lengths(latents[j][valid].flatten(1), int(gloss_mask[i].sum()),
                                                 self.knn_k, self.knn_l)  # (M,)
                self.entries[names[i]] = (codes[j][valid].cpu(), lengths)
            self.dirty = True
        device = frame_mask.device
        codes = torch.zeros(*frame_mask.shape, vqvae.num_parts, dtype=torch.long, device=device)
        gloss_lengths = torch.zeros(gloss_mask.shape, dtype=torch.long, device=device)
        for i, name in enumerate(names):
            seq_codes, lengths = self.entries[name]
            if len(seq_codes) != int(frame_mask[i].sum()) or len(lengths) != int(gloss_mask[i].sum()):
                raise ValueError(f"cached targets of sample {name!r} do not match its batch entry "
                                 f"({len(seq_codes)} frames, {len(lengths)} glosses); delete the run's "
                                 f"cache/{CACHE_FILE}")
            codes[i, : len(seq_codes)] = seq_codes.to(device)
            gloss_lengths[i, : len(lengths)] = lengths.to(device)
        return codes, gloss_lengths
