"""The ``nbdesk`` command: the desktop app, and scripts on the same engine and library.

Exit codes: 0 all jobs completed; 1 some job failed; 2 bad input (nothing submitted);
3 auth or configuration problem. Every error is one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from nbdesk.api.base import InputError
from nbdesk.api.capabilities import DEMO, DEMO_PROVIDER, FORMATS, PROVIDERS, RESOLUTIONS
from nbdesk.core.connector import ConfigError
from nbdesk.core.engine import Engine
from nbdesk.core.jobs import (
    MAX_COUNT,
    RETRYABLE,
    ErrorKind,
    Job,
    JobParams,
    JobSpec,
    JobState,
    RetryPlan,
)
from nbdesk.core.library import Item, LibraryError
from nbdesk.core.runtime import Runtime, setup_logging
from nbdesk.core.secrets import KeychainError, RedactingFilter, redact, scrub
from nbdesk.demo import start_demo

log = logging.getLogger("nbdesk.cli")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CONFIG = 0, 1, 2, 3
PROVIDER_CHOICES = [*PROVIDERS, DEMO]


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"nbdesk: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nbdesk",
        description="Desktop studio for Google's Nano Banana image models.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    gui = sub.add_parser("gui", help="open the desktop app (the default)")
    gui.add_argument("files", nargs="*", metavar="IMAGE",
                     help="images to open: a library image in the viewer, any other as a "
                          "reference (also `nbdesk IMAGE...`)")

    g = sub.add_parser("generate", help="generate images and save them in the library")
    g.add_argument("prompt")
    g.add_argument("--provider", choices=PROVIDER_CHOICES, help="default: from settings")
    g.add_argument("--model", help="default: the provider's first model")
    g.add_argument("--aspect-ratio", dest="aspect_ratio")
    g.add_argument("--resolution", choices=RESOLUTIONS)
    g.add_argument("--format", dest="output_format", choices=FORMATS)
    g.add_argument("--google-search", action="store_true",
                   help="Google search grounding (Apiframe, Gemini's Nano Banana Pro)")
    g.add_argument("--image-search", action="store_true", help="Apiframe image search")
    g.add_argument("--cache-key", help="APIFree cache key")
    g.add_argument("--with-text", action="store_true",
                   help="Gemini: the answer may carry text beside the image")
    g.add_argument("--edit", type=int, metavar="ITEM_ID",
                   help="continue from a library image (its id: `nbdesk search --json`); "
                        "with Gemini the edit keeps the conversation's context")
    g.add_argument("--ref", action="append", default=[], metavar="PATH_OR_URL",
                   help="reference image (repeatable)")
    g.add_argument("--count", type=int, default=1,
                   help=f"number of images (one paid job each; at most {MAX_COUNT})")
    g.add_argument("--no-wait", action="store_true",
                   help="return once submitted; `nbdesk resume` or the app finishes the jobs")
    g.add_argument("--json", action="store_true", help="one JSON object per job per line")

    j = sub.add_parser("jobs", help="every job and its state")
    j.add_argument("--json", action="store_true")

    r = sub.add_parser("resume", help="finish every unfinished job (never resubmits one)")
    r.add_argument("--json", action="store_true")

    rt = sub.add_parser(
        "retry", help="run failed, interrupted or cancelled jobs again (says first which "
                      "ones cost money)",
        description="A job the provider already has (a remote id), or whose paid answer "
                    "is kept, is continued: polled, downloaded and stored, with no new "
                    "payment. A job that never reached the provider is sent now (its first "
                    "payment). A job the provider may already have billed (interrupted "
                    "while its submit was on the wire, or failed by the provider) is a new "
                    "paid submission: it is retried only with --yes (or after a yes on a "
                    "terminal). Each job's line on stderr says which, before anything is "
                    "sent.")
    rt.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    rt.add_argument("--yes", action="store_true",
                    help="agree to new paid submissions of jobs that may be billed already")
    rt.add_argument("--json", action="store_true",
                    help="one JSON object per job per line, with its retry plan")

    c = sub.add_parser("cancel", help="cancel jobs")
    c.add_argument("job_ids", nargs="+", metavar="JOB_ID")

    s = sub.add_parser("search", help="full-text search of the library")
    s.add_argument("text")
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=int, default=50)

    k = sub.add_parser("keys", help="API keys in the OS keychain")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    ks = ksub.add_parser("set", help="store a key (read from stdin)")
    ks.add_argument("provider", choices=list(PROVIDERS))
    kd = ksub.add_parser("delete", help="remove a key")
    kd.add_argument("provider", choices=list(PROVIDERS))
    ksub.add_parser("list", help="which providers have a key, and where it comes from")

    d = sub.add_parser("install-desktop",
                       help="add nbdesk to this user's app menu, with its icon and "
                            "\"Open with\" for images (Linux)")
    d.add_argument("--exec", dest="exec_path", metavar="PATH",
                   help="the program the launcher runs (default: this nbdesk)")
    sub.add_parser("uninstall-desktop", help="remove what install-desktop added")

    sm = sub.add_parser("sim", help="run the loopback simulator of the provider APIs "
                                    "(Apiframe, APIFree, Gemini)")
    sm.add_argument("--port", type=int, default=8765)
    sm.add_argument("--fault-rate", type=float, default=0.0)
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--job-seconds", type=float, default=3.0)
    return p


# ---------------------------------------------------------------------------- output


def job_json(job: Job, engine_or_rt: Engine | Runtime) -> dict[str, Any]:
    library = engine_or_rt.library
    images = [str(i.path) for i in library.items_for_job(job.id)]
    return {
        "id": job.id,
        "provider": job.provider_label if job.demo else job.provider,
        "model": job.model,
        "status": job.state.value,
        "remote_id": job.remote_id,
        "prompt": job.prompt,
        "images": images,
        "cost": job.cost,
        "error": scrub(job.error) if job.error else None,
    }


def item_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.id, "job_id": item.job_id, "path": str(item.path), "prompt": item.prompt,
        "provider": item.provider, "model": item.model, "width": item.width,
        "height": item.height, "format": item.format, "cost": item.cost,
        "params": item.params, "created_at": item.created_at, "favourite": item.favourite,
        "parent_item": item.parent_item, "signatures": len(item.signatures),
        "text": item.answer_text or None,
    }


def _print_jobs(jobs: Sequence[Job], rt: Runtime, as_json: bool,
                extra: dict[str, dict[str, Any]] | None = None) -> None:
    """One line per job on stdout; with ``as_json`` also one line on stderr per job that
    failed (every error is a line on stderr, JSON or not)."""
    for job in jobs:
        if as_json:
            record = {**job_json(job, rt), **(extra or {}).get(job.id, {})}
            print(json.dumps(record, ensure_ascii=False), flush=True)
            if job.state in (JobState.FAILED, JobState.INTERRUPTED) and job.error:
                _error(f"job {job.id[:8]} {job.state.value}: {job.error}")
            continue
        line = f"{job.id[:8]}  {job.state.value:<11} {job.provider_label:<15} {job.model:<24}"
        line += f" {_short(job.prompt, 40)}"
        if job.state is JobState.COMPLETED:
            paths = [str(i.path) for i in rt.library.items_for_job(job.id)]
            line += "  -> " + ", ".join(paths)
        elif job.error:
            line += f"  ({job.error})"
        print(scrub(line), flush=True)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _exit_code(jobs: Sequence[Job]) -> int:
    if any(j.error_kind in (ErrorKind.AUTH, ErrorKind.CONFIG) for j in jobs):
        return EXIT_CONFIG
    if all(j.state is JobState.COMPLETED for j in jobs):
        return EXIT_OK
    return EXIT_FAILED


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


# ---------------------------------------------------------------------------- commands


def _spec(args: argparse.Namespace, rt: Runtime) -> JobSpec:
    parent: Item | None = None
    if args.edit is not None:
        try:
            parent = rt.library.item(args.edit)
        except KeyError:
            _fail(f"there is no image #{args.edit} in the library (see `nbdesk search`)",
                  EXIT_BAD_INPUT)
        if parent.deleted_at is not None:
            _fail(f"image #{args.edit} is in the trash; restore it to edit it", EXIT_BAD_INPUT)
    provider = args.provider or (
        (DEMO if parent.demo else parent.provider) if parent is not None else None
    ) or rt.settings.default_provider
    demo = provider == DEMO
    if demo:
        provider = DEMO_PROVIDER
    caps = PROVIDERS.get(provider)
    if caps is None:
        _fail(f"unknown provider {provider!r}", EXIT_BAD_INPUT)
    same = parent is not None and parent.provider == provider and any(
        m.model == parent.model for m in caps.models)
    model = (args.model or (parent.model if same and parent else None)
             or rt.settings.default_models.get(provider) or caps.default_model.model)
    params = JobParams(
        aspect_ratio=args.aspect_ratio, resolution=args.resolution,
        output_format=args.output_format, google_search=args.google_search,
        image_search=args.image_search, cache_key=args.cache_key, with_text=args.with_text,
    )
    refs = tuple(args.ref)
    if parent is not None:
        refs = (str(parent.path), *refs)  # the edited image first, as the window does
    return JobSpec(provider=provider, model=model, prompt=args.prompt, params=params,
                   refs=refs, demo=demo, parent_item=parent.id if parent else None)


async def _generate(args: argparse.Namespace, rt: Runtime) -> int:
    spec = _spec(args, rt)
    async with rt.engine(take_over=False, resume=False) as engine:
        jobs = await engine.enqueue(spec, args.count)
        ids = [j.id for j in jobs]
        if not args.json:
            for job in jobs:
                print(f"{job.id[:8]}  queued on {job.provider_label} ({job.model})",
                      file=sys.stderr, flush=True)
        if args.no_wait:
            done = await _wait_submitted(engine, ids)
        else:
            done = await engine.wait(ids)
    _print_jobs(done, rt, args.json)
    if args.no_wait:
        failed = [j for j in done if j.state in (JobState.FAILED, JobState.INTERRUPTED)]
        return _exit_code(failed) if failed else EXIT_OK
    return _exit_code(done)


async def _wait_submitted(engine: Engine, ids: list[str]) -> list[Job]:
    """Until each job has its remote id written (or has finished)."""
    pending = set(ids)
    done = asyncio.Event()

    def check(job: Job) -> None:
        if job.id in pending and (job.remote_id or job.state.finished):
            pending.discard(job.id)
        if not pending:
            done.set()

    engine.subscribe(check)
    for job_id in list(pending):
        check(await engine.db(engine.library.job, job_id))
    if pending:
        waiter = asyncio.create_task(done.wait())
        workers = asyncio.create_task(engine.wait(ids))
        await asyncio.wait({waiter, workers}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        workers.cancel()
    return [await engine.db(engine.library.job, i) for i in ids]


async def _resume(args: argparse.Namespace, rt: Runtime) -> int:
    async with rt.engine(take_over=False, resume=False) as engine:
        # Every provider the unfinished jobs need must be usable (a key, a valid base URL)
        # before any job is touched: otherwise resume would end with nothing done (jobs
        # left "waiting for a key") instead of one clear exit-3 line naming the fix.
        waiting = await engine.db(rt.library.claimable, engine.owner)
        needed = {(j.provider, j.demo) for j in (rt.library.job(i) for i in waiting)}
        for provider, demo in sorted(needed):
            try:
                await engine.connector.provider(provider, demo)
            except ConfigError as exc:
                _fail(f"{exc} ({len(waiting)} unfinished job(s) left as they are)",
                      EXIT_CONFIG)
        ids = await engine.resume_all()
        others = [j for j in rt.library.jobs(states=[s for s in JobState if s.active])
                  if j.id not in ids]
        if not args.json:
            print(f"resuming {len(ids)} job(s)", file=sys.stderr, flush=True)
            for job in others:
                print(f"{job.id[:8]}  skipped: another nbdesk process is working on it",
                      file=sys.stderr)
        done = await engine.wait(ids)
    _print_jobs(done, rt, args.json)
    return _exit_code(done) if done else EXIT_OK


def _find(rt: Runtime, job_id: str) -> Job:
    try:
        return rt.library.find_job(job_id)
    except KeyError:
        _fail(f"no job {job_id!r} (see `nbdesk jobs`)", EXIT_BAD_INPUT)


def _targets(rt: Runtime, job_ids: Sequence[str]) -> list[Job]:
    """The named jobs, each once, in the order given (unknown ids: bad input)."""
    found: dict[str, Job] = {}
    for job_id in job_ids:
        job = _find(rt, job_id)
        found.setdefault(job.id, job)
    return list(found.values())


def _plan_line(job: Job, plan: RetryPlan) -> str:
    """What a retry of ``job`` means for the user's money, as the CLI says it."""
    if plan is RetryPlan.CONTINUE:
        if job.remote_id and not PROVIDERS[job.provider].synchronous:
            return f"continues {job.remote_id} at the provider (no new payment)"
        return "stores the answer already received (no new payment)"
    if plan is RetryPlan.SUBMIT:
        return "a new paid submission (it never reached the provider: its first payment)"
    return ("a new paid submission; the provider may already have billed the first one "
            "(it may be paid twice)")


