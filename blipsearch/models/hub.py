"""Where model files come from: the package's built-in models and the Hugging Face hub. The only
module that may touch the network.

A model is named by a *spec*:

- ``builtin:NAME``: a small checkpoint shipped inside the package
  (``blipsearch/builtin/NAME/<role>/``);
- a local directory in the Hugging Face hub layout (config, safetensors
  weights, tokenizer files, image processor config);
- a hub id such as ``Salesforce/blip-itm-base-coco``: taken from the local
  Hugging Face cache, downloaded once when it is not there.

A spec that can't be had fails within seconds with a message that says what to
do (:func:`unavailable`); nothing retries for long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputPathError, ModelUnavailableError

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).parent.parent / "builtin"

# Only what a BLIP checkpoint needs; safetensors first (no pickle).
_HUB_PATTERNS = ["*.json", "*.txt", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_path(spec: str) -> bool:
    # Hub ids are exactly "owner/name".
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep != "/" and os.sep in spec


_OPTION = {"retrieval": "--model", "caption": "--caption-model", "vqa": "--vqa-model", "tokenizer": "--tokenizer"}
_ARGUMENT = {"retrieval": "model", "caption": "caption_model", "vqa": "vqa_model", "tokenizer": "tokenizer"}


def how_chosen(role: str, python: bool = True) -> str:
    """How the model of ``role`` is chosen: on the command line and (``python``) in Python."""
    option = _OPTION.get(role, "--model")
    return f"{option} (Library's {_ARGUMENT.get(role, 'model')}= in Python)" if python else option


def unavailable(spec: str, reason: str, role: str) -> ModelUnavailableError:
    option = _OPTION.get(role, "--model")
    argument = _ARGUMENT.get(role, "model")
    never = "" if offline() else " (set HF_HUB_OFFLINE=1 to never try the network)"
    what = "Tokenizer" if role == "tokenizer" else "Model"
    demo = "" if role == "tokenizer" else f"; or try the bundled demo model with {option} builtin:shapes"
    head = (f"{what} {spec!r} is not on this machine and can't be downloaded ({reason}). "
            f"Connect to the network and run again (the files are cached for later offline use); "
            f"or, on a connected machine, run `hf download {spec}` and copy the folder here, ")
    return ModelUnavailableError(
        f"{head}then pass {option} PATH ({argument}=PATH in Python){never}{demo}.",
        command_line=f"{head}then pass {option} PATH{never}{demo}."
    )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own warnings and progress bars off while it loads or saves a model: blipsearch
    says what it does in its own words."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def builtin_dir(spec: str, role: str = "retrieval") -> Path:
    """The folder of the ``builtin:NAME`` model's ``role`` (``retrieval``, ``caption`` or ``vqa``)."""
    name = spec[len(BUILTIN_PREFIX):]
    path = BUILTIN_DIR / name / role
    if not (path / "config.json").is_file():
        known = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
        raise ModelUnavailableError(
            f"There is no built-in {role} model {name!r}"
            + (f"; built-in models: {', '.join('builtin:' + k for k in known)}." if known else ".")
        )
    return path


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_TOKENIZER_PATTERNS = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json"]


def resolve_tokenizer_dir(spec: str) -> Path:
    """A folder holding the tokenizer named by ``spec`` (a folder, ``builtin:NAME`` or a hub id): only
    its tokenizer files are fetched from the hub, never its weights."""
    if spec.startswith(BUILTIN_PREFIX):
        return builtin_dir(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not any((local / name).is_file() for name in _TOKENIZER_FILES):
            raise InputPathError(f"{spec} holds no tokenizer.json or vocab.txt: it is not a tokenizer folder.")
        return local.resolve()
    if looks_like_path(spec):
        raise InputPathError(f"Tokenizer folder {spec} does not exist: give --tokenizer a folder or a hub id "
                             "such as google-bert/bert-base-uncased.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(spec, allow_patterns=_TOKENIZER_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        if offline():
            raise unavailable(spec, "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache",
                               "tokenizer") from None
        try:
            path = Path(snapshot_download(spec, allow_patterns=_TOKENIZER_PATTERNS))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise unavailable(spec, first_line, "tokenizer") from None
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        return path
    raise unavailable(spec, "the repository has no tokenizer files", "tokenizer")


def hub_snapshot(repo_id: str, role: str) -> Path:
    # Imported here so that local and built-in models never import the hub client.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
        if _has_weights(path):
            return path
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if offline():
        raise unavailable(repo_id, "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache", role)
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not _has_weights(path):
            # Older repositories only have pickled weights; transformers loads
            # them with torch.load(weights_only=True).
            path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS + ["pytorch_model.bin"]))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise unavailable(repo_id, first_line, role) from None
    if not _has_weights(path):
        raise unavailable(repo_id, "the repository has no model weights", role)
    return path


def _has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in WEIGHT_FILES) or any(path.glob("model-*.safetensors"))
