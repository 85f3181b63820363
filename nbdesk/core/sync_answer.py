"""A synchronous provider's paid answer (Gemini's): its images kept before anything
else, found again after a crash or a failed write, and stored into the library.

Paid already when it arrives: never deleted, never paid for twice."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbdesk.api.base import Answer
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.api.images import ImageCheckError, probe_file
from nbdesk.core import answers
from nbdesk.core.engine_base import EngineBase
from nbdesk.core.jobs import ErrorKind, Job, JobState
from nbdesk.core.library import StoredImage, sha256_file, sha256_hex
from nbdesk.core.paths import write_synced

log = logging.getLogger("nbdesk.core.engine")


def answer_markers(digests: Sequence[str]) -> tuple[str, ...]:
    """A synchronous answer's images as a job records them (its ``result_urls``):
    ``answer:<index>:<sha256>``, each kept on disk until it is stored."""
    return tuple(f"answer:{n}:{d}" for n, d in enumerate(digests))


def marker_digest(marker: str) -> str:
    """The SHA-256 an ``answer_markers`` entry names."""
    return marker.rpartition(":")[2]


class SyncAnswers(EngineBase):
    """How the engine keeps and stores a synchronous answer."""

    async def _keep_answer(self, job: Job, answer: Answer) -> Job:
        """The paid answer's images kept before anything else: in the library's temp
        folder, else the fallback folder (``core.answers``), else in this process's
        memory; then the job is in ``downloading`` with the images' digests (a retry
        stores them, never calls again)."""
        images = [i.data for i in answer.images]
        try:
            # Shielded: once the answer is here, a cancel or stop must not lose it.
            digests = await asyncio.shield(asyncio.to_thread(
                self.library.keep_answer, job.id, images))
        except OSError as exc:
            log.error("job %s: cannot keep the paid answer on disk (%s); held in memory",
                      job.id[:8], exc)
            self._held[job.id] = images
            digests = [sha256_hex(d) for d in images]
        turn: list[dict[str, Any]] = []
        for part in answer.turn:
            entry: dict[str, Any] = (
                {"image": part.image_index} if part.image_index is not None
                else {"text": part.text or ""}
            )
            if part.signature:
                entry["sig"] = part.signature
            turn.append(entry)
        return await self._update(
            job, state=JobState.DOWNLOADING, remote_id=answer.remote_id,
            result_urls=answer_markers(digests),
            turn=tuple(turn), cost=answer.cost, progress=100.0, submitted_at=time.time(),
            note=None,
        )

    def _kept_digests(self, job: Job) -> list[str]:
        """The digests of an answer kept on disk for a job caught in ``submitting`` (the
        process died, or the database refused, after the answer was kept): [] if none."""
        digests: list[str] = []
        for idx in range(PROVIDERS[job.provider].model(job.model).max_images):
            path = self.library.answer_path(job.id, idx)
            if path.is_file():
                digests.append(sha256_file(path))
            elif answers.kept(job.id, idx):
                digests.append((answers.place(job.id, idx) / "sha256").read_text().strip())
            else:
                break
        return digests

    def _kept_answer(self, job: Job) -> tuple[str, ...]:
        """The markers (``answer:n:sha256``) of a synchronous job's paid answer kept here
        (in the library's temp folder, the fallback folder or this process's memory, or
        placed already), whatever the job's record says; () if none is."""
        if job.result_urls and self._answer_kept(job):
            return job.result_urls
        digests = self._kept_digests(job) or [sha256_hex(d) for d in self._held.get(job.id, ())]
        return answer_markers(digests)

    def _answer_kept(self, job: Job) -> bool:
        for n, marker in enumerate(job.result_urls):
            digest = marker_digest(marker)
            if (not self.library.answer_path(job.id, n).is_file()
                    and not answers.kept(job.id, n) and job.id not in self._held
                    and self.library.placed_file(job, n, digest) is None):
                return False
        return bool(job.result_urls)

    def _bring_back(self, job_id: str, idx: int, dest: Path) -> None:
        """A kept answer image back at ``dest`` (from the fallback folder or memory), if
        it is kept there; ``OSError`` if ``dest`` cannot be written."""
        if answers.restore(job_id, idx, dest):
            return
        held = self._held.get(job_id)
        if held is not None and idx < len(held):
            write_synced(dest, held[idx])

    async def _store_answer(self, job: Job) -> Job:
        """Place the images a synchronous answer brought (kept on disk) into the library."""
        stored: list[StoredImage] = []
        for idx, marker in enumerate(job.result_urls):
            digest = marker_digest(marker)
            src = self.library.answer_path(job.id, idx)
            try:
                if not await asyncio.to_thread(src.is_file):
                    await asyncio.to_thread(self._bring_back, job.id, idx, src)
                if await asyncio.to_thread(src.is_file):
                    info = await asyncio.to_thread(probe_file, src)
                    size = (await asyncio.to_thread(src.stat)).st_size
                    image = await self.db(
                        self.library.place_image, job, idx, src, sha256=digest, size=size,
                        width=info.width, height=info.height, fmt=info.format, ext=info.ext,
                    )
                else:
                    # Placed before a crash, its row not written: take it as it is.
                    placed = await self.db(self.library.placed_file, job, idx, digest)
                    if placed is None:
                        return await self._fail(
                            job, "the image of the answer was lost before it was stored; "
                            "Retry makes a new paid call", ErrorKind.LOST,
                        )
                    info = await asyncio.to_thread(probe_file, placed)
                    image = StoredImage(
                        idx, placed.relative_to(self.library.root).as_posix(), digest,
                        placed.stat().st_size, info.width, info.height, info.format,
                    )
                stored.append(image)
            except ImageCheckError as exc:
                await asyncio.to_thread(src.unlink, missing_ok=True)
                return await self._fail(
                    job, f"the provider's answer holds no usable image: {exc}", ErrorKind.BAD_IMAGE)
            except OSError as exc:
                return await self._storage_failed(job, exc)
        done = await self._complete(job, stored)
        if done.state is JobState.COMPLETED:
            self._held.pop(job.id, None)
            await asyncio.to_thread(answers.drop, job.id)
        return done
