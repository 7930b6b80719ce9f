"""What a reader of the notebooks sees. Each notebook is rendered to HTML from its saved outputs with
`jupyter nbconvert --to html` (the page a browser, nbviewer or GitHub shows; nothing is executed,
nbmake does that) and the page is checked:

- every plot is there as a readable image, and the notebooks that teach with plots have them (FIGURES);
- the comparison tables are HTML tables (TABLES), and no table is printed as pipes and dashes;
- no error box, except the one in a cell tagged ``raises-exception`` (it shows what a bad spec says),
  and no warning;
- no cell shows more than a screen of text (SCREEN_LINES lines of SCREEN_WIDTH characters), and no
  progress bar.

`notebooks/screenshots.py` shows the same pages in a browser, for a person to look at.
"""

from __future__ import annotations

import base64
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))

# A screen of output: a laptop window shows about 50 lines of JupyterLab's output font, 120-150
# characters wide; longer lines wrap. More than that is scrolled past, not read.
SCREEN_LINES, SCREEN_WIDTH = 60, 120
MIN_FIGURE_WIDTH = 300  # px; a saved plot narrower than this is too small to read

# The plots each notebook teaches with (at least), and its comparison tables (compare(), the parity table).
FIGURES = {"06_activation_additions": 1, "07_representation_engineering": 2, "08_lens": 4}
BACKEND_NOTEBOOKS = ["01_custom_wrapper", "02_pytorch_hooks", "03_baukit_tracedict", "04_transformer_lens"]
BACKEND_NOTEBOOKS += ["05_bias_editing", "09_nnsight"]
TABLES = {"00_overview": 1, "06_activation_additions": 2, "07_representation_engineering": 2}
TABLES |= {name: 1 for name in BACKEND_NOTEBOOKS}  # one sampled pair
TABLES["02_pytorch_hooks"] = 2  # the reference: warmer and colder

ERROR_BOX = "application/vnd.jupyter.stderr"  # nbconvert's mime type for tracebacks and stderr alike
PROGRESS_BAR = re.compile(r"\d+%\|| \d+(\.\d+)?(it/s|s/it)\]")  # tqdm: " 45%|####  | 9/20 [00:01<00:02, 5.1it/s]"
WARNING = re.compile(r"\b[A-Z]\w*Warning: ")
FIGURE_AS_TEXT = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")  # a plot saved without its image
PIPE_TABLE = re.compile(r"^\s*\|.*\|\s*\n\s*\|[-:| ]+\|\s*$", re.MULTILINE)


