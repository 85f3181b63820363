"""The process's entry point (the ``nbdesk`` script, ``python -m nbdesk``, main.py).

Opening the desktop app is the common case and the one a person waits for: it goes
straight to ``nbdesk.app`` without loading the command line's modules (argparse, the
engine, asyncio: ~150 ms before the window could paint). Anything else, or anything
unusual (an option), is the command line's (``nbdesk.cli``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn


def gui_files(argv: Sequence[str]) -> list[str] | None:
    """The files to open if ``argv`` asks for the desktop app and nothing else (no
    command, ``gui [FILE...]``, or ``FILE...`` as file managers call an app); else None."""
    from nbdesk.desktop import looks_like_files

    args = list(argv)
    if args and args[0] == "gui":
        args = args[1:]
    elif args and not looks_like_files(args):
        return None
    if any(a.startswith("-") for a in args):
        return None  # --help, -v, ...: the command line parses those
    return args


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """Run nbdesk and exit (after the desktop app: ``leave_after_app``).

    First of all, everything this process creates is made private to its user (files
    0o600, folders 0o700): the database, images, settings and logs."""
    from nbdesk.core.paths import private_umask

    private_umask()
    args = sys.argv[1:] if argv is None else list(argv)
    files = gui_files(args)
    if files is None:
        from nbdesk.cli import entry as cli_entry

        cli_entry(args)
    try:
        from nbdesk.app import main

        code = main(args, files=files)
    except BaseException as exc:  # reported as the command line reports errors
        if isinstance(exc, SystemExit):
            raise
        from nbdesk.cli import exit_code_for

        code = exit_code_for(exc)
    leave_after_app(code)


def leave_after_app(code: int) -> NoReturn:
    """End the process once the desktop app has shut down in order (engine stopped,
    library closed, settings saved), without the interpreter's teardown: a keychain call
    still hanging in its worker thread (a daemon, never joined, so that a dead keychain
    cannot keep the app from quitting) would be unwound inside Qt's C++ code by that
    teardown, which aborts the process ("FATAL: exception not rethrown", SIGABRT, seen
    in CI)."""
    if "logging" in sys.modules:
        import logging

        logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
