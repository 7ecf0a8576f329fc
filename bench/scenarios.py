"""The networked measurements: the raw relay floor, then labmw end to end, latency and memory.

Everything here runs in one asyncio loop in the bench process (LIS peer and analyzers), against a
separate process (relay.py or `labmw run`), on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon_ctl import Daemon, configure
from floors import Relay
from loadgen import Analyzer, Lis, ProtocolFailure, paced, run_senders, workload

ANALYZER_COUNTS = (1, 4, 16)
MEMORY_ANALYZERS = 100


@dataclass(frozen=True)
class Plan:
    """How much to send: the full run and --quick differ only here."""

    messages_per_phase: dict[int, int]  # analyzers -> messages in total
    results_per_message: int
    latency_seconds: float
    latency_rate: float  # results (= messages) per second
    big_frame_mb: int
    timeout: float


FULL = Plan({1: 800, 4: 1600, 16: 1600}, 4, 12.0, 50.0, 20, 120.0)
QUICK = Plan({1: 10, 4: 16, 16: 32}, 4, 0.6, 50.0, 20, 30.0)


def _bench_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _split(messages: list[tuple[str, list[bytes]]], parts: int) -> list[list[tuple[str, list[bytes]]]]:
    return [messages[k::parts] for k in range(parts)]


async def throughput(lis: Lis, ports: list[int], plan: Plan, tag: str,
                     cpu: Callable[[], float] | None = None) -> dict[str, float]:
    """Send the phase's messages over ``len(ports)`` analyzers at once; results/s from first ENQ to last LIS arrival."""
    count = plan.messages_per_phase[len(ports)]
    messages = workload(tag, count, plan.results_per_message)
    results = count * plan.results_per_message
    cpu0, bench0 = (cpu() if cpu else 0.0), _bench_cpu()
    start, last, analyzers = await run_senders(ports, _split(messages, len(ports)), lis, results, plan.timeout)
    wall = last - start
    stored = max(t for a in analyzers for t in a.acked_final.values()) - start  # last message committed
    out = {"analyzers": len(ports), "messages": count, "results": results, "seconds": wall,
           "results_per_s": results / wall, "messages_per_s": count / wall,
           "intake_seconds": stored, "intake_results_per_s": results / stored,
           "lis_gap_p50_ms": 1000 * statistics.median(lis.gaps) if lis.gaps else 0.0,
           "lis_gap_mean_ms": 1000 * statistics.fmean(lis.gaps) if lis.gaps else 0.0,
           "bench_cpu_pct": 100 * (_bench_cpu() - bench0) / wall}
    if cpu is not None:
        used = cpu() - cpu0
        out["daemon_cpu_pct"] = 100 * used / wall
        out["daemon_cpu_ms_per_result"] = 1000 * used / results
    return out


async def relay_floor(lis: Lis, ports: list[int], plan: Plan,
                      log: Callable[[str], None]) -> dict[int, dict[str, float]]:
    """Raw relay throughput for each analyzer count (same workload as labmw's)."""
    relay = Relay(lis.port, ports[: max(ANALYZER_COUNTS)])
    try:
        out = {}
        for n in ANALYZER_COUNTS:
            log(f"relay floor, {n} analyzer(s)")
            out[n] = await throughput(lis, ports[:n], plan, f"R{n}")
        return out
    finally:
        relay.stop()


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


async def latency(lis: Lis, ports: list[int], plan: Plan) -> dict[str, float]:
    """At a steady rate (one result per message), time from the final frame to the LIS receiving the result."""
    count = max(10, int(plan.latency_rate * plan.latency_seconds))
    messages = workload("L", count, 1)
    analyzers = await paced(ports, messages, plan.latency_rate, lis, plan.timeout)
    sent = {k: v for a in analyzers for k, v in a.sent_final.items()}
    acked = {k: v for a in analyzers for k, v in a.acked_final.items()}
    from_sent = [(lis.arrivals[s] - t) * 1000 for s, t in sent.items()]
    from_ack = [(lis.arrivals[s] - t) * 1000 for s, t in acked.items()]
    commit = [(acked[s] - sent[s]) * 1000 for s in sent]
    return {"samples": len(from_sent), "rate": plan.latency_rate, "analyzers": len(ports),
            "p50_ms": statistics.median(from_sent), "p99_ms": _percentile(from_sent, 99),
            "max_ms": max(from_sent), "from_ack_p50_ms": statistics.median(from_ack),
            "from_ack_p99_ms": _percentile(from_ack, 99), "final_frame_ack_p99_ms": _percentile(commit, 99)}


