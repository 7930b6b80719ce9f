"""After the README's install command a reader can open the notebooks: `jupyter lab` is there at the
pinned version, `jupyter lab notebooks/` serves JupyterLab and the notebooks, and a Python kernel
starts and runs code. (nbmake needs only the kernel; before jupyterlab was pinned, the install
gave no `jupyter lab` at all.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "smoke-test"


def pinned(package: str) -> str:
    """The version requirements.txt pins ``package`` to."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.split("#")[0].strip()
    raise AssertionError(f"requirements.txt does not pin {package}")


def jupyter() -> str:
    path = shutil.which("jupyter")
    assert path, "no `jupyter` command on PATH: run the README's install command"
    return path


def test_jupyter_lab_is_the_pinned_version():
    out = subprocess.run([jupyter(), "lab", "--version"], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == pinned("jupyterlab")


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={TOKEN}", timeout=10) as response:
        return response.status, response.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_lab_serves_the_notebooks(tmp_path):
    port = free_port()
    command = [jupyter(), "lab", "notebooks/", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0"]
    command += [f"--IdentityProvider.token={TOKEN}"]
    if os.geteuid() == 0:  # Jupyter refuses root without it (containers, CI); the README says so
        command.append("--allow-root")
    log = tmp_path / "server.log"
    env = os.environ | {"JUPYTER_RUNTIME_DIR": str(tmp_path)}  # its connection files, not the user's
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                get(port, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on port {port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        status, page = get(port, "/lab")
        assert status == 200 and b"<title>JupyterLab</title>" in page
        _, listing = get(port, "/api/contents")  # the folder given on the command line is the root
        names = {entry["name"] for entry in json.loads(listing)["content"]}
        assert {"00_overview.ipynb", "09_nnsight.ipynb"} <= names, names
        _, notebook = get(port, "/api/contents/00_overview.ipynb")
        assert json.loads(notebook)["content"]["cells"], "the notebook opened empty"
        _, specs = get(port, "/api/kernelspecs")
        assert "python3" in json.loads(specs)["kernelspecs"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_python_kernel_starts_and_runs_code():
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=120, cwd=str(ROOT / "notebooks"))
    results = []

    def keep_results(message):
        if message["msg_type"] == "execute_result":
            results.append(message["content"]["data"]["text/plain"])

    try:
        reply = client.execute_interactive("1 + 1", timeout=60, output_hook=keep_results)
        assert reply["content"]["status"] == "ok"
        assert results == ["2"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
