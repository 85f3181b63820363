"""The loopback simulator in its own process, for the queue scenario: the app under test
talks to it over HTTP like it would to the real provider, and the simulator's own CPU
work is not charged to the app's process.

Two changes to make it stand in for a remote server on a 2-core machine: result files
come from a pool of pre-rendered, distinct JPEGs (job k gets file k mod pool) instead of
being rendered per request, and the process runs at a lower priority (nice +10), so the
server's share of the CPU goes to the app whenever both want it.

``python -m bench.simproc POOL_DIR [QUEUE_S JOB_S]`` prints the base URL, then serves
until terminated.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from bench.common import exit_with_parent
from nbdesk.sim import SimConfig, Simulator
from nbdesk.sim.jobs import JobToken, Phase
from nbdesk.sim.server import _apiframe_error, _Response


class PoolSimulator(Simulator):
    def __init__(self, pool: list[bytes], config: SimConfig) -> None:
        super().__init__(config)
        self.pool = pool

    def _download(self, remote_id: str, name: str) -> _Response:
        job = JobToken.decode(remote_id)
        stem, _, ext = name.partition(".")
        if job is None or stem != "0" or ext != "jpg" or job.output_format != "jpg":
            return _apiframe_error(404, "NOT_FOUND", "File not found")
        if self._timeline(job)[0] is not Phase.COMPLETED:
            return _apiframe_error(404, "NOT_FOUND", "File not ready")
        data = self.pool[job.ordinal % len(self.pool)]
        return _Response(200, data, "image/jpeg", {"Cache-Control": "public, max-age=86400"})


def main(pool_dir: str, queue_s: float, job_s: float) -> None:
    exit_with_parent()
    os.nice(10)
    pool = [p.read_bytes() for p in sorted(Path(pool_dir).glob("*.jpg"))]
    sim = PoolSimulator(pool, SimConfig(queue_seconds=queue_s, job_seconds=job_s)).start()
    print(sim.base_url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], float(args[1]) if len(args) > 1 else 0.5,
         float(args[2]) if len(args) > 2 else 3.0)
