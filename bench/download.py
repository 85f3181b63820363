"""Scenario child: store a 4K PNG (~50 MB of noise) via the engine's download path, vs
streaming the same URL to /dev/null with httpx.

The engine's path, call for call as ``Engine._download`` makes it (``engine.fetch_image``):
``download_to`` (stream to a temp file, hashed, fsynced; a PNG's chunks and CRCs checked
by ``PngStreamCheck`` on the writer thread), ``probe_file`` in a thread (identify; the
full check unless the stream check proved the PNG), ``Library.place_image`` on a one-thread
"database" executor (rename into place, fsync the folder). Both sides use the app's HTTP
client (``make_client``) on the same event loop: qasync over a QApplication as in the
window (``qasync``), or plain asyncio as in the CLI (``asyncio``). The file comes from
``bench.fileserver`` in another process.

``python -m bench.download LOOP REPS``
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from bench.common import OUT, emit


async def scenario(url: str, reps: int) -> dict[str, Any]:
    from nbdesk.api.capabilities import PROVIDERS
    from nbdesk.api.http import download_to, make_client
    from nbdesk.api.images import PngStreamCheck, probe_file
    from nbdesk.core.jobs import JobParams, JobSpec
    from nbdesk.core.library import Library
    from nbdesk.core.paths import Paths

    home = OUT / "tmp" / "download-home"
    shutil.rmtree(home, ignore_errors=True)
    lib = Library(Paths.resolve({"NBDESK_HOME": str(home)}))
    db_pool = ThreadPoolExecutor(1, thread_name_prefix="nbdesk-db")
    loop = asyncio.get_running_loop()
    max_bytes = PROVIDERS["apiframe"].max_download_bytes
    spec = JobSpec(provider="apiframe", model="nano-banana", prompt="noise",
                   params=JobParams(output_format="png"))
    out: dict[str, list[float]] = {k: [] for k in
                                   ("base_s", "app_s", "download_s", "probe_s", "place_s")}
    size = 0
    client = make_client()
    try:
        async def baseline(record: bool = True) -> None:
            nonlocal size
            t0 = time.perf_counter()
            got = 0
            with open(os.devnull, "wb") as sink:  # noqa: ASYNC230 (instant)
                async with client.stream("GET", url) as response:
                    response.raise_for_status()
                    async for block in response.aiter_raw(1 << 20):
                        got += len(block)
                        sink.write(block)
            if record:
                out["base_s"].append(time.perf_counter() - t0)
            size = got

        async def engine_path() -> None:
            job = (await loop.run_in_executor(db_pool, lib.add_jobs, spec, [], 1))[0]
            tmp = lib.tmp_path(job.id, 0)
            t0 = time.perf_counter()
            check = PngStreamCheck()
            got = await download_to(client, url, tmp, origin=url, max_bytes=max_bytes,
                                    check=check)
            t1 = time.perf_counter()
            info = await asyncio.to_thread(partial(probe_file, tmp, png=check.proof()))
            t2 = time.perf_counter()
            stored = await loop.run_in_executor(db_pool, partial(
                lib.place_image, job, 0, tmp, sha256=got.sha256, size=got.size,
                width=info.width, height=info.height, fmt=info.format, ext=info.ext))
            t3 = time.perf_counter()
            out["app_s"].append(t3 - t0)
            out["download_s"].append(t1 - t0)
            out["probe_s"].append(t2 - t1)
            out["place_s"].append(t3 - t2)
            (lib.root / stored.rel_path).unlink()

        await baseline(record=False)  # warm-up: connection, page cache of the served file
        for r in range(reps):
            for side in ((baseline, engine_path) if r % 2 == 0 else (engine_path, baseline)):
                await side()
    finally:
        await client.aclose()
        db_pool.shutdown()
        lib.close()
        shutil.rmtree(home, ignore_errors=True)
    result: dict[str, Any] = {"bytes_mb": round(size / 1e6, 1), "reps": reps}
    for key, values in out.items():
        result[key] = round(statistics.median(values), 4)
    # each repetition runs both sides back to back: the median of those pairs' ratios
    pairs = [b / a for b, a in zip(out["base_s"], out["app_s"], strict=True)]
    result["ratio"] = round(statistics.median(pairs), 3)
    result["ratios"] = [round(r, 3) for r in pairs]
    result["base_mbps"] = round(size / 1e6 / result["base_s"], 1)
    result["app_mbps"] = round(size / 1e6 / result["app_s"], 1)
    return result


def main(kind: str, reps: int) -> dict[str, Any]:
    from bench.datasets import noise_png

    png = noise_png()
    server = subprocess.Popen([sys.executable, "-m", "bench.fileserver", str(png.parent)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/{png.name}"
        if kind == "asyncio":
            return asyncio.run(scenario(url, reps))
        import qasync
        from PySide6.QtWidgets import QApplication

        app = QApplication([sys.argv[0]])
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        with loop:
            result: dict[str, Any] = loop.run_until_complete(scenario(url, reps))
        return result
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    emit({"loop": sys.argv[1], **main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2
                                     else 5)})
