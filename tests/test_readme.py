"""The README's quickstart runs as written, so the README cannot drift from the code.

The one substitution, as the README says: with no model hub, the line that loads the model with
``from_pretrained`` is replaced by the commented ``# offline:`` line below it (the same
SmolLM2-135M-Instruct, from the GGUF file the package ships).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def quickstart_code() -> str:
    """The first python block under the README's "Quickstart" heading, with the offline substitution."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    lines = code.splitlines()
    hub = [i for i, line in enumerate(lines) if "from_pretrained(name)" in line]
    offline = [i for i, line in enumerate(lines) if line.startswith("# offline: ")]
    assert len(hub) == 1 and offline == [hub[0] + 1], "the quickstart's model lines changed; update this test"
    lines[hub[0]] = lines.pop(offline[0]).removeprefix("# offline: ")
    return "\n".join(lines)


def test_the_readme_is_a_guide_of_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_quickstart_runs_and_steers(capsys):
    code = quickstart_code()
    assert 'load("smollm2-135m")' in code
    torch.manual_seed(0)
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(code, "README.md quickstart", "exec"), namespace)
    printed = capsys.readouterr().out
    model, prompt, steered, spec = namespace["model"], namespace["prompt"], namespace["out"], namespace["spec"]
    assert printed.strip().startswith("Last week my sister told me that") and len(printed) > 60
    assert spec.layer == 21 and abs(spec.vector.norm().item() - 1) < 1e-5 and spec.coeff > 0
    # The block removed every hook, and the same seed without steering writes other tokens.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.manual_seed(0)
    with torch.no_grad():
        unsteered = model.generate(**prompt, max_new_tokens=40, do_sample=True, top_p=0.3)
    assert not torch.equal(unsteered, steered)
