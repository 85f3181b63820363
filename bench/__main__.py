"""``uv run python -m bench``: build the data, run every scenario, print the table.

Each repetition of a scenario whose outcome depends on process state (start-up, scroll,
warm reopen, queue) runs in a fresh interpreter; every figure is compared with a baseline
measured in the same run (a bare PySide6 window, raw decoding, plain httpx streaming, the
bare FTS5 index, the idle stall floor of the machine). Medians go to the table and to
bench/out/results.json; every repetition's raw numbers go there too.

Options: ``--quick`` (fewer repetitions: a smoke run), ``--only NAME[,NAME]`` (repeatable),
``--reps N`` (override the repetitions of every scenario), ``--list``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import datasets
from bench.common import OUT, child_env, medians, run_child

SCENARIOS = ("startup", "thumbnails", "scroll", "reopen", "queue", "download", "search")
REPS = {  # full, quick
    "startup": (9, 3),
    "thumbnails": (3, 1),
    "scroll": (3, 1),
    "reopen": (7, 3),
    "queue": (3, 1),
    "download": (9, 3),
    "search": (9, 5),
}


@dataclass
class Row:
    scenario: str
    measure: str
    value: float
    unit: str
    target: str
    ok: bool | None
    baseline: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- scenarios


def floor_runs(n: int) -> list[dict[str, Any]]:
    return [run_child("bench.floor", ["2"], timeout=60) for _ in range(n)]


def sc_startup(reps: int) -> tuple[list[Row], dict[str, Any]]:
    env = child_env({"NBDESK_HOME": str(datasets.lib10k())})

    def one(kind: str) -> dict[str, Any]:
        started: list[float] = []
        args = ["bare"] if kind == "bare" else ["app"]
        res = run_child("bench.startup", args, env=None if kind == "bare" else env,
                        started=started, timeout=120)
        if "paint_mono" not in res:
            raise RuntimeError(f"startup {kind}: {res}")
        out = {"ms": (res["paint_mono"] - started[0]) * 1000,
               "interp_ms": (res["interp_mono"] - started[0]) * 1000}
        for key in ("drawn", "attached"):  # the app's later steps, for context
            if key in res:
                out[f"{key}_ms"] = (res[key] - started[0]) * 1000
        return out

    one("bare")
    one("app")  # warm-up: bytecode and page caches
    runs = []
    for r in range(reps):
        pair = {}
        for kind in (("bare", "app") if r % 2 == 0 else ("app", "bare")):
            pair[kind] = one(kind)
        app = pair["app"]
        runs.append({"bare_ms": round(pair["bare"]["ms"], 1),
                     "app_ms": round(app["ms"], 1),
                     "interp_ms": round(app["interp_ms"], 1),
                     "ratio": round(app["ms"] / pair["bare"]["ms"], 3),
                     **{k: round(app[k], 1) for k in ("drawn_ms", "attached_ms") if k in app}})
    m = medians(runs)
    rows = [Row("start-up", "process start -> main window (frame) painted, app / bare",
                m["ratio"], "x", "<= 1.3x", m["ratio"] <= 1.3,
                f"bare {m['bare_ms']:.0f} ms; app {m['app_ms']:.0f} ms; library drawn at "
                f"{m.get('drawn_ms', 0):.0f} ms, all panels at {m.get('attached_ms', 0):.0f} ms",
                m)]
    return rows, {"runs": runs, "median": m}


def sc_thumbnails(reps: int) -> tuple[list[Row], dict[str, Any]]:
    n = len(datasets.thumbs2k())
    runs = [run_child("bench.thumbs", [str(n), "raw" if r % 2 == 0 else "cache"], timeout=900)
            for r in range(reps)]
    m = medians(runs)
    rows = [Row("thumbnails", f"cold generation of {n} images, ThumbnailCache / raw decode",
                m["ratio"], "x", ">= 0.8x", m["ratio"] >= 0.8,
                f"raw {m['raw_ips']:.0f}/s; cache {m['cache_ips']:.0f}/s; "
                f"{int(m['threads'])} thread(s)", m)]
    return rows, {"runs": runs, "median": m}


def sc_scroll(reps: int) -> tuple[list[Row], dict[str, Any]]:
    home = str(datasets.lib10k())
    runs = []
    floors = []
    for _ in range(reps):
        runs.append(run_child("bench.scroll", [home, "cold"], timeout=600))
        floors += floor_runs(1)
    m = medians(runs)
    f = medians(floors)
    rows = [
        Row("library scroll", "longest GUI-thread stall, 10,000 items end to end (cold cache)",
            m["max_stall_ms"], "ms", "<= 50 ms", m["max_stall_ms"] <= 50,
            f"idle floor {f['floor_max_stall_ms']:.1f} ms; p99 {m['p99_stall_ms']:.1f} ms", m),
        Row("library scroll", "RSS after the scroll", m["rss_mb"], "MB", "<= 300 MB",
            m["rss_mb"] <= 300, f"bare window {f['floor_rss_mb']:.0f} MB", m),
    ]
    return rows, {"runs": runs, "floor": floors, "median": m}


def sc_reopen(reps: int) -> tuple[list[Row], dict[str, Any]]:
    env = child_env({"NBDESK_HOME": str(datasets.lib10k())})

    def one() -> dict[str, Any]:
        res = run_child("bench.startup", ["app", "drawn"], env=env, timeout=120)
        if res.get("timeout") or "drawn" not in res:
            raise RuntimeError(f"reopen: the first screen was never drawn: {res}")
        return {"drawn_ms": round((res["after"] - res["show"]) * 1000, 1),
                "window_paint_ms": round((res["paint"] - res["show"]) * 1000, 1),
                "visible_cells": res["visible_cells"]}

    one()  # primes the thumbnail cache of the first screen (and the page cache)
    runs = [one() for _ in range(reps)]
    m = medians(runs)
    rows = [Row("warm reopen", "window shown -> first screen with all thumbnails drawn",
                m["drawn_ms"], "ms", "<= 150 ms", m["drawn_ms"] <= 150,
                f"window itself painted at {m['window_paint_ms']:.0f} ms; "
                f"{int(m['visible_cells'])} cells", m)]
    return rows, {"runs": runs, "median": m}


def sc_queue(reps: int) -> tuple[list[Row], dict[str, Any]]:
    runs, apis = [], []
    for _ in range(reps):
        runs.append(run_child("bench.queue", ["app"], timeout=400))
        apis.append(run_child("bench.queue", ["api"], timeout=400))
    for r, api in zip(runs, apis, strict=True):
        r.setdefault("jobs_s", r.get("wall_s", 0.0))
        r["cpu_ratio"] = round(r["cpu_per_job_ms"] / api["api_cpu_per_job_ms"], 2)
    m = medians(runs)
    a = medians(apis)
    capped = sum(1 for r in runs if r.get("capped"))
    done = (f"{int(m['completed'])}/200 completed in {m['jobs_s']:.0f} s"
            + (f" (stopped at the {int(m['wall_s'])} s cap in {capped}/{len(runs)} runs)"
               if capped else ""))
    rows = [
        Row("queue load", "longest GUI-thread stall, 200 jobs in flight", m["max_stall_ms"],
            "ms", "<= 50 ms", m["max_stall_ms"] <= 50,
            f"idle {m['idle_max_stall_ms']:.1f} ms; {done}", m),
        Row("queue load", "p99 GUI-thread stall", m["p99_stall_ms"], "ms", "<= 16 ms",
            m["p99_stall_ms"] <= 16, f"idle p99 {m['idle_p99_stall_ms']:.1f} ms", m),
        Row("queue load", "process CPU time per job", m["cpu_per_job_ms"], "ms", "(report)",
            None, f"provider client alone {a['api_cpu_per_job_ms']:.1f} ms "
                  f"({m['cpu_ratio']:.1f}x)", m),
    ]
    return rows, {"runs": runs, "api": apis, "median": m, "api_median": a}


def sc_download(reps: int) -> tuple[list[Row], dict[str, Any]]:
    q = run_child("bench.download", ["qasync", str(reps)], timeout=600)
    a = run_child("bench.download", ["asyncio", str(reps)], timeout=600)
    rows = [
        Row("download", f"{q['bytes_mb']:.0f} MB 4K PNG stored via the engine path / httpx "
                        "to /dev/null (qasync loop)", q["ratio"], "x", ">= 0.7x",
            q["ratio"] >= 0.7,
            f"httpx {q['base_mbps']:.0f} MB/s; engine {q['app_mbps']:.0f} MB/s "
            f"(download {q['download_s'] * 1000:.0f} + probe {q['probe_s'] * 1000:.0f} + "
            f"place {q['place_s'] * 1000:.0f} ms)", q),
        Row("download", "the same on plain asyncio (CLI)", a["ratio"], "x", ">= 0.7x",
            a["ratio"] >= 0.7,
            f"httpx {a['base_mbps']:.0f} MB/s; engine {a['app_mbps']:.0f} MB/s "
            f"(download {a['download_s'] * 1000:.0f} + probe {a['probe_s'] * 1000:.0f} ms)", a),
    ]
    return rows, {"qasync": q, "asyncio": a}


def sc_search(reps: int) -> tuple[list[Row], dict[str, Any]]:
    res = run_child("bench.search", [str(reps)], timeout=600)
    n = f"{res['items']:,}"
    worst = max(res["per_query"].items(), key=lambda kv: kv[1]["items_ms"])
    rows = [
        Row("search", f"items(text=q, limit=50) over {n} prompts, median of "
                      f"{res['queries']} queries", res["items_ms"], "ms", "<= 20 ms",
            res["items_ms"] <= 20,
            f"bare FTS5 {res['fts_ms']:.1f} ms; worst {worst[1]['items_ms']:.0f} ms "
            f"({worst[0]!r})", res),
        Row("search", "item_ids(text=q) (what the grid loads), median", res["ids_ms"], "ms",
            "<= 20 ms", res["ids_ms"] <= 20, f"worst {res['ids_worst_ms']:.0f} ms", res),
    ]
    return rows, res


RUNNERS: dict[str, Callable[[int], tuple[list[Row], dict[str, Any]]]] = {
    "startup": sc_startup,
    "thumbnails": sc_thumbnails,
    "scroll": sc_scroll,
    "reopen": sc_reopen,
    "queue": sc_queue,
    "download": sc_download,
    "search": sc_search,
}


# ---------------------------------------------------------------------------- output


def cpu_times() -> tuple[float, float]:
    """(all CPU time, the part stolen by the hypervisor) in jiffies since boot, from
    /proc/stat; (0, 0) where there is none. On a shared VM, steal is time this machine's
    CPUs wanted to run and could not: it moves every figure, whatever the load average."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0.0)


