"""A job's request as a provider gets it, and the conversation (Gemini's turns with
their thought signatures) that an edit of an earlier image continues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbdesk.api.base import GenerationRequest, InputError, Part, Reference, Turn
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.api.images import prepare_reference

if TYPE_CHECKING:
    from nbdesk.core.jobs import Job
    from nbdesk.core.library import Item, Library


def build_request(library: Library, job: Job, keep_metadata: bool
                  ) -> GenerationRequest:
    """The request a job sends: its prompt and settings, its references read back
    from the library, and the conversation an edit continues (``edit_history``)."""
    refs: list[Reference] = []
    keep = keep_metadata  # (a copy made before stripping existed has its EXIF)
    for ref in job.refs:
        if ref.kind == "file" and ref.path:
            path = library.ref_file(ref.path)  # (UnsafePath: the job fails)
            if not path.is_file():
                raise InputError(f"the library's copy of reference {ref.source} is missing")
            refs.append(prepare_reference(str(path), keep_metadata=keep)[0])
        else:
            refs.append(Reference(ref.source))
    history, parent_sha = edit_history(library, job, keep_metadata)
    if parent_sha is not None:
        # The edited image is in the model's turn of the history: not sent twice.
        refs = [r for r, rec in zip(refs, job.refs, strict=True)
                if rec.sha256 != parent_sha]
    p = job.params
    return GenerationRequest(
        model=job.model, prompt=job.prompt, aspect_ratio=p.aspect_ratio,
        resolution=p.resolution, output_format=p.output_format,
        google_search=p.google_search, image_search=p.image_search,
        cache_key=p.cache_key, references=refs, with_text=p.with_text, history=history,
    )


def edit_history(library: Library, job: Job, keep_metadata: bool
                 ) -> tuple[list[Turn], str | None]:
    """The conversation an edit continues: the parent image and its ancestors made by
    the same provider, each as (its prompt and references, the model's answer with its
    thought signatures), oldest first. Also the parent image's SHA-256 (None: no
    history; the parent image, if any, goes as a plain reference)."""
    if job.parent_item is None or job.demo:
        return [], None
    try:
        model = PROVIDERS[job.provider].model(job.model)
    except KeyError:
        return [], None
    if not model.history_turns:
        return [], None
    chain = library.chain(job.parent_item, model.history_turns)
    # Only the newest stretch made by this provider, with files still in place.
    usable: list[Item] = []
    for item in reversed(chain):
        if item.provider != job.provider or item.demo or item.deleted_at is not None:
            break
        usable.append(item)
    usable.reverse()
    if not usable:
        return [], None
    turns: list[Turn] = []
    previous_sha: str | None = None
    for item in usable:
        user = [Part(text=item.prompt)]
        for rec in item.refs:
            if rec.kind == "file" and rec.path and rec.sha256 != previous_sha:
                path = library.ref_file(rec.path)
                if path.is_file():
                    user.append(Part(image=prepare_reference(
                        str(path), keep_metadata=keep_metadata)[0]))
        if not item.path.is_file():
            raise InputError(f"image #{item.id} of the edit chain is missing its file")
        image = prepare_reference(str(item.path))[0]
        answer: list[Part] = []
        for part in item.turn:
            sig = part.get("sig")
            if "text" in part:
                answer.append(Part(text=str(part["text"]), signature=sig))
            elif part.get("image") == item.idx:
                answer.append(Part(image=image, signature=sig))
        if not any(p.image is not None for p in answer):
            answer.append(Part(image=image))
        turns += [Turn("user", tuple(user)), Turn("model", tuple(answer))]
        previous_sha = item.sha256
    return turns, usable[-1].sha256
