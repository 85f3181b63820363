"""Scenario child: full-text search over 100,000 prompts.

Times ``Library.items(text=q, limit=50)`` (the first page of results) and
``Library.item_ids(text=q)`` (what the library grid asks for: every matching id, newest
first) for a fixed set of queries from very common to rare words, prefixes and several
words. Baseline in the same process: the bare FTS5 lookup of the same query
(``SELECT rowid FROM items_fts WHERE items_fts MATCH ? LIMIT 50``), i.e. the index alone
without the join, the filter and the newest-first order.

``python -m bench.search REPS``
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench.common import emit


def queries() -> list[str]:
    import random

    from bench.datasets import _vocabulary

    vocab = _vocabulary(random.Random(7))  # the same vocabulary the data set was made of
    return [
        "red",  # rank 1: in most prompts
        "lighthouse",  # rank 4
        "castle",  # rank 24
        "neon alley",
        "golden hour portrait",
        "ligh",  # a prefix, as typed
        "wat",
        vocab[60],  # ~3 % of prompts
        vocab[300],
        vocab[1200],  # rare
        f"{vocab[1]} {vocab[400]}",
        "zzzz nothing matches",
    ]


def timed(fn: Any, reps: int) -> tuple[float, int]:
    times = []
    n = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = len(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, n


def run(reps: int) -> dict[str, Any]:
    from bench.datasets import search100k
    from nbdesk.core.library import Library, fts_query
    from nbdesk.core.paths import Paths

    home = search100k()
    lib = Library(Paths.resolve({"NBDESK_HOME": str(home)}))
    total = lib.count_items()
    per_query: dict[str, dict[str, float]] = {}
    for q in queries():
        lib.items(text=q, limit=50)  # warm the page cache for this query
        items_ms, hits = timed(lambda q=q: lib.items(text=q, limit=50), reps)
        ids_ms, matches = timed(lambda q=q: lib.item_ids(text=q), reps)
        fts_ms, _ = timed(lambda q=q: lib._query(
            "SELECT rowid FROM items_fts WHERE items_fts MATCH ? LIMIT 50", (fts_query(q),)),
            reps)
        per_query[q] = {"items_ms": round(items_ms, 2), "ids_ms": round(ids_ms, 2),
                        "fts_ms": round(fts_ms, 2), "matches": matches, "page": hits}
    lib.close()

    def med(key: str) -> float:
        return round(statistics.median(v[key] for v in per_query.values()), 2)

    def worst(key: str) -> float:
        return round(max(v[key] for v in per_query.values()), 2)

    return {
        "items": total, "queries": len(per_query), "reps": reps,
        "items_ms": med("items_ms"), "items_worst_ms": worst("items_ms"),
        "ids_ms": med("ids_ms"), "ids_worst_ms": worst("ids_ms"),
        "fts_ms": med("fts_ms"),
        "per_query": per_query,
    }


if __name__ == "__main__":
    emit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
