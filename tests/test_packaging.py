"""An installed contextbot finds its own model: a wheel carries the shipped corpus and checkpoints.

`pip install .` (not editable) copies only what the wheel holds into site-packages; the
repository's folders are not beside it any more. So this test builds the wheel, installs it into
a fresh virtual environment, and from an empty folder elsewhere asks the shipped model a question
and builds a corpus from the shipped facts. The fresh environment borrows the dependencies
(torch, numba, ...) from the environment running the tests through a .pth file, so nothing is
downloaded; the contextbot package in it is the wheel's copy alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.shipped]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", tmp / "dist", REPO])
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("contextbot-*.whl")
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Borrow the dependencies: a .pth line adds a folder to sys.path without running the .pth
    # files inside it, so the developer's editable contextbot stays out of this environment.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    put = run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel])
    assert put.returncode == 0, put.stderr
    return python


def test_the_installed_package_is_the_wheel_and_holds_the_shipped_files(installed, tmp_path):
    code = ("import contextbot, contextbot.paths as p; "
            "print(contextbot.__file__); print(p.DEFAULT_CHECKPOINT); print(p.DEFAULT_FACTS)")
    out = run([installed, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    package, checkpoint, facts = out.stdout.split()
    site = str(installed.parent.parent)
    assert package.startswith(site) and checkpoint.startswith(site) and facts.startswith(site)
    assert Path(checkpoint).is_file() and Path(facts).is_file()


def test_the_installed_package_chats_with_the_shipped_model_from_elsewhere(installed, tmp_path):
    out = run([installed, "-m", "contextbot", "ask", "Who is Tom Cruise?", "Where does he live?"],
              cwd=tmp_path, env={**os.environ, "PYTHONPATH": "", "CONTEXTBOT_CHECKPOINT": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["He is an American actor.", "He lives in Beverly Hills."]


def test_the_installed_package_builds_a_corpus_from_the_shipped_facts(installed, tmp_path):
    out = run([installed, "-m", "contextbot", "corpus", "build", "--out-dir", tmp_path],
              cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "train.txt").read_bytes() == (REPO / "corpus" / "train.txt").read_bytes()
