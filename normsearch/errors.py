"""The one exception type the library raises for user errors.

The CLI turns a :class:`NormsearchError` into one red line and exit code 2, without a traceback;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class NormsearchError(ValueError):
    """A user error: bad recipe, space, config, data folder or flag. The message is the whole story."""
