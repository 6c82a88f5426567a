"""Files and models named by a local path or on the Hugging Face Hub.

Weights files (:func:`resolve_weights_file`, e.g. ``init_from``): a local path, or
``hf://<owner>/<repo>/<path/in/repo>`` / ``hf://<owner>/<repo>@<revision>/<path/in/repo>`` (a
revision holding ``/``, such as ``refs/pr/1``, is written URL-encoded: ``refs%2Fpr%2F1``), as
huggingface_hub's own ``hf://`` paths; ``hf://datasets/...`` and ``hf://spaces/...`` name those
repo types. The file is fetched with ``huggingface_hub.hf_hub_download`` into the standard
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) when online, and only read from it with
``HF_HUB_OFFLINE=1``.

Models and tokenizers (``mt5_pretrained``, ``tokenizer``) are a local directory or a Hub id
loaded by transformers' ``from_pretrained``, which follows the same cache and offline rules;
:func:`is_hub_id` and :func:`hub_id_failure` are the pieces they share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

SCHEME = "hf://"
REPO_TYPES = {"datasets": "dataset", "spaces": "space"}  # hf://datasets/owner/name/... as in HfFileSystem


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None  # None: the default branch
    repo_type: str = "model"

    def download_command(self) -> str:
        """The CLI command that puts this file into the cache."""
        options = "" if self.revision is None else f" --revision {self.revision}"
        options += "" if self.repo_type == "model" else f" --repo-type {self.repo_type}"
        return f"huggingface-cli download {self.repo_id} {self.filename}{options}"


def parse_hub_reference(spec: str) -> HubFile:
    """``hf://owner/repo[@revision]/path`` -> HubFile; ValueError naming ``spec`` when malformed."""
    if not spec.startswith(SCHEME):
        raise ValueError(f"{spec!r} is not a Hugging Face Hub reference (hf://<owner>/<repo>/<file>)")
    parts = spec[len(SCHEME):].split("/")
    repo_type = "model"
    if parts and parts[0] in REPO_TYPES:
        repo_type = REPO_TYPES[parts.pop(0)]
    if len(parts) < 3 or any(not part for part in parts):
        raise ValueError(f"malformed Hugging Face Hub reference {spec!r}: expected "
                         "hf://<owner>/<repo>/<path/in/repo> or hf://<owner>/<repo>@<revision>/<path/in/repo>")
    owner, name, path = parts[0], parts[1], parts[2:]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not revision:
            raise ValueError(f"malformed Hugging Face Hub reference {spec!r}: empty revision after '@'")
    if any(part in (".", "..") for part in path):
        raise ValueError(f"malformed Hugging Face Hub reference {spec!r}: '.' or '..' in the file path")
    try:
        validate_repo_id(f"{owner}/{name}")
    except HFValidationError as err:
        raise ValueError(f"malformed Hugging Face Hub reference {spec!r}: {err}") from err
    return HubFile(f"{owner}/{name}", "/".join(path), revision, repo_type)


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` (not an existing path) reads as a Hub repo id, ``name`` or ``owner/name``;
    ``/abs``, ``./rel``, ``~/x`` and ``a/b/c`` are paths. ``pretrained/mt5-base`` is both, as in
    transformers: a directory of that name wins, else it is taken as an id."""
    if spec.startswith((".", "~", "/")):
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def hub_id_failure(what: str, repo_id: str, err: Exception, offline: bool) -> str:
    """The message for a ``from_pretrained(repo_id)`` that failed: offline, what to download;
    online, Hugging Face's reason. ``what`` names the thing, e.g. "mT5 weights"."""
    local = f"{what} {repo_id!r}: no local directory {str(Path(repo_id).absolute())!r}, and as a Hugging Face Hub id"
    if offline:
        return (f"{local} it is not in the cache {hf_constants.HF_HUB_CACHE} while HF_HUB_OFFLINE=1 forbids "
                f"downloading it. Download it where there is network, into the same HF_HOME / HF_HUB_CACHE "
                f"(`huggingface-cli download {repo_id} --exclude '*.h5' '*.msgpack'`: the PyTorch files), "
                "or unset HF_HUB_OFFLINE to let transformers fetch what it needs")
    return f"{local} it could not be loaded: {err}"


def resolve_weights_file(spec: str) -> Path:
    """The local path of a weights file named by ``spec``: a local path (``~`` expanded) or an
    ``hf://`` reference (see module docstring), downloaded into the Hugging Face cache if needed.

    Raises FileNotFoundError naming ``spec`` (a missing local file; a Hub file missing from the
    cache while offline, with the command that downloads it; a repo, revision or file that the
    Hub does not have), and ValueError for a malformed ``hf://`` reference.
    """
    if not spec.startswith(SCHEME):
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weights file {spec!r} does not exist"
                                    + (f" (expanded to {str(path)!r})" if str(path) != spec else ""))
        if path.is_dir():
            raise IsADirectoryError(f"weights file {spec!r} is a directory; expected a checkpoint file")
        return path
    ref = parse_hub_reference(spec)
    # Read at call time, as huggingface_hub does, so HF_HUB_OFFLINE always means "cache only".
    offline = bool(hf_constants.HF_HUB_OFFLINE)
    try:
        return Path(huggingface_hub.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision,
                                                    repo_type=ref.repo_type, local_files_only=offline))
    except huggingface_hub.errors.LocalEntryNotFoundError as err:
        if offline:
            raise FileNotFoundError(
                f"{spec}: not in the Hugging Face cache {hf_constants.HF_HUB_CACHE} and HF_HUB_OFFLINE=1 "
                f"forbids downloading it. Run `{ref.download_command()}` where there is network (into "
                f"the same HF_HOME / HF_HUB_CACHE), or unset HF_HUB_OFFLINE") from err
        raise FileNotFoundError(f"{spec}: the Hugging Face Hub could not be reached and the file is not "
                                f"in the cache {hf_constants.HF_HUB_CACHE} ({err})") from err
    except huggingface_hub.errors.GatedRepoError as err:
        raise FileNotFoundError(f"{spec}: {ref.repo_id!r} is gated: accept its terms on the Hub and log in "
                                "(`huggingface-cli login`)") from err
    except huggingface_hub.errors.RepositoryNotFoundError as err:
        raise FileNotFoundError(f"{spec}: no {ref.repo_type} repository {ref.repo_id!r} on the Hugging Face "
                                "Hub (or it is private: log in with `huggingface-cli login`)") from err
    except huggingface_hub.errors.RevisionNotFoundError as err:
        raise FileNotFoundError(f"{spec}: {ref.repo_id!r} has no revision {ref.revision!r}") from err
    except huggingface_hub.errors.EntryNotFoundError as err:
        raise FileNotFoundError(f"{spec}: {ref.repo_id!r} has no file {ref.filename!r}") from err