def _confirm(count: int) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"Retry {count} job(s) as new paid submissions, which may be paid twice? "
                   "[y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _retry(args: argparse.Namespace, rt: Runtime) -> int:
    targets = _targets(rt, args.job_ids)
    # Check the whole batch before resubmitting any of it: exit 2 promises that nothing
    # was sent, and a job retried before a later one was refused would otherwise be
    # left half-started (queued or submitting) when the engine stops.
    for job in targets:
        if job.state not in RETRYABLE:
            _fail(f"job {job.id[:8]} is {job.state.value}; only failed, interrupted or "
                  "cancelled jobs can be retried (nothing was retried)", EXIT_BAD_INPUT)
    # What each retry costs, said before anything is done (the one rule: retry_plan).
    plans = {job.id: Engine.retry_plan(job) for job in targets}
    for job in targets:
        print(f"{job.id[:8]}  retry: {_plan_line(job, plans[job.id])}",
              file=sys.stderr, flush=True)
    risky = [j for j in targets if plans[j.id] is RetryPlan.RESUBMIT]
    if risky and not args.yes and not _confirm(len(risky)):
        ids = " ".join(j.id[:8] for j in risky)
        _fail(f"{len(risky)} job(s) ({ids}) may already have been billed; retrying makes a "
              "new paid submission: run again with --yes to agree (nothing was retried)",
              EXIT_BAD_INPUT)
    async with rt.engine(take_over=False, resume=False) as engine:
        for job in targets:
            await engine.connector.provider(job.provider, job.demo)
        started: list[str] = []
        refused: InputError | None = None
        for job in targets:
            try:
                await engine.retry(
                    job.id, resubmit_ok=plans[job.id] is RetryPlan.RESUBMIT)
            except InputError as exc:  # lost a race (another process took the job meanwhile)
                refused = exc
                break
            started.append(job.id)
        # Jobs already resubmitted are seen through, never abandoned half-started.
        done = await engine.wait(started)
    extra = {i: {"retry": {"plan": plans[i].value, "paid": plans[i].paid}} for i in plans}
    _print_jobs(done, rt, args.json, extra)
    if refused is not None:
        raise refused
    return _exit_code(done)


