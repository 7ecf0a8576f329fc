"""Decoding benchmarks: labmw's ASTM codec against python-astm 0.5.0 on the same frames; python-hl7 parsing.

Each codec runs in its own fresh process (codec_worker.py) with the daemon stopped, so neither
pays for the other's imports or garbage. python-astm cannot be installed on Python 3.11 as
published; it goes into a throwaway venv, bench/.venv-astm, with the shim of ASTM.md §4.1/§4.6.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "codec_worker.py"
ASTM_VENV = HERE / ".venv-astm"
ASTM_SHIM = ASTM_VENV / "shim"
SHIM_TEXT = "import collections, collections.abc\ncollections.Iterable = collections.abc.Iterable\n"

_FRAME = re.compile(rb"\x02([0-7])(.*?)([\x03\x17])([0-9A-Fa-f]{2})", re.S)


@dataclass(frozen=True)
class Corpus:
    path: Path
    astm_files: tuple[str, ...]
    skipped: tuple[str, ...]
    hl7_files: tuple[str, ...]


def build_corpus(out: Path) -> Corpus:
    """Write the shipped samples as JSON for the workers: ASTM frames (hex) per message, HL7 texts.

    Every E1381 frame of tests/data/astm is kept byte for byte except its trailer, normalised to
    CR LF (c111 and Pentra send LF, the XN-550 capture CR; python-astm accepts only CR LF and
    labmw accepts all three). An unframed capture (PSM) has no frames and is left out. HL7 samples
    get CR segment separators (python-hl7 reads an LF-only message as one segment).
    """
    astm, used, skipped = [], [], []
    for path in sorted((REPO / "tests/data/astm").glob("*.astm")):
        frames = [b"\x02" + m.group(1) + m.group(2) + m.group(3) + m.group(4) + b"\r\n"
                  for m in _FRAME.finditer(path.read_bytes())]
        if frames:
            astm.append([f.hex() for f in frames])
            used.append(path.name)
        else:
            skipped.append(path.name)
    hl7, hl7_files = [], []
    for path in sorted((REPO / "tests/data/hl7").glob("*.hl7")):
        text = path.read_bytes().decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
        hl7.append(text)
        hl7_files.append(path.name)
    out.write_text(json.dumps({"astm": astm, "hl7": hl7}), encoding="utf-8")
    return Corpus(out, tuple(used), tuple(skipped), tuple(hl7_files))


def astm_python(*, create: bool = True) -> Path:
    """bench/.venv-astm/bin/python with python-astm 0.5.0, created on first use when ``create``.

    Raises RuntimeError naming the step that failed (no network, no venv module, a build error),
    or saying the venv is not there when ``create`` is false (--quick stays fast: no installs).
    """
    python = ASTM_VENV / "bin" / "python"
    if (ASTM_VENV / "ok").exists() and python.exists():
        return python
    if not create:
        raise RuntimeError("bench/.venv-astm not created yet (a full run creates it; --quick does not)")

    def step(what: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{what} failed: {last[0][:160]}")

    base = getattr(sys, "_base_executable", sys.executable)
    step("python -m venv", [base, "-m", "venv", "--clear", str(ASTM_VENV)])
    ASTM_SHIM.mkdir(parents=True, exist_ok=True)
    (ASTM_SHIM / "sitecustomize.py").write_text(SHIM_TEXT, encoding="utf-8")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    step("pip install wheel", [*pip, "wheel"])
    env = {**os.environ, "PYTHONPATH": str(ASTM_SHIM)}
    step("pip install astm==0.5.0", [*pip, "--no-build-isolation", "astm==0.5.0"], env)
    (ASTM_VENV / "ok").write_text("astm==0.5.0\n", encoding="utf-8")
    return python


def run_worker(mode: str, corpus: Path, seconds: float, python: Path | None = None) -> dict[str, float]:
    """Run codec_worker.py in a fresh process; returns its counts. Raises RuntimeError on failure."""
    env = dict(os.environ)
    if mode == "python-astm":
        env["PYTHONPATH"] = str(ASTM_SHIM)  # astm/codec.py imports collections.Iterable
    proc = subprocess.run([str(python or sys.executable), str(WORKER), mode, str(corpus), str(seconds)],
                          capture_output=True, text=True, timeout=120 + seconds, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{mode} worker failed: {last[:200]}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def hl7_inbound_available() -> str | None:
    """None when labmw's own HL7 inbound mapping can be timed, else why not (issue 3 is building it)."""
    if not (REPO / "labmw/mapping/hl7_inbound.py").exists():
        return "labmw/mapping/hl7_inbound.py does not exist yet"
    return None


def _speed(result: dict[str, float]) -> float:
    return result["passes"] / result["seconds"]


def measure_astm(corpus: Path, seconds: float, *, rounds: int, create_venv: bool) -> dict[str, dict[str, float] | str]:
    """Time labmw, labmw-full and python-astm on the corpus, interleaved over ``rounds`` rounds; keep each one's best.

    Interleaving and best-of keep a burst of load from other processes from deciding a ratio.
    Values are counts from :func:`run_worker`, or a string: ``"error: ..."`` for a labmw failure,
    ``"unavailable: ..."`` when python-astm cannot be installed or run.
    """
    out: dict[str, dict[str, float] | str] = {}
    python: Path | None = None
    try:
        python = astm_python(create=create_venv)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        out["python-astm"] = f"unavailable: {exc}"
    for _ in range(rounds):
        for mode in ("labmw", "labmw-full", "python-astm"):
            if isinstance(out.get(mode), str):
                continue
            try:
                got = run_worker(mode, corpus, seconds / rounds, python if mode == "python-astm" else None)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                out[mode] = f"{'unavailable' if mode == 'python-astm' else 'error'}: {exc}"
                continue
            best = out.get(mode)
            if not isinstance(best, dict) or _speed(got) > _speed(best):
                out[mode] = got
    return out