async def settle(daemon: Daemon, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until the daemon has used no CPU for ``quiet`` seconds (its work is done), at most ``limit``."""
    deadline = time.monotonic() + limit
    last = daemon.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = daemon.cpu_seconds()
        if now - last < 0.01:
            return
        last = now


async def connected_memory(lis: Lis, daemon: Daemon, ports: list[int], plan: Plan) -> tuple[float, list[Analyzer]]:
    """Connect one analyzer per port, each sends one message and stays connected; returns RSS (MiB) and the links."""
    analyzers = [Analyzer(port) for port in ports]
    await asyncio.gather(*(a.connect() for a in analyzers))
    messages = workload("M", len(ports), 1)
    lis.expect(len(messages))
    await asyncio.wait_for(asyncio.gather(*(a.send(*m) for a, m in zip(analyzers, messages, strict=True))),
                           plan.timeout)
    await asyncio.wait_for(lis.done.wait(), plan.timeout)
    await settle(daemon)
    return daemon.rss_mb(), analyzers


async def big_frame(daemon: Daemon, port: int, megabytes: int) -> dict[str, float | str]:
    """ENQ, then one frame that never ends: ``megabytes`` MiB of record text with no ETX/ETB."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent, note = 0, "all sent"
    try:
        writer.write(b"\x05")
        await reader.readexactly(1)
        chunk = b"R|1|^^^ALTL|42|U/L||N||F||^System||20261125090000|P1\r" * 1200  # ~64 KB
        writer.write(b"\x021")
        while sent < megabytes * 2**20:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        await settle(daemon)
        rss = daemon.rss_mb()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        note = f"daemon closed the connection after {sent / 2**20:.1f} MiB ({type(exc).__name__})"
        await settle(daemon)
        rss = daemon.rss_mb()
    finally:
        writer.close()
    return {"rss_mb": rss, "sent_mb": sent / 2**20, "note": note}


async def still_serving(lis: Lis, port: int, timeout: float) -> bool:
    """After the abuse: does a normal message still get ACKed and delivered?"""
    analyzer = Analyzer(port)
    await analyzer.connect()
    lis.expect(1)
    try:
        await asyncio.wait_for(analyzer.send(*workload("Z", 1, 1)[0]), timeout)
        await asyncio.wait_for(lis.done.wait(), timeout)
        return True
    except (ProtocolFailure, ConnectionError, TimeoutError):
        return False
    finally:
        await analyzer.close()


async def labmw_run(lis: Lis, ports: list[int], workdir: Path, plan: Plan,
                    log: Callable[[str], None]) -> dict[str, object]:
    """Configure and start the daemon with MEMORY_ANALYZERS analyzers, then every labmw measurement.

    Each measurement that fails is recorded as {"error": ...}; the daemon is always stopped.
    """
    log("configuring labmw (README commands) and starting `labmw run`")
    config = configure(workdir, lis.port, ports[:MEMORY_ANALYZERS])
    daemon = Daemon(config, workdir / "daemon.log")
    out: dict[str, object] = {}
    daemon.start(ports[:MEMORY_ANALYZERS])
    try:
        await asyncio.sleep(0.5)
        await settle(daemon)
        out["rss_idle_mb"] = daemon.rss_mb()
        await throughput(lis, ports[:1], Plan({1: 10}, 1, 0, 0, 0, plan.timeout), "W")  # warm-up: LIS link up
        for n in ANALYZER_COUNTS:
            log(f"labmw end to end, {n} analyzer(s)")
            await settle(daemon)
            out[f"e2e_{n}"] = await _guard(throughput(lis, ports[:n], plan, f"E{n}", daemon.cpu_seconds))
        log(f"latency at {plan.latency_rate:g} results/s for {plan.latency_seconds:g} s")
        await settle(daemon)
        out["latency"] = await _guard(latency(lis, ports[:4], plan))
        log(f"memory with {MEMORY_ANALYZERS} connected analyzers")
        mem = await _guard(connected_memory(lis, daemon, ports[:MEMORY_ANALYZERS], plan))
        if isinstance(mem, tuple):
            out["rss_connected_mb"], links = mem
            await asyncio.gather(*(a.close() for a in links))
        else:
            out["rss_connected_mb"] = mem
        log(f"memory after a {plan.big_frame_mb} MiB unterminated frame")
        out["big_frame"] = await _guard(big_frame(daemon, ports[0], plan.big_frame_mb))
        out["serving_after_abuse"] = await still_serving(lis, ports[1], plan.timeout)
    finally:
        if daemon.alive():
            await settle(daemon, limit=2.0)  # stop an idle daemon: shutdown is not what is measured here
        out["exit_code"] = await asyncio.to_thread(daemon.stop)  # the LIS must keep answering meanwhile
    out["log"] = str(workdir / "daemon.log")
    return out


async def _guard(coro: object) -> object:
    """Await ``coro``; an expected failure becomes {"error": reason} so the other rows still run."""
    try:
        return await coro  # type: ignore[misc]
    except (ProtocolFailure, ConnectionError, TimeoutError, OSError, RuntimeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}


def log_to_stderr(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)

