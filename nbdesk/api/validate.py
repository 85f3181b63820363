"""Input checks against the capability table, run before anything is sent."""

from __future__ import annotations

from nbdesk.api.base import GenerationRequest, InputError
from nbdesk.api.capabilities import ModelCaps, ProviderCaps


def validate_request(caps: ProviderCaps, request: GenerationRequest) -> ModelCaps:
    """Return the model's capabilities, or raise InputError naming what is wrong."""
    try:
        model = caps.model(request.model)
    except KeyError:
        names = ", ".join(m.model for m in caps.models)
        raise InputError(
            f"{caps.label} has no model {request.model!r} (choose one of: {names})"
        ) from None
    prompt = request.prompt
    if not prompt.strip():
        raise InputError("the prompt is empty")
    if len(prompt) > model.prompt_max:
        raise InputError(
            f"the prompt is {len(prompt)} characters; {model.label} on {caps.label} "
            f"takes at most {model.prompt_max}"
        )
    if request.aspect_ratio is not None and request.aspect_ratio not in model.aspect_ratios:
        raise InputError(
            f"{model.label} on {caps.label} has no aspect ratio {request.aspect_ratio!r} "
            f"(choose one of: {', '.join(model.aspect_ratios)})"
        )
    if request.resolution is not None:
        if not model.resolutions:
            raise InputError(f"{model.label} on {caps.label} has no resolution setting")
        if request.resolution not in model.resolutions:
            raise InputError(
                f"{model.label} on {caps.label} has no resolution {request.resolution!r} "
                f"(choose one of: {', '.join(model.resolutions)})"
            )
    if request.output_format is not None:
        if not model.formats:
            raise InputError(f"{model.label} on {caps.label} does not let you pick a format")
        if request.output_format not in model.formats:
            raise InputError(
                f"{model.label} on {caps.label} has no output format {request.output_format!r} "
                f"(choose one of: {', '.join(model.formats)})"
            )
    if request.google_search and not model.search_grounding:
        raise InputError(f"{model.label} on {caps.label} has no search grounding")
    if request.image_search and not model.image_search:
        raise InputError(f"{model.label} on {caps.label} has no image search")
    if request.with_text and not model.text_answers:
        raise InputError(f"{model.label} on {caps.label} answers with images only")
    if request.cache_key and not model.cache_key:
        raise InputError(f"{model.label} on {caps.label} takes no cache key")
    if not model.url_refs:
        for ref in request.references:
            if ref.url.lower().startswith(("http://", "https://")):
                raise InputError(
                    f"reference image {ref.url[:80]!r}: {caps.label} takes reference images "
                    "as local files only (it cannot fetch a URL); save the image and add "
                    "the file instead"
                )
    if request.history and not model.history_turns:
        raise InputError(f"{model.label} on {caps.label} cannot continue from an earlier image")
    if len(request.references) > model.max_refs:
        raise InputError(
            f"{len(request.references)} reference images given; {model.label} on "
            f"{caps.label} takes at most {model.max_refs}"
        )
    return model
