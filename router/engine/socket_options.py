"""No Nagle on association sockets (owned code, a speed change).

pynetdicom writes a PDU in several ``send()`` calls; with Nagle and the peer's delayed ACK
each C-STORE then stalls about 40 ms (``docs/benchmarks.md``).
"""

from __future__ import annotations

import socket

from router.engine.classes import RouterSocket


def set_nodelay(sock) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def install_socket_options() -> None:
    """Disable Nagle on every association socket, inbound and outbound."""
    original_init = RouterSocket.__init__

    def init(self, assoc, client_socket=None, address=None):
        original_init(self, assoc, client_socket, address)
        set_nodelay(self.socket)

    original_create = RouterSocket._create_socket

    def create(self, address):
        sock = original_create(self, address)
        set_nodelay(sock)
        return sock

    RouterSocket.__init__ = init
    RouterSocket._create_socket = create
