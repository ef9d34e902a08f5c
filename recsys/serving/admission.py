"""Admission control of one replica: shed load with 503 + Retry-After before it queues.

(Placeholder wired into ``recsys.serving.app``; the issue-17 overload work fills it in.)
"""

from __future__ import annotations

from typing import Any


class Admission:
    """Pure ASGI middleware; passes everything through for now."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)
