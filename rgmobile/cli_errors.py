"""How the command line fails: one line on stderr and exit code 2, never a traceback or a box.

A user error (:class:`RgMobileError`), a full disk, a folder the user cannot write and argv
bytes that are not UTF-8 all end in one line and exit 2 (:func:`user_errors`); a usage error
(unknown option, a value of the wrong type) is one line too (:class:`OneLineUsageErrors`).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as click_errors  # Typer vendors click: its own classes
from typer.core import TyperGroup

from exporter.errors import RgMobileError

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class OneLineUsageErrors(TyperGroup):
    """A usage error (unknown option, a value of the wrong type) is one line on stderr and exit 2, no box."""

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
        standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any,
    ) -> Any:  # fmt: skip
        run = functools.partial(super().main, args, prog_name, complete_var, False, windows_expand_args, **extra)
        if not standalone_mode:
            return run()
        try:
            code = run()  # returns the exit code of a typer.Exit
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()  # `rgmobile` alone: the help text
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "rgmobile"
            print(f"error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _disk_full(exc: OSError) -> bool:
    """ENOSPC, also inside a ``shutil.Error`` (copytree collects its errors as text)."""
    return exc.errno == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc)


_NOT_WRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM)


def _printable(value: object) -> str:
    """Text the terminal can print: bytes that were not UTF-8 (surrogate escapes) shown as \\udcXX."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_utf8(name: str, value: Any) -> None:
    """Argv bytes that are not UTF-8 reach us as lone surrogates: refuse them up front, naming the option."""
    for item in value if isinstance(value, list | tuple) else (value,):
        if isinstance(item, str | Path):
            try:
                str(item).encode("utf-8")
            except UnicodeEncodeError:
                option = "--" + name.replace("_", "-")
                raise RgMobileError(f"{option} is not valid UTF-8 text ({_printable(item)}); pass UTF-8") from None


def _one_line(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr (``message`` is rich markup) and return the exit-2 to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def user_errors(fn: F) -> F:
    """Turn RgMobileError (and a full disk) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            for name, value in kwargs.items():  # before anything prints them (a console cannot)
                _check_utf8(name, value)
            return fn(*args, **kwargs)
        except RgMobileError as exc:
            raise _one_line(escape(_printable(exc))) from None
        except UnicodeEncodeError as exc:  # argv bytes that are not UTF-8 arrive as surrogate escapes
            raise _one_line(f"an argument is not valid UTF-8 text ({exc.reason}); pass UTF-8 text and paths") from None
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                where = escape(_printable(getattr(exc, "filename", None) or "a file or folder"))
                raise _one_line(
                    f"{os.strerror(exc.errno or 0)}: {where}; choose files, an --out and a --report you can read "
                    "and write"
                ) from None
            if not _disk_full(exc):
                raise
            where = escape(str(getattr(exc, "filename", None) or "a temporary or output folder"))
            raise _one_line(
                f"no space left on the device while writing {where}; the output was left as it was (writes are "
                "atomic). Free disk space (or point TMPDIR at a larger disk) and retry."
            ) from None

    return wrapper  # type: ignore[return-value]
