"""Index runs on a Ray cluster (``blipsearch index --engine ray``; ``pip install 'blipsearch[ray]'``).

The driver (this process) plans the run exactly as the local engine does: walk, stat, compare with
the database, moves by content hash. Reading, hashing, decoding and embedding the files that need it
run as Ray Data batches on a pool of actors, each loading the model once. The results come back to
the driver in order and are committed batch after batch by the local engine's own code, under its
rules: a killed run keeps every committed batch and its re-run continues from there.

The workers open the files by their paths, so every node must see them at the same place (a shared
filesystem); that is checked on every node before anything is read.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputPathError, LibraryError
from .indexer import Indexer, _Job, prepare
from .walk import FileEntry

INSTALL_HINT = "--engine ray needs Ray: pip install 'blipsearch[ray]'"


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: the cluster this process is connected to, or a new local one
    actors: int | None = None  # None: one per CPU (or per GPU with num_gpus) the cluster has
    num_gpus: float = 0.0  # per actor
    batch_size: int = 16  # images per model call on an actor


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LibraryError(INSTALL_HINT) from None
    return ray


def connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or start a local one); False when already connected."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LibraryError(f"Can't reach the Ray cluster{f' at {address}' if address else ''}: {exc}") from None
    return True


def _missing_on_this_node(roots: list[bytes]) -> tuple[str, list[bytes]]:
    import socket

    return socket.gethostname(), [r for r in roots if not os.path.exists(r)]


def check_visible(roots: list[bytes]) -> None:
    """Refuse to start unless every alive node of the cluster sees every root at its path."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing_on_this_node)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                       .remote(roots) for node in nodes])
    blind = [(host, missing) for host, missing in answers if missing]
    if blind:
        host, missing = blind[0]
        raise InputPathError(
            f"The Ray worker on {host} can't see {os.fsdecode(missing[0])!r}"
            f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}: --engine ray needs the photos on "
            f"a filesystem every node mounts at the same path ({len(blind)} of {len(nodes)} nodes can't see them)."
        )


class _Embed:
    """A Ray Data actor: the model, loaded once; each batch of paths read, decoded and embedded."""

    def __init__(self, spec: str, quantize: str, device: str, known: frozenset[str]) -> None:
        from ..models.retrieval import load_retrieval_model

        self.model = load_retrieval_model(spec, device, quantize=quantize)
        self.known = known

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        jobs = [prepare(_Job(FileEntry(bytes(p), 0, 0), None), self.model.image_spec, self.known)
                for p in batch["path"]]
        embed = [j for j in jobs if j.data is not None and j.data.pixels is not None]
        if embed:
            pixels = np.stack([j.data.pixels for j in embed])  # type: ignore[union-attr,misc]
            vectors = self.model.project_images(self.model.image_tokens(pixels))
            for job, vector in zip(embed, vectors):
                job.vector = np.asarray(vector, np.float32)
                job.data.pixels = None  # type: ignore[union-attr]
        return {"n": batch["n"], "result": [pickle.dumps((j.data, j.vector, j.error, j.unreadable, j.retry, j.meta))
                                            for j in jobs]}


class RayIndexer(Indexer):
    """The local engine's run, with the files read, decoded and embedded by Ray actors."""

    def __init__(self, *args: Any, spec: str, quantize: str, device: str, ray: RaySettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec, self.quantize, self.device, self.settings = spec, quantize, device, ray
        # A batch committed per model-sized batch of an actor's; never asks the driver's model (not loaded).
        self._batch_size = self._batch_size or ray.batch_size

    def run(self, roots: list[bytes], **kwargs: Any):  # type: ignore[no-untyped-def]
        _ray()  # installed, or the hint, before the walk
        self._roots, self._started = roots, False
        try:
            return super().run(roots, **kwargs)
        finally:
            if self._started:
                _ray().shutdown()

    def _prepared(self, jobs: list[_Job]) -> Iterator[_Job]:
        # The cluster is joined (or started) only when files need reading: a run with nothing new needs none.
        self._started = connect(self.settings.address)
        check_visible(self._roots)
        import ray
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress lines: the run has its own bar
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        settings = self.settings
        resources = ray.cluster_resources()
        per = "GPU" if settings.num_gpus else "CPU"
        actors = settings.actors or max(1, int(resources.get(per, 1) / (settings.num_gpus or 1)))
        rows = [{"n": n, "path": job.entry.path} for n, job in enumerate(jobs)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // settings.batch_size,
                                                                          8 * actors)))
        placement: dict[str, float] = {"num_gpus": settings.num_gpus} if settings.num_gpus else {"num_cpus": 1}
        results = dataset.map_batches(
            _Embed,
            fn_constructor_kwargs={"spec": self.spec, "quantize": self.quantize,
                                   "device": "cuda" if settings.num_gpus else "cpu",
                                   "known": frozenset(self._known_hashes)},
            batch_size=settings.batch_size, compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy",
            **placement,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for n, blob in zip(batch["n"], batch["result"]):
                job = jobs[int(n)]
                job.data, job.vector, job.error, job.unreadable, job.retry, job.meta = pickle.loads(blob)
                yield job
