"""Model folders: a spec (see :mod:`.hub` for the kinds) resolved to a folder, built-in, local,
converted from an original checkpoint or from the hub; its config, family, fingerprint and memory
needs, read without loading its weights.

:func:`resolve_model_dir` turns a spec into a directory or fails within seconds with a message
that says what to do; it never retries for long.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InputPathError, ModelLoadError, ModelUnavailableError
from ..images.decode import ImageSpec
from ..system import atomic_write, available_memory
from .hub import (
    BUILTIN_PREFIX,
    WEIGHT_FILES,
    builtin_dir,
    how_chosen,
    hub_snapshot,
    looks_like_path,
)

QUANTIZE_ROUTES = ("none", "int8")

# An original (Salesforce or mmpretrain) BLIP checkpoint given as a model is converted (blipsearch.models.convert).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def resolve_model_dir(spec: str, role: str = "retrieval") -> Path:
    """Return a local directory holding the checkpoint named by ``spec``.

    ``role`` picks the sub-folder of a ``builtin:`` model (``retrieval``,
    ``caption`` or ``vqa``).
    """
    if spec.startswith(BUILTIN_PREFIX):
        return builtin_dir(spec, role)

    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputPathError(f"{spec} is a folder but holds no config.json: it is not a model checkpoint.")
        return local.resolve()
    if local.is_file() and local.suffix.lower() in CHECKPOINT_SUFFIXES:
        return converted_dir(local, role)
    if local.exists():
        raise InputPathError(f"{spec} is a file: a model is a folder (config.json, weights, tokenizer files), "
                             f"or an original BLIP checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) to convert.")
    if looks_like_path(spec):
        advice = ": a folder, a hub id such as Salesforce/blip-itm-base-coco, or builtin:shapes."
        raise ModelUnavailableError(f"Model folder {spec} does not exist: check {how_chosen(role)}{advice}",
                                    command_line=f"Model folder {spec} does not exist: check "
                                                 f"{how_chosen(role, python=False)}{advice}")
    return hub_snapshot(spec, role)


def converted_dir(checkpoint: Path, role: str) -> Path:
    """The Hugging Face folder converted from an original BLIP ``.pth`` (see :mod:`.convert`),
    made once per file and head and kept in the user's cache; the tokenizer is
    ``$BLIPSEARCH_TOKENIZER`` or bert-base-uncased."""
    import platformdirs

    from .convert import DEFAULT_TOKENIZER, HEADS, convert

    head = role if role in HEADS else "retrieval"
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}".encode())
    out = platformdirs.user_cache_path("blipsearch", appauthor=False) / "converted" / f"{key.hexdigest()[:16]}-{head}"
    if (out / "config.json").is_file():
        return out
    tokenizer = os.environ.get("BLIPSEARCH_TOKENIZER") or DEFAULT_TOKENIZER
    import logging

    logging.getLogger(__name__).warning("Converting %s to the Hugging Face layout (once; kept in %s)", checkpoint, out)
    try:
        convert(checkpoint, out, head=head, tokenizer=tokenizer)  # type: ignore[arg-type]
    except ModelUnavailableError as exc:
        raise ModelUnavailableError(
            f"Converting {checkpoint} needs the tokenizer BLIP was trained with, and: {exc} "
            "Point BLIPSEARCH_TOKENIZER at a folder holding bert-base-uncased's tokenizer files, or run "
            f"`blipsearch convert {checkpoint} OUT --tokenizer FOLDER` and pass OUT as the model."
        ) from None
    except OSError:
        if not (out / "config.json").is_file():  # another process converting the same file won the rename
            raise
    return out


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Can't read the model config in {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} is not a JSON object.")
    return config


FAMILIES = {"blip": "blip", "blip-2": "blip-2"}


def model_family(spec: str, role: str = "retrieval") -> str:
    """``blip`` or ``blip-2``, from the checkpoint's ``config.json`` (its weights are not read)."""
    path = resolve_model_dir(spec, role)
    kind = read_config(path).get("model_type")
    if kind not in FAMILIES:
        raise ModelLoadError(f"{spec} is a {kind or 'model of no stated type'} checkpoint, not BLIP or BLIP-2.")
    return FAMILIES[kind]


def weight_count(path: Path) -> int | None:
    """Numbers in a checkpoint's safetensors files, read from their headers (no weights loaded);
    None for pickled weights."""
    from safetensors import safe_open

    files = sorted(path.glob("model-*.safetensors")) or [path / "model.safetensors"]
    if not all(f.is_file() for f in files):
        return None
    total = 0
    try:
        for file in files:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    count = 1
                    for n in f.get_slice(key).get_shape():
                        count *= int(n)
                    total += count
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"Can't read the weights in {path}: {exc}") from None
    return total


