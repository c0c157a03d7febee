"""Shared test helpers: run the real CLI, locate sample models and the shared corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
CORPUS = REPO.parent / "shared" / "corpus"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str, exception: BaseException | None) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.exception = exception

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<Result exit={self.exit_code}\nstdout={self.stdout[-2000:]}\nstderr={self.stderr[-2000:]}>"


def run_cli(*args: str | os.PathLike, input: str | bytes | None = None) -> Result:
    """Invoke the real click app in-process with stdout and stderr kept apart."""
    from wtool.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=True, prog_name="wtool")
    return Result(res.exit_code, res.stdout, res.stderr, res.exception)


@pytest.fixture
def wtool():
    return run_cli


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md"))


def stored_weights(path: str | os.PathLike) -> dict:
    """Every weight of a model file by path, read by wtool's store (no TensorFlow)."""
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}
