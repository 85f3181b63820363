"""Named crash points for the crash trials.

``NBDESK_FAILPOINT=name`` makes the process SIGKILL itself when it reaches that point
(``name@N``: the N-th time), so tests can kill it exactly while it writes a file or the
database — moments too short to hit with an outside timer. Unset, a check costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = (
    "download.written",  # the temp file is complete and fsynced, not yet renamed
    "file.renamed",  # the image is in place, its row not yet written
    "db.transaction",  # inside the transaction that records the image and completes the job
    "submit.sent",  # the submit request was answered, the remote id not yet written
)

_lock = threading.Lock()
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("NBDESK_FAILPOINT")
    if not spec:
        return
    wanted, _, nth = spec.partition("@")
    if wanted != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        count = _hits[name]
    if count >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
