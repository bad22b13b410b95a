"""An image given to a query (a file, an indexed image's id, or bytes): its ITC vector, the stored
one when it is indexed and unchanged, and its vision tokens when a rerank needs them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImageError, InputPathError
from ..images.decode import pixels_from_bytes, read_file
from ..results import ImageData, ImageQuery
from ..system import root_path

if TYPE_CHECKING:
    import torch

    from ..models.base import RetrievalModel
    from ..models.loading import ModelIdentity
    from ..workspace import Workspace


def image_bytes(ws: Workspace, image: ImageQuery) -> bytes:
    """The bytes of a query image (an indexed one's file once checked to be the one indexed)."""
    if isinstance(image, ImageData):
        return image.data
    path = ws.photos.file(image) if isinstance(image, int) else root_path(image)
    return read_file(path)


def indexed_id(ws: Workspace, image: ImageQuery) -> int | None:
    """The id of a query image when it is an indexed one."""
    if isinstance(image, int):
        return image
    if isinstance(image, ImageData):
        return None
    row = ws.db.image_by_path(root_path(image))
    return row.id if row is not None else None


def query_image(ws: Workspace, model: RetrievalModel | ModelIdentity, image: ImageQuery,
                need_tokens: bool) -> tuple[np.ndarray, torch.Tensor | None]:
    """The ITC vector of a query image (the stored one when it is indexed and unchanged),
    and its vision tokens when ``need_tokens``."""
    if isinstance(image, int):  # an indexed image: its stored vector, or its file once checked
        row = ws.photos.row(image)
        if not need_tokens and row.model == model.fingerprint and row.vector is not None:
            return np.frombuffer(row.vector, np.float32), None
    elif not isinstance(image, ImageData):
        path = root_path(image)
        if not os.path.isfile(path):
            raise InputPathError(f"{os.fsdecode(path)} is not a file.")
        stored = ws.db.image_by_path(path) if not need_tokens else None
        if stored is not None and stored.model == model.fingerprint and stored.vector is not None:
            st = os.stat(path)
            if (stored.size, stored.mtime_ns) == (st.st_size, st.st_mtime_ns):
                return np.frombuffer(stored.vector, np.float32), None
    shown = "this image" if isinstance(image, (int, ImageData)) else os.fsdecode(root_path(image))
    try:
        pixels = pixels_from_bytes(image_bytes(ws, image), model.image_spec)
    except ImageError as exc:
        raise InputPathError(f"Can't use {shown} as a query image: {exc}") from None
    loaded = ws.model  # an image to embed: the model is needed now
    tokens = loaded.image_tokens(pixels[None])
    return loaded.project_images(tokens)[0], tokens
