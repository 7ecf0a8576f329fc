"""Fixtures for the reliability tests: a configured installation per test, made fast.

`peers.configure` runs the README's six CLI commands (about 2 s); here they run once per session
and each test gets a copy of the result with its own data directory and ports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fault_tools import MakeLab, tune
from peers import configure


@pytest.fixture(scope="session")
def lab_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("lab-template")
    configure(base, 1, 2)
    return base


@pytest.fixture
def lab(lab_template: Path, tmp_path: Path) -> MakeLab:
    """``lab(lis_port, analyzer_port)`` -> the config file of a fresh installation under ``tmp_path``
    (data in ``tmp_path / "data"``, analyzer ``c501`` on ``analyzer_port`` mapping ALTL to ALT-T)."""

    def make(lis_port: int, analyzer_port: int) -> Path:
        shutil.copytree(lab_template / "data", tmp_path / "data")
        config = tmp_path / "lab.toml"
        shutil.copy2(lab_template / "lab.toml", config)
        tune(config, "service", data_dir=str(tmp_path / "data"))
        tune(config, "lis", connect=f"127.0.0.1:{lis_port}")
        tune(config, "analyzers.c501", listen=f"127.0.0.1:{analyzer_port}")
        return config

    return make
