"""A listener whose TLS material can change while it listens (certificate renewal, root rotation).

An asyncio server keeps the SSL context it was started with. `LiveServerContext.listener` is
that context; its SNI callback, which OpenSSL runs for every ClientHello (with or without a
server name), moves the handshake onto the newest context given to `update`. The handshake
then presents that context's certificate chain and verifies the peer against its trust
store, so a renewed certificate is served, and a root dropped from the trust bundle is refused,
on the next connection without restarting the listener. Connections already open keep the
session they negotiated.
"""

from __future__ import annotations

import ssl


class LiveServerContext:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.listener = context
        self.current = context
        context.sni_callback = self._choose

    def update(self, context: ssl.SSLContext) -> None:
        self.current = context

    def _choose(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            ssl_object.context = current
