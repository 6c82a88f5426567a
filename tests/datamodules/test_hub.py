"""`resolve_weights_file`: local paths and hf:// references, offline from a private cache, online
against a fake Hub (nothing is downloaded from the network)."""
from __future__ import annotations

import re

import huggingface_hub
import pytest

import datamodules.hub as hub
from datamodules.hub import HubFile, parse_hub_reference, resolve_weights_file
from tests.hf_cache import COMMIT, cached_snapshot

UNISIGN = "hf://ZechengLi19/Uni-Sign/csl_stage1_weight.pth"


def test_local_paths_are_expanded_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pth").write_bytes(b"weights")
    assert resolve_weights_file("~/w.pth") == tmp_path / "w.pth"
    assert resolve_weights_file(str(tmp_path / "w.pth")) == tmp_path / "w.pth"
    with pytest.raises(FileNotFoundError, match=r"'~/missing.pth' does not exist \(expanded to"):
        resolve_weights_file("~/missing.pth")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        resolve_weights_file(str(tmp_path))


def test_references_parse_into_repo_file_and_revision():
    assert parse_hub_reference(UNISIGN) == HubFile("ZechengLi19/Uni-Sign", "csl_stage1_weight.pth")
    assert parse_hub_reference("hf://ed-fish/Geo-Sign@v1.0/ckpt/best.pth") == HubFile(
        "ed-fish/Geo-Sign", "ckpt/best.pth", "v1.0")
    assert parse_hub_reference("hf://owner/repo@refs%2Fpr%2F3/a.bin").revision == "refs/pr/3"
    assert parse_hub_reference("hf://datasets/owner/poses/pose.pkl") == HubFile(
        "owner/poses", "pose.pkl", None, "dataset")
    assert HubFile("o/r", "d/w.pth", "v2").download_command() == "huggingface-cli download o/r d/w.pth --revision v2"


@pytest.mark.parametrize("spec", ["hf://ZechengLi19/Uni-Sign", "hf://ZechengLi19", "hf://", "hf://o/r/",
                                  "hf://o//r/w.pth", "hf://o/r@/w.pth", "hf://o/r/../w.pth",
                                  "hf://o/re po/w.pth", "hf://o/r--x/w.pth", "hf://datasets/o/r"])
def test_malformed_references_are_value_errors_naming_them(spec):
    with pytest.raises(ValueError, match=re.escape(f"malformed Hugging Face Hub reference {spec!r}")):
        resolve_weights_file(spec)


def test_offline_uses_the_cached_file(offline_cache):
    snapshot = cached_snapshot(offline_cache, "ZechengLi19/Uni-Sign")
    (snapshot / "csl_stage1_weight.pth").write_bytes(b"stage 1")
    # the hand-made layout is the one huggingface_hub itself reads
    found = huggingface_hub.hf_hub_download("ZechengLi19/Uni-Sign", "csl_stage1_weight.pth", local_files_only=True)
    assert found == str(snapshot / "csl_stage1_weight.pth")
    path = resolve_weights_file(UNISIGN)
    assert path == snapshot / "csl_stage1_weight.pth" and path.read_bytes() == b"stage 1"
    # a revision is looked up through refs/<revision> as well
    tagged = cached_snapshot(offline_cache, "ZechengLi19/Uni-Sign", commit="f" * 40, revision="v2")
    (tagged / "csl_stage1_weight.pth").write_bytes(b"v2")
    assert resolve_weights_file("hf://ZechengLi19/Uni-Sign@v2/csl_stage1_weight.pth").read_bytes() == b"v2"


def test_offline_missing_file_names_the_reference_and_the_download_command(offline_cache):
    cached_snapshot(offline_cache, "ZechengLi19/Uni-Sign")  # the repo is cached, the file is not
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights_file(UNISIGN)
    message = str(err.value)
    assert UNISIGN in message and "HF_HUB_OFFLINE=1" in message
    assert "`huggingface-cli download ZechengLi19/Uni-Sign csl_stage1_weight.pth`" in message
    with pytest.raises(FileNotFoundError, match="huggingface-cli download ed-fish/Geo-Sign w.pth --revision v1"):
        resolve_weights_file("hf://ed-fish/Geo-Sign@v1/w.pth")  # nothing cached at all


def test_online_calls_hf_hub_download_with_repo_file_and_revision(monkeypatch, tmp_path):
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert resolve_weights_file("hf://ed-fish/Geo-Sign@v1.0/ckpt/best.pth") == tmp_path / "ckpt/best.pth"
    assert resolve_weights_file(UNISIGN) == tmp_path / "csl_stage1_weight.pth"
    assert calls == [
        ("ed-fish/Geo-Sign", "ckpt/best.pth", dict(revision="v1.0", repo_type="model", local_files_only=False)),
        ("ZechengLi19/Uni-Sign", "csl_stage1_weight.pth",
         dict(revision=None, repo_type="model", local_files_only=False))]


def test_online_download_lands_in_the_cache_and_serves_offline_later(fake_hub, tmp_path, monkeypatch):
    """Through huggingface_hub's real download code (the fake Hub answers its HTTP requests)."""
    cache, server = fake_hub
    repo = tmp_path / "remote"
    repo.mkdir()
    (repo / "csl_stage1_weight.pth").write_bytes(b"released weights")
    server.repos["ZechengLi19/Uni-Sign"] = repo
    path = resolve_weights_file(UNISIGN)
    assert path.read_bytes() == b"released weights"
    assert path == cache / "models--ZechengLi19--Uni-Sign" / "snapshots" / COMMIT / "csl_stage1_weight.pth"
    assert ("GET", "/ZechengLi19/Uni-Sign/resolve/main/csl_stage1_weight.pth") in server.requests
    with pytest.raises(FileNotFoundError, match="has no file 'missing.pth'"):
        resolve_weights_file("hf://ZechengLi19/Uni-Sign/missing.pth")
    with pytest.raises(FileNotFoundError, match="no model repository 'nobody/nothing'"):
        resolve_weights_file("hf://nobody/nothing/w.pth")
    # the same reference offline now comes from the cache, without a request
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", True)
    before = len(server.requests)
    assert resolve_weights_file(UNISIGN) == path and len(server.requests) == before
