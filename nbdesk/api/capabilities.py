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
    search_grounding: bool = False  # Apiframe google_search / image_search
    cache_key: bool = False  # APIFree cache_key
    # Wire field names, one place per provider (see the provider modules).
    fields: dict[str, str] = field(default_factory=dict)


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
            search_grounding=True, fields=_APIFRAME_FIELDS,
        ),
        ModelCaps(
            provider="apiframe", model="nano-banana-pro", label="Nano Banana Pro",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            formats=FORMATS, default_format="jpg", max_refs=14, prompt_max=2000,
            search_grounding=True, fields=_APIFRAME_FIELDS,
        ),
        ModelCaps(
            provider="apiframe", model="nano-banana-2", label="Nano Banana 2",
            aspect_ratios=ALL_RATIOS, default_ratio="1:1",
            resolutions=RESOLUTIONS, default_resolution="1K",
            formats=FORMATS, default_format="jpg", max_refs=14, prompt_max=2000,
            search_grounding=True, fields=_APIFRAME_FIELDS,
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

PROVIDERS: dict[str, ProviderCaps] = {p.id: p for p in (APIFRAME, APIFREE)}

#: The CLI's and the window's name for "Apiframe, against the built-in simulator".
DEMO = "demo"
DEMO_PROVIDER = "apiframe"


def provider(provider_id: str) -> ProviderCaps:
    try:
        return PROVIDERS[provider_id]
    except KeyError:
        names = ", ".join([*PROVIDERS, DEMO])
        raise KeyError(f"unknown provider {provider_id!r} (choose one of: {names})") from None