async def _cancel(args: argparse.Namespace, rt: Runtime) -> int:
    targets = _targets(rt, args.job_ids)
    async with rt.engine(take_over=False, resume=False) as engine:
        for job in targets:
            job = await engine.cancel(job.id)
            state = "cancel requested" if job.cancel_requested else job.state.value
            print(f"{job.id[:8]}  {state}", flush=True)
    return EXIT_OK


def _search(args: argparse.Namespace, rt: Runtime) -> int:
    items = rt.library.items(text=args.text, limit=args.limit)
    for item in items:
        if args.json:
            print(json.dumps(item_json(item), ensure_ascii=False))
        else:
            print(f"{item.id:>6}  {item.width}x{item.height} {item.format:<5} "
                  f"{item.provider}/{item.model}  {_short(item.prompt, 50)}  {item.path}")
    if not items and not args.json:
        print("no matches", file=sys.stderr)
    return EXIT_OK


def _keys(args: argparse.Namespace, rt: Runtime) -> int:
    store = rt.secrets
    if args.keys_command == "list":
        backend = store.backend_name()
        print(f"keychain: {backend}")
        for pid, caps in PROVIDERS.items():
            value = os.environ.get(caps.env_key)
            if value is not None and not value.strip():
                # Not the keychain's fault: the variable is there, with nothing in it.
                print(f"{pid:<10} {caps.env_key} is set but empty (unset it to use the "
                      "keychain, or put the key in it)")
                continue
            try:
                found = store.lookup(pid)
            except KeychainError:
                # Listing goes on: the other providers may have their key in the environment.
                print(f"{pid:<10} not set (no {caps.env_key}, and the keychain cannot be read)")
                continue
            where = {"env": f"from {caps.env_key}", "keychain": "in the keychain",
                     "none": "not set"}[found.source]
            print(f"{pid:<10} {where}")
        return EXIT_OK
    if args.keys_command == "delete":
        store.delete(args.provider)
        print(f"removed the {PROVIDERS[args.provider].label} key from {store.backend_name()}")
        return EXIT_OK
    caps = PROVIDERS[args.provider]
    prompt = f"{caps.label} API key: "
    key = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline()
    try:
        store.set(args.provider, key.strip())
    except InputError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    print(f"stored the {caps.label} key in {store.backend_name()}")
    return EXIT_OK


