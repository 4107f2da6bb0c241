"""Where an artifact or a bundle is written: refuse an ``--out`` that is not ours to replace.

An export and ``package`` write a new folder and rename it into place; an existing folder
is replaced only when it is provably ours (an rgmobile manifest listing every file in it),
so a folder that merely has a ``manifest.json`` (a web app), or an artifact the user added
notes to, is never deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

from exporter.artifact.manifest import MANIFEST_NAME, read_manifest
from exporter.errors import RgMobileError
from exporter.fsio import first_line


def check_out(out: Path) -> None:
    """Refuse an ``--out`` we could not write or must not replace, with one line; before any work.

    A new or empty folder is fine; an existing folder only if it is provably an rgmobile artifact
    (:func:`check_replaceable`): replacing anything else would delete files we did not write.
    """
    out = Path(out)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RgMobileError(
            f"--out {out} is the current folder or holds it, which would be replaced; run from another "
            "folder or choose another --out"
        )
    if out.is_symlink():
        raise RgMobileError(f"--out {out} is a symbolic link; pass the folder it points to, or another --out")
    if out.exists() and not out.is_dir():
        raise RgMobileError(f"--out {out} exists and is a file, not a folder; choose a new or empty --out")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RgMobileError(f"--out {out}: cannot write in {parent} (permission denied or read-only)")
    if out.is_dir() and any(out.iterdir()):
        check_replaceable(out)


def check_replaceable(out: Path) -> None:
    """``out`` may be replaced only if it is an rgmobile artifact and holds nothing but the files its
    manifest lists: a folder that merely has a ``manifest.json`` (a web app) or an artifact the user
    added files to must never be deleted."""
    out = Path(out)
    manifest = out / MANIFEST_NAME
    if not manifest.is_file() or manifest.is_symlink():
        raise RgMobileError(
            f"--out {out} exists and is not an rgmobile artifact folder (no {MANIFEST_NAME}); it is not replaced: "
            "choose a new or empty --out"
        )
    try:
        listed = {f.path for f in read_manifest(out, verify=False).files} | {MANIFEST_NAME}
    except RgMobileError as exc:
        raise RgMobileError(
            f"--out {out} has a {MANIFEST_NAME} that is not an rgmobile manifest ({first_line(exc)}); it is not "
            "replaced: choose a new or empty --out"
        ) from None
    unlisted = []
    for root, dirs, files in os.walk(out):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(out).as_posix()
            if rel not in listed:
                unlisted.append(rel)
    if unlisted:
        raise RgMobileError(
            f"--out {out} holds {len(unlisted)} file(s) the folder's manifest does not list (e.g. "
            f"{', '.join(sorted(unlisted)[:3])}); replacing it would delete them: move them out or choose another --out"
        )
