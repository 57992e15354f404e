"""Starting the admin listener (:mod:`authz_server.oversight.admin`) for ``serve``.

One listener per host, in the process that outlives the others: the supervisor when there is one
(``workers.py``), else the single serving process (``server.py``). Workers are started with an
empty ``--admin-address``, so they never bind it. The supervisor loads no policies and is never
replaced for its memory, so the page keeps its sessions and its port while workers come and go.

Without ``--admin-token-file`` nothing is served, even on loopback: everything on the admin
surface needs the token, so there would be nothing to answer but refusals. A line in the log says
how to turn it on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from authz_server.config import ServeConfig
from authz_server.oversight import Approvals, Revocations
from authz_server.oversight.admin import AdminServer, read_token
from authz_server.state import Store, open_store

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AdminListener:
    """A running admin listener and the store connection it owns."""

    server: AdminServer
    store: Store

    def stop(self) -> None:
        self.server.stop()
        self.store.close()


def start_admin(config: ServeConfig) -> AdminListener | None:
    """Start the admin listener ``config`` asks for, or None when it is off. Raises
    :class:`~authz_server.oversight.admin.AdminError` for an unusable token file and
    :class:`OSError` when the address cannot be bound."""
    address = config.admin_address
    if address is None:
        return None
    if config.admin_token_file is None:
        log.info(
            "admin page and API off: give --admin-token-file (env AUTHZ_ADMIN_TOKEN_FILE) "
            "to serve them on %s",
            address,
        )
        return None
    token = read_token(config.admin_token_file)
    store = open_store(config.state)
    server = AdminServer.build(
        address.host, address.port, token, Revocations(store), Approvals(store)
    )
    try:
        server.start()
    except OSError as exc:
        store.close()
        raise OSError(f"cannot listen for the admin page on {address}: {exc.strerror}") from exc
    log.info("admin page and API on %s (approvals, revocations)", server.url)
    return AdminListener(server, store)
