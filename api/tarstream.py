"""Stream a directory as an uncompressed tar with bounded memory (checkpoints can be gigabytes)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK = 1 << 20


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def tar_stream(root: Path, arcroot: str) -> Iterator[bytes]:
    """The tar archive of ``root`` (a directory, or one file) under the folder name ``arcroot``."""
    for path in _files(root):
        relative = path.name if root.is_file() else path.relative_to(root).as_posix()
        stat = path.stat()
        info = tarfile.TarInfo(f"{arcroot}/{relative}")
        info.size = stat.st_size
        info.mtime = int(stat.st_mtime)
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        written = 0
        with path.open("rb") as handle:
            while written < info.size and (chunk := handle.read(min(CHUNK, info.size - written))):
                written += len(chunk)
                yield chunk
        if written < info.size:  # the file shrank while we read it: keep the archive well-formed
            yield b"\0" * (info.size - written)
        if info.size % BLOCK:
            yield b"\0" * (BLOCK - info.size % BLOCK)
    yield b"\0" * (2 * BLOCK)  # end-of-archive marker
