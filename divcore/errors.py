"""The project's one user-facing error type; the command-line entry points turn it into exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message names the input, the problem and the fix."""
