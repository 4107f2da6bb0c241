"""The one exception type for errors a user can cause.

The CLI turns an :class:`RgMobileError` into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class RgMobileError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""
