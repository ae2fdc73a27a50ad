"""Is the MLflow tracking server there? One probe for preflight and the spool (no MLflow import)."""

from __future__ import annotations

import urllib.request


def health_problem(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server does not answer its /health (None when it does; local
    stores always answer)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot reach"
        return str(exc) or type(exc).__name__


def reachable(uri: str, timeout: float = 5.0) -> bool:
    """True when the tracking store answers (an http(s) server's /health; local stores always)."""
    return health_problem(uri, timeout) is None
