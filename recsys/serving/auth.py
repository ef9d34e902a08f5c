"""Who may call the serving app: a bearer token or API key checked before the body is read.

(Placeholder wired into ``recsys.serving.app``; the issue-17 authentication work fills it in.)
"""

from __future__ import annotations

from typing import Any


class RequireToken:
    """Pure ASGI middleware; passes everything through for now."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)
