"""An independent ASTM implementation as the analyzer: the python-astm package (PyPI `astm` 0.5.0),
installed into a throwaway venv with the shim ASTM.md §4.1 describes, sends to the real daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers import MllpLis, configure, daemon, free_port, obx8, wait_until

SHIM = "import collections, collections.abc\ncollections.Iterable = collections.abc.Iterable\n"

CLIENT = r'''
import sys
from astm.client import Client

port, specimen, bulk = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "bulk"

def emitter():
    yield ["H", [[None], [None, "&"]], None, None, ["python-astm", "1"]]
    yield ["P", "1", None, "PY1", None, ["DOE", "JOHN"], None, "19800101", "M"]
    yield ["O", "1", specimen, None, [None, None, None, "ALTL"], "R", None, "20261125080000"]
    yield ["R", "1", [None, None, None, "ALTL"], "85", "U/L", None, "N", None, "F"]
    yield ["L", "1", "N"]

kwargs = {"bulk_mode": True, "chunk_size": 40} if bulk else {}
Client(emitter, "127.0.0.1", port, timeout=5, **kwargs).run(timeout=1.0, count=30)
'''


@pytest.fixture(scope="session", name="python_astm")
def _python_astm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv with astm==0.5.0 (it needs the collections.Iterable shim to install on 3.11)."""
    root = tmp_path_factory.mktemp("python-astm")
    (root / "shim").mkdir()
    (root / "shim" / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": str(root / "shim")}
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "wheel"], check=True, env=env, capture_output=True)
    subprocess.run([*pip, "--no-build-isolation", "astm==0.5.0"], check=True, env=env, capture_output=True)
    (root / "client.py").write_text(CLIENT)
    return root, env


@pytest.mark.parametrize("mode", ["record-per-frame", "bulk"])
def test_python_astm_client_delivers_through_labmw(tmp_path: Path, python_astm: tuple[Path, dict[str, str]],
                                                   mode: str) -> None:
    """python-astm's client (one record per frame, or packed and cut into 40-byte ETB frames) is understood."""
    root, env = python_astm
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    lis = MllpLis(lis_port).start()
    specimen = "PYASTM-" + mode
    try:
        with daemon(config, wait_port=analyzer_port):
            proc = subprocess.run([str(root / "venv" / "bin" / "python"), str(root / "client.py"), str(analyzer_port),
                                   specimen, "bulk" if mode == "bulk" else "plain"],
                                  env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            wait_until(lambda: len(lis.received) >= 1, what="python-astm's result at the LIS")
    finally:
        lis.stop()
    message = lis.by_specimen()[specimen]
    assert obx8(message) == ["H"]
