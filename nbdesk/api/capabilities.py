"""The declarative capability table: what each provider and model accepts.

The CLI, the engine and the window all read this one table; nothing else in the
code base hard-codes a ratio, a resolution, a limit or a wire field name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_RATIOS: tuple[str, ...] = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
)
RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")
FORMATS: tuple[str, ...] = ("jpg", "png", "webp")


@dataclass(frozen=True)
class ModelCaps:
    """What one model of one provider accepts, and how each field is named on the wire."""

    provider: str
    model: str
    label: str
    aspect_ratios: tuple[str, ...]
    default_ratio: str
    resolutions: tuple[str, ...] = ()  # empty: the model has no resolution setting
    default_resolution: str | None = None
    formats: tuple[str, ...] = ()  # empty: the provider picks the format
    default_format: str | None = None
    max_refs: int = 0
    prompt_max: int = 2000
    prompt_min: int = 1
    search_grounding: bool = False  # Google Search grounding (Apiframe google_search, Gemini)
    image_search: bool = False  # Apiframe image_search
    cache_key: bool = False  # APIFree cache_key
    text_answers: bool = False  # may answer text beside the image, on request (Gemini)
    url_refs: bool = True  # takes http(s) URLs as references (else local files only)
    #: conversational editing: how many earlier (prompt, image) turns an edit sends back
    history_turns: int = 0
    #: the most images one request may bring back; a result listing more is a protocol
    #: error and none beyond this is stored. One prompt makes one image (the docs show
    #: one); Apiframe's result "holds the output URL(s)" and Gemini may interleave an
    #: image or two with text, so a few, never hundreds.
    max_images: int = 4
    #: estimated price per image by resolution (None: the model's only size), where the
    #: provider reports no cost itself
    price: dict[str | None, float] = field(default_factory=dict)
    # Wire field names, one place per provider (see the provider modules).
    fields: dict[str, str] = field(default_factory=dict)

    def price_per_image(self, resolution: str | None) -> float | None:
        """The estimated price of one image at ``resolution`` (ignored for a model with
        no resolution setting); None where the provider reports the cost itself."""
        return self.price.get(resolution if self.resolutions else None)


@dataclass(frozen=True)
class ProviderCaps:
    id: str
    label: str
    base_url: str
    env_key: str
    env_base_url: str
    idempotent_submit: bool
    models: tuple[ModelCaps, ...]
    poll_interval: float = 2.0  # seconds, per the provider's docs
    max_download_bytes: int = 100 * 1024 * 1024
    #: one call returns the image inline (no remote job to poll or download)
    synchronous: bool = False
    #: the largest API answer read (synchronous answers carry the images, base64)
    max_answer_bytes: int = 2 * 2**20
    #: the largest request body the provider takes (inline references), 0: no limit
    max_request_bytes: int = 0
    #: seconds one synchronous call may take before it counts as unanswered
    call_timeout: float = 60.0

    def model(self, model_id: str) -> ModelCaps:
        for m in self.models:
            if m.model == model_id:
                return m
        raise KeyError(model_id)

    @property
    def default_model(self) -> ModelCaps:
        return self.models[0]


_APIFRAME_FIELDS = {
    "params": "nanoBananaParams",
    "aspect_ratio": "aspect_ratio",
    "resolution": "resolution",
    "output_format": "output_format",
    "refs": "image_input",
    "google_search": "google_search",
    "image_search": "image_search",
}

APIFRAME = ProviderCaps(
    id="apiframe",
    label="Apiframe",
    base_url="https://api.apiframe.ai",
    env_key="NBDESK_APIFRAME_API_KEY",
    env_base_url="NBDESK_APIFRAME_BASE_URL",
    idempotent_submit=True,
    poll_interval=2.5,
    models=(
        ModelCaps(
            provider="apiframe", model="nano-banana", label="Nano Banana",
            # The page advertises five ratios "including 1:1, 3:4, 4:3".
            aspect_ratios=("1:1", "3:4", "4:3", "9:16", "16:9"), default_ratio="1:1",
            formats=FORMATS, default_format="jpg", max_refs=3, prompt_max=2000,
            search_grounding=True, image_search=True, fields=_APIFRAME_FIELDS,
        ),
        ModelCaps(
            provider="apiframe", model="nano-banana-pro", label="Nano Banana Pro",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            formats=FORMATS, default_format="jpg", max_refs=14, prompt_max=2000,
            search_grounding=True, image_search=True, fields=_APIFRAME_FIELDS,
        ),
        ModelCaps(
            provider="apiframe", model="nano-banana-2", label="Nano Banana 2",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            formats=FORMATS, default_format="jpg", max_refs=14, prompt_max=2000,
            search_grounding=True, image_search=True, fields=_APIFRAME_FIELDS,
        ),
    ),
)

APIFREE = ProviderCaps(
    id="apifree",
    label="APIFree",
    base_url="https://api.apifree.ai",
    env_key="NBDESK_APIFREE_API_KEY",
    env_base_url="NBDESK_APIFREE_BASE_URL",
    idempotent_submit=False,
    poll_interval=2.0,
    models=(
        ModelCaps(
            provider="apifree", model="google/nano-banana-pro", label="Nano Banana Pro",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            max_refs=14, prompt_max=20000, cache_key=True,
            fields={
                "aspect_ratio": "aspect_ratio",
                "resolution": "resolution",
                "refs": "image_urls",
                "cache_key": "cache_key",
            },
        ),
    ),
)

_GEMINI_FIELDS = {
    "config": "generationConfig",
    "modalities": "responseModalities",
    "image_config": "imageConfig",
    "aspect_ratio": "aspectRatio",
    "resolution": "imageSize",
    "tools": "tools",
    "google_search": "googleSearch",
}

GEMINI = ProviderCaps(
    id="gemini",
    label="Gemini",
    base_url="https://generativelanguage.googleapis.com",
    env_key="NBDESK_GEMINI_API_KEY",
    env_base_url="NBDESK_GEMINI_BASE_URL",
    idempotent_submit=False,
    synchronous=True,
    # A 4K PNG is tens of MB, base64 a third more; a few of them in one answer.
    max_answer_bytes=200 * 2**20,
    # The Gemini API takes inline data up to 20 MB per request.
    max_request_bytes=20 * 10**6,
    call_timeout=300.0,
    models=(
        ModelCaps(
            provider="gemini", model="gemini-2.5-flash-image", label="Nano Banana",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            # Best with up to 3 input images, per Google's docs.
            max_refs=3, prompt_max=20000, text_answers=True, url_refs=False,
            history_turns=4, price={None: 0.039}, fields=_GEMINI_FIELDS,
        ),
        ModelCaps(
            provider="gemini", model="gemini-3-pro-image-preview", label="Nano Banana Pro",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            max_refs=14, prompt_max=20000, search_grounding=True, text_answers=True,
            url_refs=False, history_turns=4,
            price={"1K": 0.134, "2K": 0.134, "4K": 0.24}, fields=_GEMINI_FIELDS,
        ),
    ),
)

PROVIDERS: dict[str, ProviderCaps] = {p.id: p for p in (APIFRAME, APIFREE, GEMINI)}

#: The CLI's and the window's name for "Apiframe, against the built-in simulator".
DEMO = "demo"
DEMO_PROVIDER = "apiframe"


def provider(provider_id: str) -> ProviderCaps:
    try:
        return PROVIDERS[provider_id]
    except KeyError:
        names = ", ".join([*PROVIDERS, DEMO])
        raise KeyError(f"unknown provider {provider_id!r} (choose one of: {names})") from None
