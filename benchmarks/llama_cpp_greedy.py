"""A vector found here, run by llama.cpp: SmolLM2's warmer setting, greedy, in both runtimes.

    python -m benchmarks.llama_cpp_greedy          # ~30 s; needs llama-cpp-python (see README)

Writes ``warm.gguf`` with save_control_vector (block 21's resid_pre = direction.20), then
greedy-decodes "I hate you because" in llama.cpp (the Q4_1 GGUF our SmolLM2 is converted from)
without and with it, and here with pytorch_hooks without and with load_control_vector's specs.
Writes benchmarks/results/llama_cpp_greedy.md.

libllama has no file loader for control vectors (that is common.cpp's, in llama-cli), so the
file -> buffer step is done here as common_control_vector_load_one does it: direction.N at
offset n_embd * (N - 1); ``llama_set_adapter_cvec`` then applies it as ``--control-vector`` would.
"""

from __future__ import annotations

import ctypes
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from steering_backends import backend
from steering_backends.layout import dims
from steering_backends.models import load, sentiment_spec, smollm2_gguf
from steering_backends.portable import load_control_vector, save_control_vector

PROMPT, N_NEW = "I hate you because", 30
OUT = Path(__file__).resolve().parent / "results" / "llama_cpp_greedy.md"


def llama_cpp_buffer(path: Path, n_layers: int, d_model: int) -> np.ndarray:
    """The flat [(n_layers - 1) * d_model] buffer llama.cpp builds from a control-vector file."""
    buffer = np.zeros(d_model * (n_layers - 1), np.float32)
    for tensor in gguf.GGUFReader(path).tensors:
        n = int(tensor.name.removeprefix("direction."))
        buffer[d_model * (n - 1) : d_model * n] += tensor.data
    return buffer


def main() -> None:
    import llama_cpp

    torch.set_grad_enabled(False)
    model, tok = load("smollm2-135m")
    n_layers, d_model = dims(model)
    warm = sentiment_spec(model, tok, +1)
    path = Path(tempfile.mkdtemp()) / "warm.gguf"
    save_control_vector([warm], path, model_hint="llama", n_layers=n_layers)
    buffer = llama_cpp_buffer(path, n_layers, d_model)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]

    llm = llama_cpp.Llama(str(smollm2_gguf()), n_ctx=128, verbose=False, n_threads=2)

    def llama(steer: bool) -> str:
        pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if steer else None
        size, start, end = (buffer.size, 1, n_layers) if steer else (0, -1, -1)
        assert llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, pointer, size, d_model, start, end) == 0
        llm.reset()  # or generate() reuses the KV cache of a prompt computed under the other setting
        tokens = []
        for token in llm.generate(ids[0].tolist(), temp=0.0, top_k=1, reset=True):
            tokens.append(token)
            if len(tokens) == N_NEW:
                break
        return tok.decode(tokens)

    def ours(specs) -> str:
        with backend("pytorch_hooks").steer(model, specs):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_NEW, do_sample=False)
        return tok.decode(out[0, ids.shape[1] :])

    rows = [
        ("llama.cpp", "unsteered", llama(False)),
        ("llama.cpp", "`warm.gguf` (direction.20)", llama(True)),
        ("torch, pytorch_hooks", "unsteered", ours([])),
        ("torch, pytorch_hooks", "`load_control_vector(warm.gguf)`", ours(load_control_vector(path))),
    ]
    llm.close()
    lines = [
        f"Greedy, {N_NEW} tokens, prompt {PROMPT!r}; warm = sentiment_spec(+1): resid_pre of block "
        f"{warm.layer}, coeff {warm.coeff:.1f}. llama-cpp-python {llama_cpp.__version__}.",
        "",
        "| runtime | steering | completion |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c!r} |" for a, b, c in rows),
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