def _sim(args: argparse.Namespace) -> int:
    from nbdesk.sim import Faults, SimConfig, run_standalone

    try:
        config = SimConfig(job_seconds=args.job_seconds,
                           faults=Faults(rate=args.fault_rate, seed=args.seed))
    except ValueError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    try:
        run_standalone(args.port, config)
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", EXIT_CONFIG)
    return EXIT_OK


def _gui(argv: Sequence[str], files: Sequence[str]) -> int:
    from nbdesk.app import main as app_main

    global _left_the_app
    code = app_main(list(argv), files=files)
    _left_the_app = True
    return code


#: Set once the desktop app has run and shut down (see ``entry``).
_left_the_app = False


def _desktop(args: argparse.Namespace) -> int:
    from nbdesk import desktop

    if not sys.platform.startswith("linux"):
        _fail("install-desktop is for Linux desktops; see the README for macOS and Windows",
              EXIT_BAD_INPUT)
    try:
        if args.command == "uninstall-desktop":
            removed = desktop.uninstall_desktop()
            print(f"removed {len(removed)} files of the nbdesk launcher")
            return EXIT_OK
        command = [args.exec_path] if args.exec_path else desktop.launch_command()
        done = desktop.install_desktop(command=command)
    except OSError as exc:
        _fail(f"cannot install the launcher: {exc}", EXIT_CONFIG)
    print(desktop.describe(done, command))
    return EXIT_OK


