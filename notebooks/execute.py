"""Re-run notebooks top to bottom and save them with their new outputs.

    python notebooks/execute.py                          # every notebook, default model
    python notebooks/execute.py 02_pytorch_hooks.ipynb   # one
    STEERING_MODEL=gpt2-xl python notebooks/execute.py   # another model (gpt2-xl needs the hub)

Cells tagged ``raises-exception`` may raise; any other error stops the run. A saved error keeps
only its last line, ``ValueError: <message>``: the frames above it name files on the machine that
ran the notebook, and the lesson is the message.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(shorten_errors(notebook), path)
    return time.perf_counter() - started


def shorten_errors(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Each error output's traceback cut to its last line (the exception and its message)."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = output.traceback[-1:]
    return notebook


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    for name in names:
        print(f"{name}: {execute(HERE / name):.0f} s", flush=True)
