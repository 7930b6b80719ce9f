"""The package installs with pip and runs from anywhere: its data files ship inside it.

The virtual environment sees the system's site-packages, so pip resolves the declared
dependencies against what CI installed instead of downloading torch again; the package itself
comes only from the wheel, and the main job runs from a folder outside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, ROOT, cwd=out)
    (path,) = out.glob("steering_backends-*.whl")
    return path


def test_the_wheel_holds_the_code_the_data_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {Path(name).name for name in names if name.startswith("steering_backends/")}
    assert {"spec.py", "layout.py", "pytorch_hooks.py", "__main__.py"} <= package
    data = {name for name in names if name.startswith("steering_backends/data/")}
    expected = [
        "behaviour_prompts.json",
        "contrast_pairs.jsonl",
        "lens_prompts.json",
        "reference.txt",
        "refusal_requests.json",
        "topic_prompts.json",
    ]
    assert data == {f"steering_backends/data/{name}" for name in expected}
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "notebooks/", "benchmarks/")) for name in names)


def test_pip_install_then_the_main_job_runs_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-build-isolation", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    where = run(python, "-c", "import steering_backends; print(steering_backends.__file__)", cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout
    # The data files the main job's default steering reads (64 sentiment pairs, the reference text).
    code = "from steering_backends import vectors as v; print(len(v.load_pairs()), len(v.load_reference_texts()) > 0)"
    assert run(python, "-c", code, cwd=elsewhere, env=env).stdout.split() == ["64", "True"]
    # The command runs from there; a tiny model keeps it short (SmolLM2's run: tests/test_cli.py).
    result = run(
        python, "-m", "steering_backends", "--model", "tiny-llama-random", "--samples", "1", cwd=elsewhere, env=env
    )
    assert result.stdout.count("mean sentiment (VADER)") == 2 and "pytorch_hooks: 'Last week my sister" in result.stdout