def run(argv: Sequence[str]) -> int:
    from nbdesk.desktop import looks_like_files

    if looks_like_files(argv):  # `nbdesk photo.png`: how file managers open a file
        argv = ["gui", *argv]
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command or "gui"
    if command == "gui":
        return _gui(argv, getattr(args, "files", []))
    if command in ("install-desktop", "uninstall-desktop"):
        return _desktop(args)
    if command == "sim":
        return _sim(args)
    rt = Runtime.open(demo=start_demo)  # Demo: the simulator, at first use
    setup_logging(rt.paths, verbose=args.verbose)
    try:
        if command == "keys":
            return _keys(args, rt)
        if command == "search":
            return _search(args, rt)
        if command == "jobs":
            _print_jobs(rt.library.jobs(), rt, args.json)
            return EXIT_OK
        handler = {"generate": _generate, "resume": _resume, "retry": _retry,
                   "cancel": _cancel}[command]
        return asyncio.run(handler(args, rt))
    finally:
        rt.close()


def _error(message: str) -> None:
    """The one line on stderr; any known key is masked, whatever produced the text."""
    line = " ".join(redact(message, RedactingFilter.known()).split())
    print(f"nbdesk: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except BaseException as exc:  # (SystemExit passes through: argparse's --help, usage)
        if isinstance(exc, SystemExit):
            raise
        return exit_code_for(exc)


def exit_code_for(exc: BaseException) -> int:
    """Report an error that ended a command (one line on stderr) and give its exit
    code; also used for the desktop app's start (``nbdesk.launcher``)."""
    if isinstance(exc, CliError):
        _error(str(exc))
        return exc.code
    if isinstance(exc, InputError):
        _error(str(exc))
        return EXIT_BAD_INPUT
    if isinstance(exc, ConfigError | KeychainError | LibraryError):
        _error(str(exc))
        return EXIT_CONFIG
    if isinstance(exc, KeyboardInterrupt):
        print("nbdesk: interrupted; unfinished jobs continue with `nbdesk resume`",
              file=sys.stderr)
        return 130
    if not isinstance(exc, Exception):
        raise exc
    # a bug: one line for the user, the traceback in the log
    log.error("unexpected error", exc_info=exc)
    _error(f"internal error: {type(exc).__name__}: {exc} (details in the log)")
    return 70


if __name__ == "__main__":
    sys.exit(main())


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """``main``, then exit (``nbdesk.launcher.entry`` is the process's entry point: it
    opens the desktop app itself and hands every other command line to this)."""
    code = main(argv)
    if _left_the_app:  # (`nbdesk gui -v`: the app ran from here)
        from nbdesk.launcher import leave_after_app

        leave_after_app(code)
    sys.exit(code)
