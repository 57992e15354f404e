"""Stop taking new gRPC connections while the server keeps answering the open ones (Linux).

grpc-python has no call for this: the only way to stop accepting is ``server.stop()``, which also
starts grpc-core's shutdown, and grpc-core cancels any call that reaches a server once shutdown
has begun instead of refusing it (grpc/grpc#41785): the client sees CANCELLED, which Envoy turns
into a denial. A worker handing over to its successor shares its port with it (SO_REUSEPORT), so
until it stops, the kernel keeps giving it about half of the new connections; one that lands just
as it stops loses its first call.

So that worker shuts its own listening sockets down first. Linux then takes them out of the
port's group and every new connection goes to the sockets left, the successor's; connections
already open are untouched and drain as before. grpc-core notices when it next accepts and logs
one line ("Closing acceptor. Failed accept4: Invalid argument"), which is expected here.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's state column
_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_OWN_FDS = Path("/proc/self/fd")


def close_listening_sockets(port: int) -> int:
    """Shut down this process's TCP listening sockets on ``port``; return how many.

    0 where /proc cannot say (not Linux): the caller then drains as if nothing had changed.
    """
    inodes = _listening_inodes(port)
    closed = 0
    for fd in _fds_of(inodes):
        # A duplicate, so that closing our socket object leaves grpc-core's descriptor alone;
        # shutdown acts on the socket both descriptors share.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as listener:
            listener.shutdown(socket.SHUT_RDWR)
            closed += 1
    return closed


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl, local_address (HEX_IP:HEX_PORT), rem_address, st, ..., uid, timeout, inode
            if len(fields) > 9 and fields[3] == _LISTEN and fields[1].endswith(f":{port:04X}"):
                inodes.add(fields[9])
    return inodes


def _fds_of(inodes: set[str]) -> list[int]:
    if not inodes:
        return []
    try:
        entries = list(_OWN_FDS.iterdir())
    except OSError:
        return []
    fds = []
    for entry in entries:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(entry)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                fds.append(int(entry.name))
    return fds
