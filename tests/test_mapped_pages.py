"""exporter.mapped_pages: the resident pages of a loaded artifact's files are given back, and
nothing a process wrote to a private mapping is lost."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import numpy as np
from conftest import mapping_kb

from exporter.mapped_pages import mappings, release_pages


def _blob(tmp_path: Path, size: int = 1 << 20) -> tuple[Path, bytes]:
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return path, data


def test_a_locked_read_only_mapping_is_unlocked_and_dropped(tmp_path: Path) -> None:
    """What the ExecuTorch loader leaves behind as root: a read-only mapping, locked and resident.
    After ``release_pages(unlock=True)`` nothing is locked or resident, and the bytes read back."""
    path, data = _blob(tmp_path)  # under the lock limit
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert libc.mlock(view.ctypes.data, len(data)) == 0, ctypes.get_errno()
        assert mapping_kb(path, "Locked") == len(data) // 1024 == mapping_kb(path, "Rss")
        assert release_pages([path], unlock=True) == len(data)
        assert mapping_kb(path, "Locked") == 0 == mapping_kb(path, "Rss")
        assert view.tobytes() == data  # read again from the file
        del view


def test_a_clean_private_writable_mapping_is_dropped(tmp_path: Path) -> None:
    """What onnxruntime leaves behind: its external data mapped private and writable, every page
    read while packing the weights, none written."""
    path, data = _blob(tmp_path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert view.tobytes() == data and mapping_kb(path, "Rss") == len(data) // 1024
        [m] = mappings([path])
        assert m.perms.startswith("rw") and m.written_kb == 0
        assert release_pages([path]) == len(data)
        assert mapping_kb(path, "Rss") == 0
        assert view.tobytes() == data
        del view


def test_a_mapping_written_to_is_kept_with_its_writes(tmp_path: Path) -> None:
    path, data = _blob(tmp_path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as mapped:
        mapped[0] = (data[0] + 1) % 256  # a private copy of the first page
        assert mappings([path])[0].written_kb > 0
        assert release_pages([path]) == 0
        assert mapped[0] == (data[0] + 1) % 256 and mapped[1:] == data[1:]
    assert path.read_bytes() == data  # the file itself never changes


def test_files_not_mapped_release_nothing(tmp_path: Path) -> None:
    path, _ = _blob(tmp_path)
    assert mappings([path, tmp_path / "missing.bin"]) == []
    assert release_pages([path]) == 0
