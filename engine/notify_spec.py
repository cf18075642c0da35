"""What `[notify]` accepts, for the profile's checks: torch-free and free of the sender
(engine/notify.py), which reads the profile."""

from __future__ import annotations

from urllib.parse import urlsplit

NOTIFY_EVENTS = ("finished", "early_stopped", "stopped", "interrupted", "failed")
DEFAULT_ON = ["finished", "failed", "early_stopped", "interrupted"]


def webhook_problem(url: str) -> str | None:
    """What is wrong with `url` as notify.webhook (None: fine, or empty)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return 'must be an http:// or https:// URL, e.g. "https://hooks.example.com/T0"'
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not hold spaces or control characters"
    return None
