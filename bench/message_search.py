"""How fast `labmw message list --specimen S` answers on a store with a million results (issue 13).

Builds a real labmw SQLite store (the schema of labmw.store.db, all migrations) in a work directory,
fills it with MESSAGES messages of RESULTS_PER results each (distinct specimens, realistic rows),
then times the browser's specimen search (labmw.store.Store.browse_messages, what the CLI calls)
for random specimens, and the same search with an analyzer and time window.

    .venv/bin/python bench/message_search.py                 # 1,000,000 results (about a minute to build)
    .venv/bin/python bench/message_search.py --results 20000 # quick check
    .venv/bin/python bench/message_search.py --keep DIR      # keep (and reuse) the store in DIR

The target is under 100 ms per search (the median and the worst of the runs are printed).
This script is separate from bench/run.py (the throughput bench) and is not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from labmw.store import Store

RESULTS_PER = 10  # a chemistry panel


def build(path: Path, results: int) -> None:
    store = Store.open(path)  # creates the schema with every migration
    store.close()
    conn = sqlite3.connect(path)
    messages = results // RESULTS_PER
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conn.execute("PRAGMA synchronous=OFF")
    with conn:
        for base in range(0, messages, 10_000):
            batch = range(base + 1, min(messages, base + 10_000) + 1)
            conn.executemany(
                "INSERT INTO messages (id, analyzer, protocol, peer, received_at, sha256, raw, outcome)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(m, f"an{m % 20}", "astm", "10.0.0.1:5000", (start + timedelta(seconds=30 * m)).isoformat(),
                  f"{m:064x}", b"\x021H|\\^&\r" + b"R|1|^^^ALT|35|U/L||N||F\r" * RESULTS_PER, "accepted")
                 for m in batch])
            conn.executemany(
                "INSERT INTO results (message_id, analyzer, specimen, patient_id, patient_name, birth_date, sex,"
                " test_code, method, raw_value, value, comparator, units, instrument_flags, status, collected_at,"
                " completed_at, flags, applied_range, notes, state) VALUES"
                " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(m, f"an{m % 20}", f"S{m:08d}", f"P{m % 50_000:06d}", "DOE^J", "1980-01-01", "M", f"T{t}",
                  "ALT-T", "35", "35", None, "U/L", "[]", "F", None, None, "[]", "9-59", "[]", "delivered")
                 for m in batch for t in range(RESULTS_PER)])
    conn.close()


def measure(path: Path, results: int, runs: int) -> dict[str, object]:
    store = Store.open(path)
    messages = results // RESULTS_PER
    rng = random.Random(13)
    try:
        timings = {}
        for name, extra in (("specimen", {}),
                            ("specimen+analyzer+window", {"since": datetime(2026, 1, 1, tzinfo=UTC),
                                                           "until": datetime(2027, 1, 1, tzinfo=UTC)})):
            elapsed = []
            for _ in range(runs):
                m = rng.randint(1, messages)
                t0 = time.perf_counter()
                rows = store.browse_messages(specimen=f"S{m:08d}", analyzer=f"an{m % 20}" if extra else None, **extra)
                elapsed.append((time.perf_counter() - t0) * 1000)
                assert [r["id"] for r in rows] == [m], (m, rows)
            timings[name] = {"median_ms": round(statistics.median(elapsed), 3), "max_ms": round(max(elapsed), 3)}
        count = store._conn.execute("SELECT count(*) FROM results").fetchone()[0]  # noqa: SLF001 - bench only
    finally:
        store.close()
    return {"results": count, "runs": runs, **timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="labmw-search-", dir=Path(__file__).parent))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "labmw.sqlite3"
    if not path.exists():
        t0 = time.perf_counter()
        build(path, args.results)
        print(f"built {args.results} results in {time.perf_counter() - t0:.1f} s at {path}")
    print(json.dumps(measure(path, args.results, args.runs), indent=2))
    if args.keep is None:
        for item in work.iterdir():
            item.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
