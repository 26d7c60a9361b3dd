"""The reference server's control endpoint as the harness sees it: scripted actions over HTTP.

The harness never imports `reference_server`: it posts to the endpoint the server
names in its readiness file (`control`), exactly as a user's script would. In a
cluster that is the coordinator's, which forwards each action to every worker.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

ACTION_TIMEOUT_S = 30.0  # a large artwork is made before the answer


class ActionRefused(RuntimeError):
    """The server answered 4xx: `status`, and `error` naming what was wrong."""

    def __init__(self, action: str, status: int, error: str) -> None:
        super().__init__(f"POST /actions/{action}: {status} {error}")
        self.status = status
        self.error = error


class ServerControl:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, action: str, params: dict[str, Any], timeout: float = ACTION_TIMEOUT_S) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/actions/{action}", data=json.dumps(params).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                error = body
            raise ActionRefused(action, e.code, error) from None

    async def act(self, action: str, **params: Any) -> dict[str, Any]:
        """Apply `action` (`stream/clear`, `stream/end`, `stream/start`, `server/command`, `artwork`,
        `fragment`); returns the server's answer (the sessions it reached), or raises ActionRefused."""
        return await asyncio.to_thread(self.call, action, params)
