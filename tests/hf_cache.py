"""A private Hugging Face cache for a test, offline or behind a fake Hub: tests never download
(the `offline_cache` and `fake_hub` fixtures of conftest.py).

huggingface_hub and transformers read HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE once, at import, into
module constants (and huggingface_hub builds its HTTP sessions from them), so setting the
environment is not enough: `use_cache` patches those copies too and resets the sessions.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import transformers.utils.hub
from huggingface_hub import constants
from huggingface_hub.utils import reset_sessions
from requests.structures import CaseInsensitiveDict

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a made-up 40-hex commit sha


def use_cache(monkeypatch, home: Path, offline: bool) -> Path:
    """Point huggingface_hub and transformers at `home` (HF_HOME) and set offline mode; returns
    the hub cache folder (HF_HUB_CACHE) in which `models--owner--name/...` live."""
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    flag = "1" if offline else "0"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", flag)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", flag)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(cache))
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", offline)
    reset_sessions()  # sessions made earlier carry the old offline adapter (or lack it)
    return cache


def cached_snapshot(cache: Path, repo_id: str, commit: str = COMMIT, revision: str = "main") -> Path:
    """The snapshot folder of model repo `repo_id` in the cache layout (``refs/<revision>`` names
    `commit`), created empty: write or `save_pretrained` the repo's files into it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


class FakeHub(requests.adapters.BaseAdapter):
    """huggingface.co's file endpoint (``/<repo>/resolve/<revision>/<path>``) serving model repos
    from local folders; everything else (e.g. the tree API) answers 404. Records each request."""

    def __init__(self, repos: dict[str, Path], commit: str = COMMIT) -> None:
        super().__init__()
        self.repos, self.commit = repos, commit
        self.requests: list[tuple[str, str]] = []

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        self.requests.append((request.method, unquote(url.path)))
        parts = unquote(url.path).strip("/").split("/")
        if "resolve" not in parts:
            return self._response(request, 404, {"X-Error-Code": "EntryNotFound"})
        at = parts.index("resolve")
        repo, filename = "/".join(parts[:at]), "/".join(parts[at + 2:])
        if repo not in self.repos:
            return self._response(request, 404, {"X-Error-Code": "RepoNotFound"})
        path = self.repos[repo] / filename
        if not path.is_file():
            return self._response(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit})
        data = path.read_bytes()
        headers = {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        return self._response(request, 200, headers, b"" if request.method == "HEAD" else data)

    @staticmethod
    def _response(request, status: int, headers: dict, body: bytes = b"") -> requests.Response:
        response = requests.Response()
        response.status_code, response.reason = status, "OK" if status == 200 else "Not Found"
        response.headers = CaseInsensitiveDict(headers)
        response.raw, response.url, response.request = io.BytesIO(body), request.url, request
        return response

    def close(self) -> None:
        pass

