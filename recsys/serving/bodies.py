"""Request bodies before and after parsing: the size limit (413), parse errors (400) and
validation errors (422) with bounded, documented error bodies.

(Placeholder wired into ``recsys.serving.app``; the issue-17 HTTP-contract work fills it in.)
"""

from __future__ import annotations

from typing import Any


class LimitBody:
    """Pure ASGI middleware; passes everything through for now."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)