def render(paths: list[Path], out: Path) -> dict[str, str]:
    """{notebook stem: HTML}, as `jupyter nbconvert --to html` writes them (one process for all)."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(out)]
    subprocess.run([*command, *map(str, paths)], check=True, capture_output=True, timeout=600)
    return {path.stem: (out / f"{path.stem}.html").read_text() for path in paths}


def screen_lines(text: str) -> int:
    """Lines the text takes on screen: each line, or carriage-return rewrite, wrapped at SCREEN_WIDTH."""
    lines = re.split(r"\r\n|\r|\n", text.rstrip("\n"))
    return sum(max(1, math.ceil(len(line) / SCREEN_WIDTH)) for line in lines)


def png_width(src: str) -> int:
    """Width in px of a ``data:image/png;base64,...`` image (from its IHDR header), 0 if it is not one."""
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return 0
    png = base64.b64decode(src[len(prefix) :])
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else 0


def tables_in(output: nbformat.NotebookNode) -> int:
    """How many tables one saved output holds (an HTML or Markdown output may hold several)."""
    data = output.get("data", {})
    return data.get("text/html", "").count("<table") + len(PIPE_TABLE.findall(data.get("text/markdown", "")))


def problems(notebook: nbformat.NotebookNode, html: str, figures: int = 0, tables: int = 0) -> list[str]:
    """What is wrong with the page ``html`` of ``notebook``, one line each; [] if nothing."""
    page = BeautifulSoup(html, "html.parser")
    shown = page.select("div.jp-Cell")
    if len(shown) != len(notebook.cells):
        return [f"the page shows {len(shown)} cells, the notebook has {len(notebook.cells)}"]
    found = []
    for index, (cell, div) in enumerate(zip(notebook.cells, shown, strict=True)):
        if cell.cell_type != "code":
            continue
        where = f"cell {index} (In [{cell.execution_count or ' '}])"
        outputs = div.select(".jp-OutputArea-output")
        boxes = [o for o in outputs if o.get("data-mime-type") == ERROR_BOX]
        if "raises-exception" in cell.metadata.get("tags", []):
            if len(boxes) != 1:
                found.append(f"{where} is tagged raises-exception but shows {len(boxes)} errors, not 1")
        else:
            found += [f"{where} shows an error or warning: {box.get_text().strip()[:200]!r}" for box in boxes]
        text = "\n".join(o.get_text().strip("\n") for o in outputs if "jp-RenderedText" in o.get("class", []))
        if (n := screen_lines(text)) > SCREEN_LINES:
            found.append(f"{where} shows {n} lines of text, more than a screen ({SCREEN_LINES})")
        if PROGRESS_BAR.search(text):
            found.append(f"{where} shows a progress bar")
        if WARNING.search(text) and not boxes:
            found.append(f"{where} prints a warning: {WARNING.search(text).group()!r}")
        if FIGURE_AS_TEXT.search(text):
            found.append(f"{where} shows {FIGURE_AS_TEXT.search(text).group()!r}: a plot saved without its image")
        if PIPE_TABLE.search(text):
            found.append(f"{where} prints a table as text; display it (IPython.display.Markdown) to render it")
        for image in div.select(".jp-OutputArea-output img"):
            if (width := png_width(image.get("src", ""))) < MIN_FIGURE_WIDTH:
                found.append(f"{where} shows an image {width} px wide (not a PNG, or too small to read)")

    saved_images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    images = page.select(".jp-OutputArea-output img")
    if len(images) != len(saved_images):
        found.append(f"the page shows {len(images)} images, the notebook saved {len(saved_images)}")
    if len(images) < figures:
        found.append(f"the page shows {len(images)} plots; this notebook teaches with {figures}")
    saved_tables = sum(tables_in(o) for c in notebook.cells for o in c.get("outputs", []))
    html_tables = page.select(".jp-OutputArea-output table")
    if len(html_tables) != saved_tables:
        found.append(f"the page shows {len(html_tables)} output tables, the notebook saved {saved_tables}")
    if len(html_tables) < tables:
        found.append(f"the page shows {len(html_tables)} output tables; this notebook shows {tables} comparisons")
    return found


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, str]:
    return render(PATHS, tmp_path_factory.mktemp("html"))


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_page_shows_what_a_reader_needs(path, pages):
    notebook = nbformat.read(path, as_version=4)
    found = problems(notebook, pages[path.stem], FIGURES.get(path.stem, 0), TABLES.get(path.stem, 0))
    assert not found, f"{path.name}, rendered to HTML:\n" + "\n".join(found)


def install_cell_module():
    spec = importlib.util.spec_from_file_location("install_cell", NOTEBOOKS / "install_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_setup_opens_with_the_install_cell(path):
    """For a reader in a hosted notebook service: commented out, no outputs, right under the Setup heading."""
    install_cell = install_cell_module()
    cells = nbformat.read(path, as_version=4).cells
    at = [i for i, cell in enumerate(cells) if cell.get("id") == install_cell.CELL_ID]
    assert len(at) == 1, f"{path.name} has no install cell; run: python notebooks/install_cell.py {path.name}"
    cell, heading = cells[at[0]], cells[at[0] - 1]
    assert cell.source == install_cell.source(path.name), f"stale; run: python notebooks/install_cell.py {path.name}"
    assert all(line.startswith("#") for line in cell.source.splitlines()) and not cell.outputs
    assert heading.cell_type == "markdown" and install_cell.SETUP_HEADING.match(heading.source)
    copies = [i for i, other in enumerate(cells) if other.source == cell.source]
    assert copies == at, f"{path.name} has the install cell more than once: cells {copies}"


def test_every_notebook_is_checked():
    assert {path.stem for path in PATHS} >= set(FIGURES) | set(TABLES)
    assert len(PATHS) >= 10


# --- the checks can fail -------------------------------------------------------------------------


def code(*outputs, tags=()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("pass", execution_count=1, outputs=list(outputs))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def stream(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


def display(data: dict) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data=data)


def png(width: int, height: int) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


# An error as IPython saves it (traceback shortened), and a tqdm progress bar as a stream saves it.
ERROR = nbformat.v4.new_output("error", ename="ValueError", evalue="bad spec", traceback=["ValueError: bad spec"])
TQDM = "".join(f"\r{p:4d}%|{'#' * (p // 10):10s}| {p // 10}/10 [00:01<00:09, 1.00it/s]" for p in range(0, 101, 10))

# (cell, what problems() must say about it); each doctored cell breaks one rule.
DOCTORED = [
    (code(stream("".join(f"step {i}\n" for i in range(100)))), "lines of text, more than a screen"),
    (code(stream("x" * (SCREEN_LINES + 1) * SCREEN_WIDTH)), "lines of text, more than a screen"),  # one long line
    (code(ERROR), "shows an error or warning: 'ValueError: bad spec'"),
    (code(stream("UserWarning: do not\n", name="stderr")), "shows an error or warning: 'UserWarning"),
    (code(stream("note\n"), stream(TQDM, name="stderr")), "shows a progress bar"),
    (code(stream("/x.py:1: FutureWarning: soon\n")), "prints a warning"),
    (code(display({"text/plain": "<Figure size 640x480 with 1 Axes>"})), "a plot saved without its image"),
    (code(stream("| a | b |\n|---|---|\n| 1 | 2 |\n")), "prints a table as text"),
    (code(stream("fine\n"), tags=["raises-exception"]), "tagged raises-exception but shows 0 errors"),
    (code(display({"image/png": png(120, 80), "text/plain": "<Figure>"})), "image 120 px wide"),
]


def doctored_notebooks() -> dict[str, nbformat.NotebookNode]:
    """Notebooks that break the rules: one cell per rule, and a real notebook whose plot was saved as text."""
    rules = nbformat.v4.new_notebook()
    rules.cells = [nbformat.v4.new_markdown_cell("# doctored")] + [cell for cell, _ in DOCTORED]
    clean = nbformat.v4.new_notebook()
    clean.cells = [
        nbformat.v4.new_markdown_cell("# clean"),
        code(stream("one screen\n" * SCREEN_LINES)),
        code(ERROR, tags=["raises-exception"]),
        code(display({"image/png": png(500, 300), "text/plain": "<Figure>"})),
        code(display({"text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "table"})),
    ]
    no_plot = nbformat.read(NOTEBOOKS / "06_activation_additions.ipynb", as_version=4)  # as with MPLBACKEND=Agg
    for cell in no_plot.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("image/png", None)
    return {"rules": rules, "clean": clean, "no_plot": no_plot}


@pytest.fixture(scope="module")
def doctored(tmp_path_factory) -> dict[str, tuple[nbformat.NotebookNode, str]]:
    folder = tmp_path_factory.mktemp("doctored")
    notebooks = doctored_notebooks()
    for name, notebook in notebooks.items():
        nbformat.write(notebook, folder / f"{name}.ipynb")
    html = render([folder / f"{name}.ipynb" for name in notebooks], folder)
    return {name: (notebooks[name], html[name]) for name in notebooks}


@pytest.mark.parametrize("index", range(len(DOCTORED)), ids=[why.split(":")[0] for _, why in DOCTORED])
def test_checks_catch_a_doctored_cell(index, doctored):
    found = problems(*doctored["rules"])
    mine = [line for line in found if line.startswith(f"cell {index + 1} ")]
    assert len(mine) >= 1 and DOCTORED[index][1] in "\n".join(mine), found


def test_checks_pass_a_clean_page(doctored):
    assert problems(*doctored["clean"], figures=1, tables=1) == []


def test_checks_catch_a_plot_saved_without_its_image(doctored):
    found = problems(*doctored["no_plot"], figures=FIGURES["06_activation_additions"])
    assert any("a plot saved without its image" in line for line in found), found
    assert any("teaches with 1" in line for line in found), found