def steal_percent(start: tuple[float, float], end: tuple[float, float]) -> float | None:
    total, steal = end[0] - start[0], end[1] - start[1]
    return None if total <= 0 else round(100 * steal / total, 1)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    try:
        from importlib.metadata import version

        pyside = version("PySide6-Essentials")
    except Exception:
        pyside = "?"
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "pyside6": pyside,
            "qt_platform": child_env()["QT_QPA_PLATFORM"], "kernel": platform.release()}


def fmt_value(row: Row) -> str:
    if row.unit == "x":
        return f"{row.value:.2f}x"
    return f"{row.value:.1f} {row.unit}"


def table(rows: list[Row]) -> str:
    head = ("scenario", "measure", "median", "target", "ok", "baseline / context")
    body = [(r.scenario, r.measure, fmt_value(r), r.target,
             "-" if r.ok is None else ("PASS" if r.ok else "MISS"), r.baseline) for r in rows]
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(len(head))]
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line.format(*head), sep, *(line.format(*b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these scenarios ({', '.join(SCENARIOS)})")
    parser.add_argument("--reps", type=int, help="repetitions of every scenario")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    only = {n.strip() for item in args.only for n in item.split(",") if n.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = [s for s in SCENARIOS if not only or s in only]
    t_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    cpu_start = cpu_times()
    OUT.mkdir(parents=True, exist_ok=True)
    log("building the data sets (cached under bench/out/)")
    datasets.build_all(set(chosen), log=log)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    failed: list[str] = []
    for name in chosen:
        reps = args.reps or REPS[name][1 if args.quick else 0]
        load = os.getloadavg()[0]
        log(f"{name}: {reps} repetition(s); load average {load:.1f}")
        t0 = time.perf_counter()
        cpu0 = cpu_times()
        try:
            scenario_rows, raw[name] = RUNNERS[name](reps)
        except Exception as exc:
            failed.append(name)
            raw[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name} FAILED: {exc}\n{traceback.format_exc()}")
            continue
        raw[name]["seconds"] = round(time.perf_counter() - t0, 1)
        raw[name]["load_before"] = round(load, 2)
        raw[name]["load_after"] = round(os.getloadavg()[0], 2)
        raw[name]["steal_percent"] = steal_percent(cpu0, cpu_times())
        rows += scenario_rows
        for r in scenario_rows:
            log(f"  {r.measure}: {fmt_value(r)} ({r.baseline})")
        log(f"{name}: done in {time.perf_counter() - t0:.0f} s")
    info = machine()
    steal = steal_percent(cpu_start, cpu_times())
    text = table(rows)
    print(f"\nnbdesk bench — {'quick' if args.quick else 'full'} run, "
          f"{time.perf_counter() - t_all:.0f} s; {info['cpu']}, {info['cores']} cores, "
          f"{info['ram_gb']} GB RAM; Python {info['python']}, PySide6 {info['pyside6']}, "
          f"QT_QPA_PLATFORM={info['qt_platform'].split(':')[0]}; load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
          + ("" if steal is None else f"; CPU time stolen by the hypervisor {steal:.1f} %")
          + " (other processes on the machine move every figure)\n")
    print(text)
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (see bench/out/results.json)")
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": "quick" if args.quick else "full",
        "seconds": round(time.perf_counter() - t_all, 1), "machine": info,
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "steal_percent": steal,
        "table": [asdict(r) for r in rows], "scenarios": raw, "failed": failed,
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


