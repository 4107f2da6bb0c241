"""Numbers as the command line prints them."""

from __future__ import annotations


def fmt_bytes(n: int) -> str:
    """Bytes in B, KB, MB or GB (powers of 1024), one decimal above bytes."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt_metric(value: float) -> str:
    """3 significant digits; values just below 1 (cosine, agreement) as 1 - x so they stay readable."""
    if 0.999 < value < 1:
        return f"1 - {1 - value:.2g}"
    return f"{value:.3g}"
