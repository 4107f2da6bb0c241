"""Give back the resident pages of an artifact's mapped files once a runtime has loaded them.

Runtimes map their weight files and read them whole while loading (onnxruntime repacks every
`MatMulNBits` weight into its own layout; ExecuTorch's loader locks what it maps). Afterwards a
step reads only part of those files (the embedding rows it looks up; ExecuTorch's float
constants), yet every page read during loading stays in the process's resident set: 0.27 GB of
a 2B int4 ONNX artifact's 1.95 GB after the weights were packed. They are clean pages of a
file, so the kernel can drop them (``madvise(MADV_DONTNEED)``) and load a page again when a
step reads it. A private mapping with pages the process wrote to (``Anonymous`` in smaps:
copies made on write) is left alone: dropping it would lose the writes (a shared mapping loses
nothing). Linux only (``/proc/self/smaps``); elsewhere nothing happens.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4


@dataclass(frozen=True)
class Mapping:
    """One mapping of a file in this process (``/proc/self/smaps``)."""

    start: int
    end: int
    perms: str
    written_kb: int  # pages copied on write (smaps' Anonymous): what dropping would lose


def mappings(files: Iterable[Path]) -> list[Mapping]:
    """This process's mappings of ``files`` (real paths compared); [] where /proc is unavailable."""
    wanted = {os.path.realpath(p) for p in files}
    found: list[Mapping] = []
    head: tuple[int, int, str] | None = None  # the current mapping, when it maps a wanted file
    written = 0
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header line
                    if head:
                        found.append(Mapping(*head, written))
                    head, written = None, 0
                    if len(parts) == 6 and parts[5].strip() in wanted:
                        start, end = (int(x, 16) for x in parts[0].split("-"))
                        head = (start, end, parts[1])
                elif head and parts[0] == "Anonymous:":
                    written += int(parts[1])
    except OSError:
        return []
    if head:
        found.append(Mapping(*head, written))
    return found


def release_pages(files: Iterable[Path], *, unlock: bool = False) -> int:
    """Let the kernel drop this process's resident pages of ``files`` (every mapping but those
    written to; ``unlock`` first undoes an ``mlock``); the bytes of address space released."""
    found = mappings(files)
    if not found:  # nothing mapped, or no /proc (not Linux)
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for m in found:
        size = m.end - m.start
        if m.written_kb:
            log.debug("kept %x-%x (%s): %d kB written to", m.start, m.end, m.perms, m.written_kb)
            continue
        # munlock of pages that were never locked is a no-op; madvise after it cannot fail on a lock
        if (not unlock or libc.munlock(m.start, size) == 0) and libc.madvise(m.start, size, _MADV_DONTNEED) == 0:
            released += size
        else:
            log.debug("could not release %x-%x: errno %d", m.start, m.end, ctypes.get_errno())
    return released
