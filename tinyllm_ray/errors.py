"""The project's one base error: every error a user can fix (bad config, data, artifact, setting) derives from it,
so the CLI prints its message and exits 2 instead of showing a traceback."""

from __future__ import annotations


class TinyLLMError(Exception):
    """An error the user can fix; the message says what, where, and what to do next."""
