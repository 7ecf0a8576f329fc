"""Two sites on one PostgreSQL, with real daemons: the delta check at one site sees the other's result.

The README's PostgreSQL section, as a test: ALT 200 at north and 40 at south six hours later is held
at south exactly as the same pair is held on one site (the implausible-fall tier of the shipped
ALT-P5P method: 40 is below half the 183 U/L expected after 6 h of a 47 h half-life).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine_kit import Engine
from peers import MllpLis, alt_message, astm_send, daemon, free_port, labmw, wait_until


def _site(tmp_path: Path, engine: Engine | None, site: str, lis_port: int, analyzer_port: int) -> Path:
    """The README's commands for one site (SQLite when ``engine`` is None)."""
    config = tmp_path / site / "lab.toml"
    config.parent.mkdir()
    store = ["--store-url", str(engine.target), "--site", site] if engine else []
    labmw(config, "init", "--data-dir", str(config.parent / "data"), *store)
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", f"c501-{site}", "--protocol", "astm", "--transport", "tcp-server",
          "--listen", f"127.0.0.1:{analyzer_port}", "--map", "ALTL=ALT-P5P")
    return config


def _held(config: Path) -> list[dict[str, object]]:
    return json.loads(labmw(config, "review", "list", "--json").stdout)  # type: ignore[no-any-return]


FIRST = {"specimen": "N1", "patient": "PX-1", "sex": "M", "birth": "19700101", "value": "200",
         "collected": "20261125020000"}
SECOND = {"specimen": "S1", "patient": "PX-1", "sex": "M", "birth": "19700101", "value": "40",
          "collected": "20261125080000"}


def test_one_site_holds_the_implausible_fall(tmp_path: Path) -> None:
    """The reference: on one site (SQLite) the pair 200 then 40 six hours later is held."""
    lis_port, port = free_port(), free_port()
    config = _site(tmp_path, None, "solo", lis_port, port)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=port):
            astm_send(port, [alt_message(**FIRST), alt_message(**SECOND)])
            wait_until(lambda: bool(_held(config)), interval=0.5, what="the fall to be held")  # a CLI per poll
            assert [h["specimen"] for h in _held(config)] == ["S1"]
            wait_until(lambda: len(lis.received) >= 1, what="the first result at the LIS")
    finally:
        lis.stop()


def test_south_holds_the_fall_from_norths_result(tmp_path: Path, pg_engine: Engine) -> None:
    """North's 200 and south's 40 six hours later: south holds it; each site's queue and review are its own."""
    north_lis, south_lis = MllpLis(free_port()).start(), MllpLis(free_port()).start()
    north_port, south_port = free_port(), free_port()
    north = _site(tmp_path, pg_engine, "north", north_lis.port, north_port)
    south = _site(tmp_path, pg_engine, "south", south_lis.port, south_port)
    try:
        with daemon(north, wait_port=north_port), daemon(south, wait_port=south_port):
            astm_send(north_port, [alt_message(**FIRST)])
            wait_until(lambda: len(north_lis.received) >= 1, what="north's result at north's LIS")
            astm_send(south_port, [alt_message(**SECOND)])
            wait_until(lambda: bool(_held(south)), interval=0.5, what="south to hold the fall")
            held = _held(south)
            assert [h["specimen"] for h in held] == ["S1"] and "200" in str(held[0]["reason"])
            assert _held(north) == []
            assert list(north_lis.by_specimen()) == ["N1"] and south_lis.received == []
            # A person at south releases it: it goes to south's LIS, through south's daemon only.
            labmw(south, "review", "release", str(held[0]["id"]), "--reason", "identity checked")
            wait_until(lambda: list(south_lis.by_specimen()) == ["S1"], what="the released result at south's LIS")
            assert list(north_lis.by_specimen()) == ["N1"]
    finally:
        north_lis.stop()
        south_lis.stop()
    south_events = json.loads(labmw(south, "audit", "list", "--site", "south", "--json").stdout)
    assert south_events and all(e["data"].get("site") == "south" for e in south_events)
    assert {"S1"} <= {e["specimen"] for e in south_events} and "N1" not in {e["specimen"] for e in south_events}
    assert labmw(north, "audit", "verify").returncode == 0
