"""Atomic file and folder writes: a failed or interrupted run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from exporter.errors import RgMobileError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _staging_pid(name: str, prefix: str) -> int | None:
    """The owner pid in ``{prefix}{pid}-{random}`` (the names :func:`atomic_dir` makes); None if not one."""
    if not name.startswith(prefix):
        return None
    pid = name[len(prefix) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove what killed :func:`atomic_dir` runs left beside ``target``; returns what was removed.

    Only folders named by :func:`atomic_dir` (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) whose process
    is gone. An ``.old`` folder is the previous ``target`` caught mid-swap: if ``target`` is missing
    it is put back instead of removed.
    """
    target = Path(target)
    parent, name = target.parent, target.name
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        for prefix in (f".{name}.tmp-", f".{name}.old-"):
            pid = _staging_pid(entry.name, prefix)
            if pid is None or pid == os.getpid() or _pid_alive(pid) or entry.is_symlink() or not entry.is_dir():
                continue
            if prefix.endswith(".old-") and not target.exists():
                os.replace(entry, target)
                log.warning("restored %s from %s (an earlier run was killed while replacing it)", target, entry)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by a killed run (pid %d)", entry, pid)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(
    target: Path, overwrite: bool = True, check_replace: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it into place on success.

    The staging folder's name carries our pid, so a later run can tell a folder left by a killed
    run (removed by :func:`clean_stale_staging`, called here first) from one still in use.
    ``check_replace(target)``, if given, runs just before an existing ``target`` is replaced and
    raises to refuse (e.g. the folder now holds files that are not ours).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp is owner-only; an artifact is meant to be shared
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise FileExistsError(target)
            if check_replace is not None:
                check_replace(target)
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp is owner-only
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def first_line(exc: BaseException) -> str:
    """The gist of a library message: its first line, first sentence (the CLI shows one line)."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0] if text else type(exc).__name__


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; unreadable, invalid or non-object JSON is a clear error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RgMobileError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise RgMobileError(f"{path}: invalid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise RgMobileError(f"{path}: cannot read ({first_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise RgMobileError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise RgMobileError(f"{path}: invalid JSON content: expected an object, got {type(data).__name__}")
    return data
