"""Opens the pieces every front end needs: paths, settings, keys, library, engine.

The CLI and the window are both thin layers over one ``Runtime``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nbdesk.core.library import Library
from nbdesk.core.paths import PRIVATE_FILE, Paths, private_mkdir
from nbdesk.core.settings import Settings, load_settings
from nbdesk.core.settings_service import SettingsService

if TYPE_CHECKING:  # the engine's modules load when an engine is made, the key store's
    # when the runtime is put together: the window's library grid is up before either
    from nbdesk.core.connector import StartDemo
    from nbdesk.core.engine import Engine, EngineConfig
    from nbdesk.core.secrets import SecretStore


@dataclass
class Runtime:
    paths: Paths
    #: the process's one live settings: read ``settings`` (or subscribe) at use
    settings_service: SettingsService
    secrets: SecretStore
    library: Library
    env: Mapping[str, str] | None = None  # None: os.environ, read at use
    #: how the engines' connectors start the Demo server (the roots give the simulator;
    #: None: no Demo)
    demo: StartDemo | None = None

    @property
    def settings(self) -> Settings:
        """The current settings (change them through ``settings_service.update``)."""
        return self.settings_service.current

    @classmethod
    def open(cls, env: Mapping[str, str] | None = None, *,
             demo: StartDemo | None = None) -> Runtime:
        """Raises LibraryError (user-facing) when the library cannot be opened."""
        paths, settings = locate(env)
        library = Library(paths)
        try:
            return cls.around(paths, settings, library, env, demo=demo)
        except BaseException:
            library.close()
            raise

    @classmethod
    def around(cls, paths: Paths, settings: Settings, library: Library,
               env: Mapping[str, str] | None = None, *,
               demo: StartDemo | None = None) -> Runtime:
        """The runtime of a library opened already (the window opens it first, on its
        own thread, and adds the rest once the grid is drawn)."""
        from nbdesk.core.secrets import SecretStore

        service = SettingsService(settings, paths.settings_file)
        return cls(paths, service, SecretStore(environ=env), library, env, demo)

    def engine_config(self, *, take_over: bool = True) -> EngineConfig:
        """The engine's configuration from the settings as they are now (the engine
        follows later changes itself: it subscribes to the connector's service)."""
        from nbdesk.core.engine import EngineConfig

        s = self.settings
        return EngineConfig(
            concurrency=s.concurrency, poll_interval=s.poll_interval,
            job_timeout=s.job_timeout, take_over=take_over,
        )

    @contextlib.asynccontextmanager
    async def engine(
        self, *, take_over: bool = True, resume: bool = True, start: bool = True,
    ) -> AsyncIterator[Engine]:
        """An engine with its own HTTP client; everything is closed on exit.

        With ``start=False`` the caller finishes the start-up (``start_engine``) when it
        suits it: the window paints first, then makes the client and resumes jobs."""
        from nbdesk.api.http import make_client
        from nbdesk.core.connector import Connector
        from nbdesk.core.engine import Engine

        connector = Connector(
            make_client, self.secrets, self.settings_service, env=self.env,
            demo=self.demo,
        )
        engine = Engine(self.library, connector, self.engine_config(take_over=take_over))
        try:
            if start:
                await start_engine(engine, resume=resume)
            yield engine
        finally:
            try:
                await engine.stop()
            finally:
                await connector.close()

    def close(self) -> None:
        self.library.close()


async def start_engine(engine: Engine, *, resume: bool = True) -> None:
    """Make the engine's HTTP client (off the loop's thread), then start the engine."""
    await engine.connector.open_http()
    await engine.start(resume=resume)


def locate(env: Mapping[str, str] | None = None) -> tuple[Paths, Settings]:
    """Where everything is, and the settings: the library's folder may be one of them
    (unless NBDESK_HOME says otherwise)."""
    paths = Paths.resolve(env)
    settings = load_settings(paths.settings_file)
    if settings.library_dir and "NBDESK_HOME" not in (os.environ if env is None else env):
        paths = Paths.resolve(env, library_dir=_expand(settings.library_dir))
    return paths, settings


def _expand(path: str) -> Path:
    return Path(path).expanduser()


def setup_logging(paths: Paths, *, verbose: bool = False) -> None:
    """Log to a rotating file under the log folder; keys are redacted from every record."""
    from nbdesk.core.secrets import RedactingFilter

    root = logging.getLogger()
    if any(getattr(h, "_nbdesk", False) for h in root.handlers):
        return
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        private_mkdir(paths.log_dir)
        log_file = paths.log_dir / "nbdesk.log"
        # Private whatever the umask (a rotation makes the next one under the process's
        # umask, private from the entry point on: ``private_umask``).
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE))
        if log_file.stat().st_mode & 0o077:
            log_file.chmod(PRIVATE_FILE)
        # (~20 ms with pickle and socket: imported after the window's first screen)
        from logging.handlers import RotatingFileHandler

        handler: logging.Handler = RotatingFileHandler(
            log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler._nbdesk = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
