"""The simulator's Gemini API: ``POST /v1beta/models/{model}:generateContent``.

One synchronous call: the request is checked as Google checks it (contents and parts,
inline images, ``generationConfig.imageConfig``, tools), and the answer carries the
image inline as base64 PNG. Magic words in the prompt:

* ``#fail``    the model answers with text and no image (a refusal);
* ``#blocked`` the prompt is blocked (``promptFeedback.blockReason``), no candidates.

Nano Banana Pro answers carry thought signatures: ``sim-sig-`` plus a checksummed token,
so the simulator can tell a signature it issued from one it did not. What a request
sent back (the signatures of its model turns) is recorded in the stats.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from nbdesk.api.capabilities import ALL_RATIOS, GEMINI, ModelCaps

REFUSAL_WORD = "#fail"
BLOCK_WORD = "#blocked"
REFUSAL_TEXT = (
    "I can't create that image: the request goes against the content policy (simulated)."
)
ANSWER_TEXT = "Here is the image you asked for (simulated)."
SIGNATURE_PREFIX = "sim-sig-"


class GeminiBadInput(Exception):
    """A request Google would refuse with 400 INVALID_ARGUMENT; the message is Google's."""


def google_error(code: int, status: str, message: str,
                 details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def make_signature() -> str:
    token = secrets.token_hex(12)
    check = hashlib.sha256(token.encode()).hexdigest()[:8]
    return f"{SIGNATURE_PREFIX}{token}{check}"


def signature_is_ours(signature: str) -> bool:
    body = signature.removeprefix(SIGNATURE_PREFIX)
    if body == signature or len(body) != 32:
        return False
    token, check = body[:24], body[24:]
    return hashlib.sha256(token.encode()).hexdigest()[:8] == check


@dataclass
class GeminiRequest:
    caps: ModelCaps
    prompt: str
    aspect_ratio: str | None
    resolution: str | None
    with_text: bool
    google_search: bool
    params: dict[str, Any]  # generationConfig and tools as sent
    ref_sha256s: list[str | None]  # the images of the last user turn
    turns: int  # contents, the new user turn included
    signatures: list[str] = field(default_factory=list)  # sent back in model turns
    history_sha256s: list[str] = field(default_factory=list)  # images of model turns


def _inline_sha(value: Any, where: str) -> str:
    if not isinstance(value, dict):
        raise GeminiBadInput(f"Invalid value at '{where}' (inlineData): expected an object")
    mime, data = value.get("mimeType"), value.get("data")
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise GeminiBadInput(f"{where}.inlineData.mimeType must be an image MIME type")
    if not isinstance(data, str) or not data:
        raise GeminiBadInput(f"{where}.inlineData.data is required")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise GeminiBadInput(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                             "Base64 decoding failed") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.draft("RGB", (256, 256))
            img.load()
    except Exception:
        raise GeminiBadInput(f"{where}: Unable to process input image.") from None
    return hashlib.sha256(raw).hexdigest()


def validate(body: Any, caps: ModelCaps) -> GeminiRequest:
    if not isinstance(body, dict):
        raise GeminiBadInput("Invalid JSON payload received. Expected an object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise GeminiBadInput("* GenerateContentRequest.contents: contents is not specified")
    signatures: list[str] = []
    history: list[str] = []
    last_images: list[str | None] = []
    prompt = ""
    for n, content in enumerate(contents):
        where = f"contents[{n}]"
        if not isinstance(content, dict):
            raise GeminiBadInput(f"Invalid value at '{where}': expected an object")
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise GeminiBadInput(f"Please use a valid role: user, model (got {role!r})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise GeminiBadInput(f"* GenerateContentRequest.{where}.parts: contents.parts must "
                                 "not be empty.")
        texts: list[str] = []
        images: list[str | None] = []
        for k, part in enumerate(parts):
            pwhere = f"{where}.parts[{k}]"
            if not isinstance(part, dict):
                raise GeminiBadInput(f"Invalid value at '{pwhere}': expected an object")
            sig = part.get("thoughtSignature")
            if sig is not None:
                if not isinstance(sig, str) or role != "model":
                    raise GeminiBadInput(f"{pwhere}.thoughtSignature is only valid on model "
                                         "turns, as a string")
                signatures.append(sig)
            if "inlineData" in part:
                digest = _inline_sha(part["inlineData"], pwhere)
                images.append(digest)
                if role == "model":
                    history.append(digest)
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise GeminiBadInput(f"{pwhere}: a part needs text or inlineData")
        if n == len(contents) - 1:
            if role != "user":
                raise GeminiBadInput("The last content must come from the user role.")
            prompt = "\n".join(texts)
            last_images = images
    if not prompt.strip() or len(prompt) > caps.prompt_max:
        raise GeminiBadInput(
            f"the prompt must be between 1 and {caps.prompt_max} characters")
    if len(last_images) > caps.max_refs:
        raise GeminiBadInput(
            f"{caps.model} accepts at most {caps.max_refs} input images (got {len(last_images)})")

    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise GeminiBadInput("generationConfig must be an object")
    modalities = config.get("responseModalities", ["TEXT", "IMAGE"])
    if (not isinstance(modalities, list) or "IMAGE" not in modalities
            or not set(modalities) <= {"TEXT", "IMAGE"}):
        raise GeminiBadInput("responseModalities must include IMAGE (TEXT optional)")
    image_config = config.get("imageConfig") or {}
    if not isinstance(image_config, dict):
        raise GeminiBadInput("imageConfig must be an object")
    ratio = image_config.get("aspectRatio")
    if ratio is not None and ratio not in ALL_RATIOS:
        raise GeminiBadInput(f"aspectRatio must be one of {', '.join(ALL_RATIOS)}")
    size = image_config.get("imageSize")
    if size is not None and (not caps.resolutions or size not in caps.resolutions):
        if not caps.resolutions:
            raise GeminiBadInput(f"imageSize is not supported by {caps.model}")
        raise GeminiBadInput(f"imageSize must be one of {', '.join(caps.resolutions)} "
                             "(uppercase K)")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise GeminiBadInput("tools must be a list")
    search = False
    for tool in tools:
        if not isinstance(tool, dict) or set(tool) != {"googleSearch"}:
            raise GeminiBadInput("the only tool this model takes is googleSearch")
        if not caps.search_grounding:
            raise GeminiBadInput(f"Search grounding is not supported by {caps.model}")
        search = True
    params: dict[str, Any] = {"generationConfig": config}
    if tools:
        params["tools"] = tools
    return GeminiRequest(
        caps=caps, prompt=prompt, aspect_ratio=ratio,
        resolution=size or caps.default_resolution, with_text="TEXT" in modalities,
        google_search=search, params=params, ref_sha256s=last_images, turns=len(contents),
        signatures=signatures, history_sha256s=history,
    )


def answer(req: GeminiRequest, response_id: str, image: bytes) -> dict[str, Any]:
    """The generateContent answer for a valid request (``image`` is a PNG)."""
    lowered = req.prompt.lower()
    usage = {"promptTokenCount": 12 + 258 * len(req.ref_sha256s),
             "candidatesTokenCount": 1290, "totalTokenCount": 1302}
    base: dict[str, Any] = {
        "usageMetadata": usage, "modelVersion": req.caps.model, "responseId": response_id,
    }
    if BLOCK_WORD in lowered:
        return {"promptFeedback": {"blockReason": "OTHER"}, **base}
    pro = bool(req.caps.resolutions)  # Nano Banana Pro thinks and signs its answers
    parts: list[dict[str, Any]] = []
    if pro:
        parts.append({"text": "**Planning the picture** (simulated thought)", "thought": True})
    if REFUSAL_WORD in lowered:
        text: dict[str, Any] = {"text": REFUSAL_TEXT}
        if pro:
            text["thoughtSignature"] = make_signature()
        parts.append(text)
        return {"candidates": [{"content": {"role": "model", "parts": parts},
                                "finishReason": "STOP", "index": 0}], **base}
    if req.with_text:
        text = {"text": ANSWER_TEXT}
        if pro:
            text["thoughtSignature"] = make_signature()
        parts.append(text)
    picture: dict[str, Any] = {
        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()},
    }
    if pro:
        picture["thoughtSignature"] = make_signature()
    parts.append(picture)
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": "STOP", "index": 0}], **base}


def pad_png(png: bytes, size: int) -> bytes:
    """The same picture with ``size`` random bytes in a private ancillary chunk (``npAd``),
    which decoders skip: a big answer without a slow encode."""
    data = os.urandom(size)
    chunk = struct.pack(">I", size) + b"npAd" + data
    chunk += struct.pack(">I", zlib.crc32(b"npAd" + data) & 0xFFFFFFFF)
    end = png.rindex(b"IEND") - 4  # the IEND chunk's length field
    return png[:end] + chunk + png[end:]


def model_caps(model_id: str) -> ModelCaps | None:
    try:
        return GEMINI.model(model_id)
    except KeyError:
        return None
