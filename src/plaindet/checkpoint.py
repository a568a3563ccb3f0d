"""Safe checkpoint files: safetensors (no pickled code) with a JSON config in the header, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or not a plaindet checkpoint. The message names the file."""


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then move the result over ``path`` atomically.

    The temporary file lives in the same folder (a rename is only atomic within one file system) and
    is fsynced before the rename, so a crash at any instant leaves either the old file or the new
    one, never a torn file. On failure (a full disk, say) the temporary file is removed and the
    previous file is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save_safetensors(state: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``state`` with string ``metadata`` to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory (tied or viewed weights): copy the repeats.
        ptr = v.untyped_storage().data_ptr()
        if v.numel() and ptr in seen:
            v = v.clone()
        seen.add(ptr)
        tensors[k] = v
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read tensors and header metadata; clear :class:`CheckpointError` on anything unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return state, meta


def read_config(meta: dict[str, str], path: str | os.PathLike, expected_format: str) -> dict:
    if meta.get("format") != expected_format or "config" not in meta:
        raise CheckpointError(f"{path}: not a {expected_format} checkpoint (its header has format={meta.get('format')!r})")
    try:
        return json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the config in its header is not valid JSON ({e})") from None
