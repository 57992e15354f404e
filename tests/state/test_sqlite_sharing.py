"""A SQLite store keeps seeing other processes' writes however many threads of its process open
connections, and whoever else opens and closes the file.

POSIX record locks belong to a process, and closing *any* descriptor of a file drops all of the
process's locks on it, those SQLite's open connections hold included. A process that then closes
its own connection (an operator's ``authz-server revocations`` listing, say) finds no other
holder, takes itself for the last connection, checkpoints and deletes the WAL and its index under
the connections that are still open: they go on reading a deleted file and never see a later
write (https://sqlite.org/howtocorrupt.html, section 2.2). A worker would then keep enforcing a
revocation an operator removed, and miss new ones.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from authz_server.state import open_store
from tests.serving import ROOT

_OTHER_PROCESS = """
import sys
from authz_server.state import open_store
with open_store(sys.argv[1]) as store:
    if sys.argv[2] == "read":
        store.list("revocation")
    else:
        store.put("revocation", sys.argv[2], {"n": 1})
"""


def _in_another_process(url: str, action: str) -> None:
    subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, url, action], cwd=ROOT, check=True, timeout=60
    )


def test_writes_of_other_processes_stay_visible_to_every_thread(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    with open_store(url) as store:
        _in_another_process(url, "first")
        assert store.version("revocation") > 0  # this thread's connection holds its locks
        seen: list[int] = []
        # Another thread's first use opens a second connection of this process.
        reader = threading.Thread(target=lambda: seen.append(store.version("revocation")))
        reader.start()
        reader.join()
        before = store.version("revocation")
        assert seen == [before]
        _in_another_process(url, "read")  # opens, reads and closes the file
        _in_another_process(url, "second")
        assert store.version("revocation") == before + 1
        assert [r.id for r in store.list("revocation")] == ["first", "second"]