def check_memory(spec: str, path: Path, bytes_per_weight: int, device: Any) -> None:
    """Refuse, before loading, a model that this machine's free memory (RAM, or the GPU's) can't hold."""
    count = weight_count(path)
    if count is None:
        return
    need = count * bytes_per_weight
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        where = f"GPU {device}"
    elif device.type == "cpu":
        free, where = available_memory(), "RAM"
    else:
        return
    if free is not None and need + (512 << 20) > free:
        raise ModelLoadError(
            f"{spec} needs {need / 2**30:.1f} GiB for its {count / 1e9:.2f} billion weights "
            f"({bytes_per_weight} bytes each), and this machine has {free / 2**30:.1f} GiB of {where} free: "
            "close other programs, use a GPU (--device cuda, half precision), or choose a smaller model."
        )


Stamp = tuple[tuple[str, int, int, int, int], ...]
"""Per file that decides the vectors: (name, size, mtime_ns, ctime_ns, inode)."""

_FINGERPRINT_CACHE_ENTRIES = 64


def _fingerprint_cache_path() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("blipsearch", appauthor=False) / "fingerprints.json"


def _read_fingerprint_cache() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_fingerprint_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: it is only a cache
    return data if isinstance(data, dict) else {}


def _write_fingerprint_cache(cache: dict[str, dict[str, object]]) -> None:
    path = _fingerprint_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(json.dumps(cache).encode()), point="model-cache")
    except OSError:
        pass  # a read-only cache folder costs a re-hash next time, nothing else


def _hash_files(path: str, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        with open(os.path.join(path, name), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=16)
def _fingerprint_cached(path: str, stamp: Stamp) -> str:
    """The hash of a model folder's files, remembered across processes while their stat stamp holds.

    Hashing BLIP-base's 900 MB of weights takes the better part of a second on
    every command; the stamp (size, modification and change times, inode) is
    what the indexer trusts for photos too. The change time cannot be set back
    by tools that restore a modification time, so rewritten weights re-hash.
    """
    key = os.path.realpath(path)
    cache = _read_fingerprint_cache()
    entry = cache.get(key)
    stamp_json = [list(row) for row in stamp]
    if isinstance(entry, dict) and entry.get("stamp") == stamp_json and isinstance(entry.get("fingerprint"), str):
        return str(entry["fingerprint"])
    value = _hash_files(path, [row[0] for row in stamp])
    cache = _read_fingerprint_cache()  # fresh: another process may have written meanwhile
    cache.pop(key, None)
    cache[key] = {"stamp": stamp_json, "fingerprint": value}
    while len(cache) > _FINGERPRINT_CACHE_ENTRIES:
        cache.pop(next(iter(cache)))  # oldest first (dicts keep insertion order)
    _write_fingerprint_cache(cache)
    return value


def fingerprint(model_dir: Path) -> str:
    """A short hash of everything that decides the vectors: config, image processor config, weights."""
    names = sorted(
        p.name
        for p in model_dir.iterdir()
        if p.name in ("config.json", "preprocessor_config.json", "processor_config.json")
        or p.name in WEIGHT_FILES
        or (p.name.startswith("model-") and p.name.endswith(".safetensors"))
    )
    stamp = tuple(
        (n, (s := (model_dir / n).stat()).st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for n in names
    )
    return _fingerprint_cached(str(model_dir), stamp)


def check_route(quantize: str) -> None:
    if quantize not in QUANTIZE_ROUTES:
        raise ModelLoadError(f"Unknown --quantize route {quantize!r}: use {' or '.join(QUANTIZE_ROUTES)}.")


def route_fingerprint(checkpoint_fingerprint: str, quantize: str) -> str:
    """The fingerprint a library records: the checkpoint's, plus the vision route when not plain."""
    check_route(quantize)
    return checkpoint_fingerprint if quantize == "none" else f"{checkpoint_fingerprint}+{quantize}"


@dataclass(frozen=True)
class ModelIdentity:
    """What decides a retrieval model's vectors, read from its folder without loading its weights (or torch)."""

    spec: str
    fingerprint: str
    image_spec: ImageSpec
    path: Path
    dim: int  # of the ITC vectors
    queries: int = 1  # ITC vectors per image (BLIP-2: one per Q-Former query)

    @classmethod
    def of(cls, spec: str, quantize: str = "none") -> ModelIdentity:
        path = resolve_model_dir(spec, "retrieval")
        config = read_config(path)
        try:
            dim = int(config.get("image_text_hidden_size", 256))
            queries = int(config.get("num_query_tokens", 32)) if config.get("model_type") == "blip-2" else 1
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"Can't read the model config in {path}: {exc}") from None
        return cls(spec, route_fingerprint(fingerprint(path), quantize), ImageSpec.from_model_dir(path), path, dim,
                   queries)
