"""Write notebooks 01-05 and 09 from one skeleton, so that they differ only where the backend does.

    python notebooks/backend_skeleton.py                   # rewrite all six notebooks, without outputs
    python notebooks/backend_skeleton.py 09_nnsight.ipynb  # rewrite only the ones named
    python notebooks/execute.py 09_nnsight.ipynb           # then run one and save its outputs

Every notebook gets the same headings and cells in the same order; a cell is either shared
text or one entry per backend. A few cells belong to one notebook: 02's colder table, 05's
annahdo variant, and each notebook's ARENA-style exercises (stubs tagged ``exercise-stub``,
checked by notebooks/exercises/checks.py; solutions in notebooks/solutions/). Edit here, not in
the .ipynb files: a rewrite drops outputs, so re-run the notebooks afterwards.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the package, one folder up
sys.path.insert(0, str(HERE))  # install_cell.py, beside this file
import install_cell  # noqa: E402

from steering_backends import BACKENDS  # noqa: E402

NOTEBOOKS = dict(
    zip(
        BACKENDS,
        [
            "01_custom_wrapper.ipynb",
            "02_pytorch_hooks.ipynb",
            "03_baukit_tracedict.ipynb",
            "04_transformer_lens.ipynb",
            "05_bias_editing.ipynb",
            "09_nnsight.ipynb",
        ],
        strict=True,
    )
)


def text(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


# ---------------------------------------------------------------------------------------------
# Preamble

TITLE = {
    "custom_wrapper": "# 01 · Steering with a custom module wrapper",
    "pytorch_hooks": "# 02 · Steering with PyTorch hooks",
    "baukit_tracedict": "# 03 · Steering with baukit's `Trace`",
    "transformer_lens_hooks": "# 04 · Steering with TransformerLens hook points",
    "bias_editing": "# 05 · Steering by editing biases, with no hooks",
    "nnsight_trace": "# 09 · Steering with nnsight",
}
GOAL = {
    "custom_wrapper": "Put a small module in place of one block: it keeps or edits what the block is called with, "
    "then calls the block. No hooks at all: the model simply runs a different module.",
    "pytorch_hooks": "Register a forward pre-hook on one block that caches its input, then one that returns its "
    "input plus a vector. This is the plainest way to steer a PyTorch model, and the reference the other "
    "backends are compared with.",
    "baukit_tracedict": 'baukit names modules by their dotted names: `Trace(model, "model.layers.18", '
    "retain_input=True)` keeps a block's input, and `edit_output=` rewrites a module's output. It edits "
    "outputs only, so steering block L's input means editing the output of the module before it.",
    "transformer_lens_hooks": "TransformerLens names every activation: `blocks.{L}.hook_resid_pre` is block L's "
    "input. Read it with `run_with_cache`, and steer it with a hook function passed to `run_with_hooks`.",
    "bias_editing": "A constant added to a layer's output is a constant added to its bias: editing the bias "
    "that ends block L − 1 steers block L's input with no code running in the forward. There is nothing to "
    "hook, so activations are read with HF's own `output_hidden_states=True`.",
    "nnsight_trace": "nnsight wraps the model, and the code inside `with lm.trace(...):` reads and assigns any "
    "module's `.input` and `.output` as the model reaches it: `block.input.save()` keeps a block's input, and "
    "`block.input = block.input + addition` steers it. It comes from the lab that wrote baukit, and with "
    "`remote=True` the same trace code runs on NDIF's hosted models.",
}
LEARN = {
    "custom_wrapper": [
        "how a wrapper that keeps its input reads a block's input (`resid_pre`), and how one that adds to it steers;",
        "why a wrapper must answer attribute lookups for the block it stands in for;",
    ],
    "pytorch_hooks": [
        "how a forward pre-hook caches a block's input, and how one that returns a new input steers;",
        "how a forward hook edits an output that may be a tuple or a tensor, and when `hidden_states` shows it;",
    ],
    "baukit_tracedict": [
        "how `Trace(...).input` / `.output` read a module, and `edit_output=` steers;",
        "why block L's input is edited as block L − 1's output, and as the embedding's output at block 0;",
    ],
    "transformer_lens_hooks": [
        "how to boot TransformerLens 4's `TransformerBridge` from a loaded HF model, with no hub call;",
        "`run_with_cache`, `run_with_hooks` and `bridge.hooks(...)`, and the BOS token TransformerLens adds;",
    ],
    "bias_editing": [
        "the `hidden_states[L]` / `hidden_states[L + 1]` convention of `output_hidden_states=True`;",
        "why `x @ W + (b + v)` steers like `(x @ W + b) + v`, and how a bias-free projection gets a temporary bias;",
    ],
    "nnsight_trace": [
        "how `with lm.trace(...)` reads a block's `.input` and steers by assigning a new one;",
        "why steering `lm.generate` needs a loop over `tracer.iter`, and why a plain HF call is not steered;",
    ],
}
LIBRARY_FILE = {name: f"steering_backends/{name}.py" for name in BACKENDS}


def preamble(name: str) -> str:
    learn = "\n".join(f"- {line}" for line in LEARN[name])
    return "\n".join(
        [
            TITLE[name],
            "",
            GOAL[name],
            "",
            "**You will learn**",
            "- to build the steering vector this way, from 64 warm/cold sentence pairs, and check it against the "
            "library;",
            learn,
            f"- that the library file `{LIBRARY_FILE[name]}` gives the same logits, and what the measured "
            "setting does to sampled text.",
            "",
            "**Model.** `STEERING_MODEL` picks it: the default, `smollm2-135m`, is SmolLM2-135M-Instruct from a GGUF "
            "file with Q4_1-quantized weights, dequantized to float32, offline on a CPU (Llama architecture, blocks in "
            "`model.model.layers`); its outputs do not match the hub checkpoint's. `gpt2-xl` runs where the model hub "
            "is reachable (blocks in `model.transformer.h`), at block 21 too, which was measured on SmolLM2 only. "
            "Re-run with "
            f"`python notebooks/execute.py {NOTEBOOKS[name]}`.",
        ]
    )


# ---------------------------------------------------------------------------------------------
# 1. Setup

IMPORTS = {
    "custom_wrapper": "import contextlib\n",
    "pytorch_hooks": "import contextlib\n",
    "baukit_tracedict": "import contextlib\n",
    "transformer_lens_hooks": "",
    "bias_editing": "import contextlib\n",
    "nnsight_trace": "import copy\n",
}
THIRD_PARTY = {name: "" for name in BACKENDS} | {
    "baukit_tracedict": "from baukit import Trace\n",
    "nnsight_trace": "from nnsight import TransformersModel\n",
}
FIRST_PARTY = {name: "" for name in BACKENDS} | {
    "transformer_lens_hooks": "from steering_backends.transformer_lens_hooks import bridge_from_hf\n"
}


def setup_code(name: str) -> str:
    return (
        f"{IMPORTS[name]}import json\nimport os\nimport sys\nimport warnings\n\n"
        'warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, without notebook widgets\n'
        'sys.path.insert(0, os.path.abspath(".."))  # the notebooks run from notebooks/; the package is one up\n'
        f"import torch\nimport transformers\n{THIRD_PARTY[name]}\n"
        "from steering_backends import SteeringSpec\n"
        "from steering_backends.compare import compare\n"
        "from steering_backends.models import load\n"
        f"{FIRST_PARTY[name]}\n"
        "transformers.utils.logging.disable_progress_bar()  # keeps the saved outputs readable\n"
        "transformers.utils.logging.set_verbosity_error()  # generate's notes on SmolLM2's sampling defaults\n"
        'MODEL = os.environ.get("STEERING_MODEL", "smollm2-135m")\n'
        "torch.manual_seed(0)\n"
        "torch.set_grad_enabled(False)  # inference only: no activations are kept for a backward pass\n"
        'device = "cuda" if torch.cuda.is_available() else "cpu"\n'
        "model, tokenizer = load(MODEL)\n"
        "model = model.to(device).eval()\n"
        'blocks = model.model.layers if hasattr(model, "model") else model.transformer.h  # Llama-like / GPT-2\n'
        'print(f"{MODEL}: {len(blocks)} blocks, d_model {model.config.hidden_size}, on {device}")'
    )


TOKENS = '''
def tokens(text: str) -> torch.Tensor:
    """[1, T] ids on the model's device: BOS, then the text (BOS keeps the first word off the attention sink).
    A tokenizer without BOS (Qwen2's) gets EOS in its place, as TransformerLens does."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    first = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id
    return torch.tensor([[first, *ids]], device=device)


def batch(texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """[B, T] ids, row i tokens(texts[i]) then padding on the right, and each row's length (BOS included).
    Called with no mask and no position_ids, every row gets positions 0...T-1, so its real tokens sit where
    they would alone, and causal attention hides the padding after them: they read as alone, up to float
    rounding."""
    rows = [tokens(text)[0] for text in texts]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.eos_token_id)
    return ids, [len(row) for row in rows]
'''
MODEL_STATE = '''
def model_state(net: torch.nn.Module) -> list:
    """Each module's name, class, own parameter names and hook counts: what steering must leave as it was."""
    state = []
    for name, m in net.named_modules():
        params = [p for p, _ in m.named_parameters(recurse=False)]
        state.append((name, type(m).__name__, params, len(m._forward_pre_hooks), len(m._forward_hooks)))
    return state
'''
HF_HELPERS = (
    text(TOKENS)
    + '''


def complete(ids: torch.Tensor, n_new: int = 20) -> str:
    """Greedy continuation of ids [1, T], decoded with the KV cache."""
    settings = dict(max_new_tokens=n_new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


'''
    + text(MODEL_STATE)
    + """


prompt = tokens("I hate you because")
unsteered_logits, unsteered_text = model(prompt).logits, complete(prompt)
# transformers 5 hooks every block the first time output_hidden_states=True is used: do it before
# the snapshot, so that the self-check at the end finds exactly these hooks and no others.
model(prompt, output_hidden_states=True)
state_at_start = model_state(model)
"""
)
BRIDGE_HELPERS = (
    "bridge = bridge_from_hf(model, tokenizer)  # a copy: the bridge takes over the HF model it wraps\n\n\n"
    + text(TOKENS)
    + '''


def complete(ids: torch.Tensor, n_new: int = 20) -> str:
    """Greedy continuation of ids [1, T] through the bridge, with its KV cache."""
    out = bridge.generate(ids, max_new_tokens=n_new, do_sample=False, stop_at_eos=False, verbose=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


'''
    + text(MODEL_STATE)
    + """


prompt = tokens("I hate you because")
unsteered_logits, unsteered_text = bridge(prompt), complete(prompt)
# The bridge hooks its blocks on its first run, and transformers 5 the wrapped model's on the first
# cached run: do both before the snapshot, so that the self-check at the end finds these and no others.
bridge.run_with_cache(prompt)
state_at_start = model_state(bridge)
"""
)
NNSIGHT_HELPERS = (
    "# nnsight wraps the loaded model, with no hub call. It sets the pad token and left padding on the tokenizer\n"
    "# it is given, so it gets a copy; it instruments every module of `model` too, inert outside nnsight's runs.\n"
    'lm = TransformersModel(model, task="text-generation", tokenizer=copy.deepcopy(tokenizer))\n'
    'lm_blocks = lm.model.layers if hasattr(model, "model") else lm.transformer.h  # the blocks, as nnsight envoys\n'
    "N_NEW = 20  # new tokens, exactly: min_new_tokens keeps EOS from ending generate before a loop over N_NEW steps\n"
    "GREEDY = dict(max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, pad_token_id=tokenizer.eos_token_id)"
    "\n\n\n"
    + text(TOKENS)
    + '''


def logits(ids: torch.Tensor) -> torch.Tensor:
    """[1, T, vocab] logits of ids [1, T], from a trace: nnsight steers only runs that go through it."""
    with lm.trace(ids):
        out = lm.output.logits.save()  # .save() keeps a value after the trace
    return out


def complete(ids: torch.Tensor) -> str:
    """Greedy continuation of ids [1, T] through nnsight's generate, with the KV cache."""
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), **GREEDY)  # [1, T + N_NEW] ids
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


'''
    + text(MODEL_STATE)
    + """


prompt = tokens("I hate you because")
unsteered_logits, unsteered_text = logits(prompt), complete(prompt)
# transformers 5 hooks every block the first time output_hidden_states=True is used: do it before
# the snapshot, so that the self-check at the end finds exactly these hooks and no others.
model(prompt, output_hidden_states=True)
state_at_start = model_state(model)
"""
)
HELPERS = {name: HF_HELPERS for name in BACKENDS} | {
    "transformer_lens_hooks": BRIDGE_HELPERS,
    "nnsight_trace": NNSIGHT_HELPERS,
}

# ---------------------------------------------------------------------------------------------
# 2. Reading activations

READING_INTRO = (
    "## 2. Reading activations: the steering vector\n\n"
    "The vector is a mean difference: block L's input (`resid_pre`) for each of 64 warm sentences minus the same "
    "for its cold twin (`steering_backends/data/contrast_pairs.jsonl`), each sentence averaged over its tokens, "
    "then averaged over the pairs and scaled to length 1. Each sentence is read after BOS, which is left out of the "
    "average: trained models make position 0 an *attention sink*, and its hidden state is about 100× the norm of "
    "the other tokens' (SmolLM2, block 21). The "
    "coefficient is relative: 0.25 × the median token norm at that block (over 16 neutral reference sentences), a "
    "fraction of a typical token, which corrects for the stream's growth with depth (whether it evens out effects "
    "across blocks: notebook 07, where on this model it did not). Block 21 and 0.25 are the measured warmer "
    "setting for SmolLM2: the sweep's choice, judged on held-out prompts (glossary: notebook 00).\n\n"
    "The sentences are read a list at a time, one forward for all 64 warm ones: `batch` (section 1) pads them on "
    "the right, so each row's tokens keep the positions they have alone, and each row is cut back to its own "
    "length. On a CPU a forward of this small model spends most of its time reading the weights, whatever the "
    "batch: on 2 cores the 64 warm sentences take about 14 s one at a time and 2 s as one batch. "
    "`row[1:n]` keeps the text's tokens: BOS at index 0 and the padding from index `n` on are dropped (`n` counts "
    "BOS). (Left padding, which batched `generate` needs, would need an attention mask and position ids counted "
    "from it, as `steering_backends.prompts.hf_positions` makes them.)\n\n"
)
READING_MD = {
    "custom_wrapper": "A wrapper reads it: a module that stands in for the block, keeps what it was called with, "
    "and calls the block.",
    "pytorch_hooks": "A forward pre-hook reads block L's input: it runs just before the block, sees the block's "
    "arguments and keeps the first one, the hidden states. (Notebook 00 read the same tensor with a forward hook, "
    "from `args[0]`; a pre-hook is the hook made for inputs.)",
    "baukit_tracedict": "`Trace` reads it: `retain_input=True` keeps the input of the named module, "
    "`retain_output=True` (the default) its output.",
    "transformer_lens_hooks": "`run_with_cache` reads it: one forward that returns the logits and a cache keyed by "
    "hook name. Given ids it runs them as they are; given a string, it would tokenize it and prepend BOS itself.",
    "bias_editing": "Bias editing has no way to read activations, so read them with HF's own "
    "`output_hidden_states=True`: `n_layers + 1` tensors `[batch, pos, d_model]`, where `hidden_states[L]` is "
    "block L's input and `hidden_states[L + 1]` its output.",
    "nnsight_trace": "nnsight reads it: inside `with lm.trace(ids):` a block's `.input` is its first input (the first "
    "positional argument, or the first keyword one if there is none), which HF blocks are called with as the "
    "hidden states; `.inputs` would be all of them, `(args, kwargs)`. `.save()` keeps the value after the trace.",
}
READING_CODE = {
    "custom_wrapper": '''
class Wrapper(torch.nn.Module):
    """Stands in for a block: holds it, and answers every attribute lookup as the block would."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # our own parameters, buffers and submodules (self.block)
        except AttributeError:
            return getattr(self.block, name)  # anything else: ask the block


class KeepInput(Wrapper):
    """Keeps the hidden states [batch, pos, d_model] the block is called with: its resid_pre."""

    def forward(self, hidden_states, *args, **kwargs):
        self.kept = hidden_states
        return self.block(hidden_states, *args, **kwargs)


@contextlib.contextmanager
def swapped(layer: int, wrapper: Wrapper):
    """blocks[layer] is `wrapper` inside the block; the original is back on exit, even on error."""
    original = blocks[layer]
    blocks[layer] = wrapper
    try:
        yield wrapper
    finally:
        blocks[layer] = original


def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    with swapped(layer, KeepInput(blocks[layer])) as keep:
        model(ids)
    return [row[1:n] for row, n in zip(keep.kept, lengths, strict=True)]  # kept: [batch, pos, d_model]
''',
    "pytorch_hooks": '''
def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    cache = {}

    def keep_input(module, args, kwargs):  # runs before the block; the hidden states come first
        cache["resid_pre"] = args[0] if args else kwargs["hidden_states"]  # [batch, pos, d_model]

    handle = blocks[layer].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        model(ids)
    finally:
        handle.remove()  # hooks are global state: always remove them
    return [row[1:n] for row, n in zip(cache["resid_pre"], lengths, strict=True)]
''',
    "baukit_tracedict": '''
BLOCKS = "model.layers" if hasattr(model, "model") else "transformer.h"  # as named_modules() spells them


def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    with Trace(model, f"{BLOCKS}.{layer}", retain_input=True, retain_output=False) as trace:
        model(ids)
    # .input is the block's positional argument, or a tuple of them (GPT-2 blocks get four)
    hidden = trace.input if torch.is_tensor(trace.input) else trace.input[0]  # [batch, pos, d_model]
    return [row[1:n] for row, n in zip(hidden, lengths, strict=True)]
''',
    "transformer_lens_hooks": '''
def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = bridge.run_with_cache(ids, names_filter=name)  # ids: BOS is already there
    return [row[1:n] for row, n in zip(cache[name], lengths, strict=True)]  # [batch, pos, d_model]
''',
    "bias_editing": '''
def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    hidden_states = model(ids, output_hidden_states=True).hidden_states  # n_layers + 1 x [batch, pos, d_model]
    return [row[1:n] for row, n in zip(hidden_states[layer], lengths, strict=True)]  # [layer]: block layer's input
''',
    "nnsight_trace": '''
def resid_pre(texts: list[str], layer: int) -> list[torch.Tensor]:
    """Block `layer`'s input for each text, one forward for all: [tokens, d_model] each, BOS left out."""
    ids, lengths = batch(texts)
    with lm.trace(ids):
        hidden = lm_blocks[layer].input.save()  # the hidden states the block is called with: [batch, pos, d_model]
    return [row[1:n] for row, n in zip(hidden, lengths, strict=True)]
''',
}
READ_VECTOR = """


DATA = os.path.join("..", "steering_backends", "data")
with open(os.path.join(DATA, "contrast_pairs.jsonl")) as f:
    pairs = [(r["positive"], r["negative"]) for r in map(json.loads, f) if r["concept"] == "sentiment"]
with open(os.path.join(DATA, "reference.txt")) as f:
    reference = [line.strip() for line in f if line.strip()]  # neutral sentences, for a typical token's norm


def mean_difference_spec(layer: int, relative: float) -> SteeringSpec:
    \"\"\"Mean over pairs of warm − cold (each averaged over its tokens), unit length; coeff: relative × norm.\"\"\"
    warm_rows, cold_rows = resid_pre([w for w, _ in pairs], layer), resid_pre([c for _, c in pairs], layer)
    diffs = torch.stack([w.mean(0) - c.mean(0) for w, c in zip(warm_rows, cold_rows, strict=True)])  # [pairs, d]
    direction = diffs.mean(0) / diffs.mean(0).norm()  # [d_model]
    typical = torch.cat(resid_pre(reference, layer)).norm(dim=-1).median()  # over all tokens
    return SteeringSpec(layer, "resid_pre", direction, relative * typical.item())


warm = mean_difference_spec(21, 0.25)  # the measured warmer setting for SmolLM2: block 21 of 30, 0.25
print(f"{len(pairs)} pairs; block {warm.layer} resid_pre, |vector| {warm.vector.norm():.2f}, coeff {warm.coeff:.1f}")"""
CHECK_VECTOR = {
    name: (
        "from steering_backends.vectors import load_pairs, load_reference_texts, pair_differences, residual_norm\n\n"
        "# the package's recipe reads the same sentences in left-padded batches: equal up to float rounding\n"
        'diffs = pair_differences(model, tokenizer, load_pairs("sentiment"), warm.layer, reduce="mean", '
        "progress=False)\n"
        "library_norm = residual_norm(model, tokenizer, load_reference_texts(), warm.layer)\n"
        "gap = ((warm.vector - diffs.mean(0) / diffs.mean(0).norm()).norm()).item()\n"
        f"assert gap < {tol} and abs(warm.coeff / (0.25 * library_norm) - 1) < {tol}, gap\n"
        'print(f"inline == steering_backends.vectors (pair_differences, residual_norm): difference {gap:.0e}")'
    )
    for name, tol in [(name, "1e-5" if name != "transformer_lens_hooks" else "1e-4") for name in BACKENDS]
}

# ---------------------------------------------------------------------------------------------
# 3. Steering inline

STEER_INTRO = (
    "## 3. Steering, written inline\n\n"
    "The measured setting adds `warm.coeff × warm.vector` to block `warm.layer`'s input at every position. "
)
STEER_MD = {
    "custom_wrapper": "A wrapper that adds it to its input and then calls the block does that. During `generate` "
    "the wrapper runs at every decoding step, on the one new token, so generated tokens are steered too.",
    "pytorch_hooks": "A forward pre-hook registered with `with_kwargs=True` may return replacement arguments: the "
    "hidden states plus the addition. They come first, positionally or as `hidden_states=`. During `generate` "
    "the hook runs at every decoding step, on the one new token.",
    "baukit_tracedict": "`Trace` edits outputs only, so add it to the output of the module that feeds block "
    "`warm.layer`: block `warm.layer − 1`, or the embedding when the layer is 0. `edit_output(output)` returns "
    "the replacement.",
    "transformer_lens_hooks": "A hook function `fn(activation, hook)` returns the new activation. "
    "`run_with_hooks` runs one forward with it and removes it afterwards; `generate` runs many forwards, so there "
    "the `bridge.hooks(...)` context manager keeps it on for the whole block.",
    "bias_editing": "Block L's input is block L − 1's output, and the last thing block L − 1 adds to the residual "
    "stream is its MLP's output projection, `x @ W + b`. Adding the vector to `b` adds it to block L's input at "
    "every position, with no code in the forward. Llama's `down_proj` has no bias, so it gets one for the "
    "duration; GPT-2's `c_proj` has one, saved and restored bitwise.",
    "nnsight_trace": "Inside a trace, assigning to a block's `.input` replaces the hidden states it is called with: "
    "`block.input = block.input + addition` makes a new tensor, as every backend here does. `lm.generate` runs the "
    "model once for the prompt and once per new token, and each run reaches the block anew: a loop over "
    "`tracer.iter[:N_NEW]` repeats the assignment at each of those steps (`GREEDY` pins the count with "
    "`min_new_tokens`).",
}
ADDITION = "addition = (warm.coeff * warm.vector).to(device, model.dtype)  # [d_model], in the stream's dtype\n"
SHOW_GREEDY = '\nprint(f"unsteered: {unsteered_text!r}\\n   inline: {inline_text!r}")'
STEER_CODE = {
    "custom_wrapper": '''
class AddToInput(Wrapper):
    """block(hidden + addition, ...): steers resid_pre. hidden: [batch, pos, d_model]."""

    def __init__(self, block: torch.nn.Module, addition: torch.Tensor) -> None:
        super().__init__(block)
        self.addition = addition  # [d_model], broadcast over batch and positions

    def forward(self, hidden_states, *args, **kwargs):
        return self.block(hidden_states + self.addition, *args, **kwargs)  # a new tensor: the caller's is intact


'''
    + ADDITION
    + """with swapped(warm.layer, AddToInput(blocks[warm.layer], addition)):
    inline_logits, inline_text = model(prompt).logits, complete(prompt)""",
    "pytorch_hooks": '''
@contextlib.contextmanager
def add_to_input(layer: int, addition: torch.Tensor):
    """Inside the block, blocks[layer] is called with hidden + addition. hidden: [batch, pos, d_model]."""

    def hook(module, args, kwargs):  # returns the replacement (args, kwargs)
        if args:  # a new tensor, not an in-place add: the caller's stays intact
            return (args[0] + addition, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + addition}

    handle = blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


'''
    + ADDITION
    + """with add_to_input(warm.layer, addition):
    inline_logits, inline_text = model(prompt).logits, complete(prompt)""",
    "baukit_tracedict": '''
EMBED = "model.embed_tokens" if hasattr(model, "model") else "transformer.drop"  # its output is block 0's input


def feeding(layer: int) -> str:
    """Name of the module whose output is block `layer`'s input: the block before it, or the embedding."""
    return f"{BLOCKS}.{layer - 1}" if layer > 0 else EMBED


@contextlib.contextmanager
def add_to_input(layer: int, addition: torch.Tensor):
    """Inside the block, block `layer`'s input is hidden + addition. hidden: [batch, pos, d_model]."""

    def edit(output):  # the return value replaces the module's output
        if isinstance(output, tuple):  # transformers 4's GPT2Block: (hidden, ...)
            return (output[0] + addition, *output[1:])
        return output + addition  # a new tensor, not an in-place add: the original may be read elsewhere

    with Trace(model, feeding(layer), retain_output=False, edit_output=edit):
        yield


'''
    + ADDITION
    + """with add_to_input(warm.layer, addition):
    inline_logits, inline_text = model(prompt).logits, complete(prompt)""",
    "transformer_lens_hooks": """
def add(addition: torch.Tensor):
    def hook_fn(resid, hook):  # resid: [batch, pos, d_model]; returns a new tensor, the cached one is intact
        return resid + addition

    return hook_fn


"""
    + ADDITION
    + """fwd_hooks = [(f"blocks.{warm.layer}.hook_resid_pre", add(addition))]
inline_logits = bridge.run_with_hooks(prompt, fwd_hooks=fwd_hooks)
with bridge.hooks(fwd_hooks=fwd_hooks):  # generate: the hook stays on for every decoding step
    inline_text = complete(prompt)""",
    "bias_editing": '''
@contextlib.contextmanager
def add_to_input(layer: int, addition: torch.Tensor):
    """Inside the block, block `layer`'s input (layer >= 1) is hidden + addition, through a bias of block layer - 1."""
    mlp = blocks[layer - 1].mlp
    proj = mlp.down_proj if hasattr(mlp, "down_proj") else mlp.c_proj  # Llama-like / GPT-2: it ends the block
    saved = None if proj.bias is None else proj.bias.detach().clone()
    with torch.no_grad():  # a parameter that requires grad cannot be edited in place otherwise
        if saved is None:  # a bias-free Linear: give it a bias that is exactly the addition
            proj.bias = torch.nn.Parameter(addition.clone(), requires_grad=False)
        else:
            proj.bias += addition
    try:
        yield
    finally:
        with torch.no_grad():
            if saved is None:
                proj.register_parameter("bias", None)  # as it was: no bias at all
            else:
                proj.bias.copy_(saved)  # bitwise; subtracting the vector again would leave rounding errors


'''
    + ADDITION
    + """with add_to_input(warm.layer, addition):
    inline_logits, inline_text = model(prompt).logits, complete(prompt)""",
    "nnsight_trace": ADDITION
    + """block = lm_blocks[warm.layer]
with lm.trace(prompt):
    block.input = block.input + addition  # a new tensor [batch, pos, d_model] replaces the block's first input
    inline_logits = lm.output.logits.save()
with lm.generate(prompt, attention_mask=torch.ones_like(prompt), **GREEDY) as tracer:
    for _ in tracer.iter[:N_NEW]:  # one step per forward: step 0 is the prompt, then one new token each
        block.input = block.input + addition
    generated = tracer.result.save()  # [1, T + N_NEW] ids
inline_text = tokenizer.decode(generated[0, prompt.shape[1] :], skip_special_tokens=True)""",
}

# ---------------------------------------------------------------------------------------------
# 4. The library file

LIBRARY_EXTRA = {
    "custom_wrapper": "wraps the decoder too, to record token positions, and",
    "pytorch_hooks": "adds a pre-hook on the decoder to record token positions, and",
    "baukit_tracedict": "uses `TraceDict` for every name at once plus one plain PyTorch pre-hook for token "
    "positions (baukit's hooks see no keyword arguments), and",
    "transformer_lens_hooks": "adds one plain PyTorch pre-hook on the wrapped HF decoder for token positions "
    "(a hook function sees no attention mask), and",
    "bias_editing": "",
    "nnsight_trace": "stores the assignment as one persistent edit (`lm.edit(inplace=True)`) that nnsight replays "
    "in every later trace and `generate` of `lm`, reads token positions from the decoder's own `.inputs` at every "
    "step, and",
}
LIBRARY_AFTER = {name: "" for name in BACKENDS} | {
    "transformer_lens_hooks": " Against plain HF the bridge differs by float rounding, since it computes "
    "attention its own way (bounded in the self-check).",
    "bias_editing": " Against a hook it differs by rounding: `x @ W + (b + v)` sums in another order than "
    "`(x @ W + b) + v` (bounded in the self-check).",
    "nnsight_trace": " `steer` takes the nnsight model, never the HF one; `nnsight_from_hf(model, tokenizer)` builds "
    "one as setup did, on copies of the model and tokenizer (the self-check steers one).",
}


def library_md(name: str) -> str:
    scope = (
        "for any list of `[d_model]` `SteeringSpec`s at any site and block"
        if name == "bias_editing"
        else "for any list of `SteeringSpec`s: several sites and blocks, per-position vectors, padding- and "
        "KV-cache-aware positions"
    )
    extra = f" {LIBRARY_EXTRA[name]}" if LIBRARY_EXTRA[name] else ""
    return (
        "## 4. The same through the library file\n\n"
        f"`{LIBRARY_FILE[name]}` does this {scope}. It validates every spec before touching the model,{extra} "
        f"{'' if extra else 'and '}puts everything back in `finally`. On this spec it must give bitwise the "
        "logits and the greedy text of the inline version (asserted in the self-check)."
        f"{LIBRARY_AFTER[name]} The greedy texts are there to be compared token for token; section 5 judges the "
        "effect."
    )


def library_code(name: str) -> str:
    net = {"transformer_lens_hooks": "bridge", "nnsight_trace": "lm"}.get(name, "model")
    logits = {"transformer_lens_hooks": "bridge(prompt)", "nnsight_trace": "logits(prompt)"}.get(
        name, "model(prompt).logits"
    )
    imported = "nnsight_from_hf, steer" if name == "nnsight_trace" else "steer"
    return (
        f"from steering_backends.{name} import {imported}\n\n"
        f"with steer({net}, [warm]):\n"
        f"    library_logits, library_text = {logits}, complete(prompt)\n"
        'print(f"  library: {library_text!r}")'
    )


# ---------------------------------------------------------------------------------------------
# 4b. Bias editing only: annahdo's variant, the next block's input bias

VARIANT_MD = (
    "### Another bias: the next block's input (annahdo's variant)\n\n"
    "annahdo's bias-editing notebook (GPT-2-XL) folds the vector into block L's *input* instead: each projection "
    "`p` that reads the block's input norm (GPT-2's `attn.c_attn`; Llama's `q_proj`, `k_proj`, `v_proj`, which "
    "have no bias) gets the bias `p(v) = v @ W + b`, so it computes `normed @ W + v @ W + b = p(normed + v)`. "
    "That adds `v` to the norm's output, which only block L's attention reads. Below, the fold against a hook "
    "adding `v` to the norm's output and a hook adding it to the stream (ours), and how far each moves block L's "
    "input."
)
VARIANT_CODE = """
next_block = blocks[warm.layer]
input_norm = next_block.input_layernorm if hasattr(next_block, "input_layernorm") else next_block.ln_1
attention = next_block.self_attn if hasattr(next_block, "self_attn") else next_block.attn  # reads input_norm's output
readers = [attention.q_proj, attention.k_proj, attention.v_proj] if hasattr(attention, "q_proj") else [attention.c_attn]


@contextlib.contextmanager
def fold_into_next_bias(addition: torch.Tensor):
    \"\"\"annahdo's variant: each projection p reading the norm's output gets the bias p(addition) = addition @ W + b,
    so it computes p(normed + addition). On exit the original bias (or none) is back.\"\"\"
    originals = [proj.bias for proj in readers]  # Parameters, or None (Llama's q, k, v have no bias)
    folded = [torch.nn.Parameter(proj(addition), requires_grad=False) for proj in readers]  # computed before any edit
    for proj, bias in zip(readers, folded, strict=True):
        proj.bias = bias
    try:
        yield
    finally:
        for proj, bias in zip(readers, originals, strict=True):
            proj.register_parameter("bias", bias)  # the very Parameter that was there, or None


def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    \"\"\"Logits, block L's input (hidden_states[L]) and its norm's output, BOS left out: [tokens, d_model] each.\"\"\"
    kept = {}
    handle = input_norm.register_forward_hook(lambda module, args, output: kept.update(normed=output))
    try:
        out = model(prompt, output_hidden_states=True)
    finally:
        handle.remove()
    return out.logits, out.hidden_states[warm.layer][0, 1:], kept["normed"][0, 1:]


_, unsteered_input, unsteered_normed = run()
with fold_into_next_bias(addition):
    folded_logits, folded_input, _ = run()
with add_to_input(warm.layer, addition):  # ours: the bias that ends block L - 1, so block L's input
    stream_logits, stream_input, _ = run()
handle = input_norm.register_forward_hook(lambda module, args, output: output + addition)  # a tensor: add to it
try:
    normed_logits, _, _ = run()
finally:
    handle.remove()

for name, logits in [("the norm's output", normed_logits), ("the stream (ours)", stream_logits)]:
    print(f"folded vs a hook adding to {name}: max |Δlogit| {(folded_logits - logits).abs().max():.1e}")
for name, block_input in [("folded", folded_input), ("ours", stream_input)]:
    moved = (block_input - unsteered_input).norm(dim=-1).max()
    print(f"{name:>6}: block {warm.layer}'s input moves by {moved:.1f} per token (|addition| {addition.norm():.1f})")
print(
    f"a typical token: {unsteered_input.norm(dim=-1).median():.1f} in the stream, "
    f"{unsteered_normed.norm(dim=-1).median():.1f} at the norm's output"
)
assert (folded_logits - normed_logits).abs().max() <= 1e-4 * normed_logits.abs().max()  # the same, up to rounding
assert (folded_input == unsteered_input).all() and not (stream_input == unsteered_input).all()
"""
VARIANT_COMMENT_MD = (
    "The fold is the hook on the norm's output, up to rounding, and not ours: it leaves the residual stream "
    "entering block L as it was, so block L's MLP and every later block see the vector only through what "
    "attention made of it. Its units differ too: a typical token is about 30× smaller at the norm's output than in "
    "the stream, so the same vector is a far larger push there (annahdo reads hers at the norm's output). This "
    "repository's spec names a point of the residual stream, the one every backend adds to; the bias that ends "
    "block L − 1 adds exactly there, which is why bias editing gives the hooks' logits (self-check) and the fold "
    "cannot."
)


# ---------------------------------------------------------------------------------------------
# 5. Sampled completions

SAMPLING = (
    "`compare` samples each prompt unsteered and steered through `{name}` with the same seed, so steering is the "
    "only difference, and scores every completion: VADER sentiment from −1 to +1 (a rule-based word list: it "
    "counts words like 'love' and 'hate', not meaning) and perplexity under the *unsteered* model (higher: less "
    "fluent). It samples as the ActivationAdditions paper compared: temperature 1, top-p 0.3 (close to greedy), a "
    "frequency penalty of 1."
)
COMPARE_MD = {
    name: "## 5. A sampled pair, scored\n\n"
    + SAMPLING.format(name=name)
    + " One prompt and one seed here; notebook 02 shows the full table, warmer and colder."
    for name in BACKENDS
} | {
    "pytorch_hooks": "## 5. Sampled completions, scored\n\n"
    + SAMPLING.format(name="pytorch_hooks")
    + " Two held-out prompts, two seeds each, warmer and then colder (block 24, −0.35, the measured colder "
    "setting). The last lines give the mean sentiment per column and the pooled perplexity, exp(total NLL / "
    "total tokens), which is not the average of the ppl column."
}
COMPARE_MD["nnsight_trace"] += " It is given `lm`, not `model`: it samples through nnsight's `generate`."


def compare_code(name: str, spec: str, expect: str) -> str:
    net = {"transformer_lens_hooks": "bridge", "nnsight_trace": "lm"}.get(name, "model")
    if name == "pytorch_hooks":  # the reference: the full table, both directions
        head = (
            'prompts = ["I hate you because", "My first day at the new school was"]  # held out from the sweep\n'
            if spec == "warm"
            else "cold = mean_difference_spec(24, -0.35)  # the measured colder setting: block 24, -0.35\n"
        )
        return (
            head
            + f'compare({net}, tokenizer, prompts, [{spec}], backend="{name}", n=2, max_new_tokens=60, expect={expect})'
        )
    prompt = "Last week my sister told me that"  # held out; its unsteered samples sit near neutral
    args = [net, "tokenizer", f'"{prompt}"', "[warm]", f'backend="{name}"', "n=1", "max_new_tokens=60"]
    # laid out as ruff format lays out a call: on one line, else its arguments on one line, else one per line
    if len(call := f"compare({', '.join(args)})") <= 120:
        return call
    if len(inner := f"    {', '.join(args)}") <= 120:
        return f"compare(\n{inner}\n)"
    return "compare(\n" + "".join(f"    {arg},\n" for arg in args) + ")"


ONE_PAIR = (
    '**What the samples show.** The steered sample turns a worried aside ("I\'m not sure what to do", +0.13) '
    'into praise ("she has always been a wonderful partner and has always been a great inspiration to me", '
    "+0.97). Its perplexity under the unsteered model doubles (3.8 → 7.8): the price of the push."
)
COMMENT_MD = {name: ONE_PAIR for name in BACKENDS}
COMMENT_MD["transformer_lens_hooks"] = (  # the bridge samples with its own generate: another pair
    '**What the samples show.** The steered sample turns a worried aside ("I\'m not sure what to do", +0.14) '
    'into warmth ("I\'m excited to have a wonderful partner in this amazing journey", +0.98). Its perplexity '
    "under the unsteered model nearly doubles (3.1 → 6.1): the price of the push."
)
COMMENT_MD["pytorch_hooks"] = (
    "**What the samples show.** Warmer lifts all four rows (mean +0.62 → +0.97, perplexity ×1.20); colder "
    'lowers three of four (mean −0.20, perplexity ×1.57), the first going from "of your pride and your desire '
    'to be a hero" (+0.91) to "of the enemy that has come to destroy you" (−0.93). The second prompt resists '
    "colder (+0.39 → +0.39, +0.36 → +0.34): its first-day story stays mild."
)

# ---------------------------------------------------------------------------------------------
# 6. Gotchas

KV_CACHE = (
    "> **Gotcha: KV-cache positions.** During `generate` every call after the first sees only the new token.\n"
    "> A `[d_model]` vector is added everywhere, so that is fine; a vector for some positions only must count\n"
    "> positions from the attention mask over cache + new tokens, as `spec.py` does, not from `arange(seq_len)`."
)
GOTCHA_MD = {
    "custom_wrapper": f"""
## 6. Gotchas

> **Gotcha: the wrapper must answer for the block.** Whatever reads an attribute of `blocks[L]` while it is
> wrapped asks the wrapper. In transformers 5.23 the supported architectures read none during `forward` or
> `generate` (a wrapper that logs every lookup it passes on logs none for SmolLM2 or GPT-2), but older
> versions did (transformers 4.5x's Qwen2 forward reads `decoder_layer.attention_type`), and so does your own
> code (below). Without `__getattr__` passing lookups on, each of them raises `AttributeError`.

> **Gotcha: tuple vs tensor.** In transformers 5 a block returns a tensor. In transformers 4 it depends on the
> class: `GPT2Block` returns a tuple `(hidden, ...)` (4.57.6 `modeling_gpt2.py`: `outputs = (hidden_states,)`),
> while `LlamaDecoderLayer`, SmolLM2's block, returns the tensor in 4.57.6 (`return hidden_states`) and a tuple in
> 4.45. A wrapper on the block's *input* does not care; one on its output must handle both (exercise).

{KV_CACHE}
""",
    "pytorch_hooks": f"""
## 6. Gotchas

> **Gotcha: hooks are global state.** A hook stays on the module until its handle is removed. Remove it in
> `finally`, or an exception inside the block leaves the model steered.

> **Gotcha: tuple vs tensor.** A forward hook's return value replaces the output, whatever its type: transformers
> 5 decoder layers (Llama, GPT-2) return a tensor, transformers 4's `GPT2Block` (and `LlamaDecoderLayer` before
> 4.5x) a tuple `(hidden, ...)`, and attention sublayers `(output, weights)`. Handle both (below: `resid_post` of
> block L − 1, which is block L's input).

> **Gotcha: `hidden_states[L + 1]` is block L's output, and hooks change what it shows.** transformers 5 fills
> `output_hidden_states` with forward hooks of its own. `hidden_states[0]` is block 0's input as block 0 got it,
> *after* your pre-hooks ran, so it shows a pre-hook's addition at block 0; for L ≥ 1, `hidden_states[L]` is
> block L − 1's output, recorded before block L's pre-hook runs, so it does not. A forward hook you add after
> transformers added its own (on the first `output_hidden_states=True`) runs after them: `hidden_states[L + 1]`
> does not show its edit either. transformers 4.57.6 records Llama's the same way (`check_model_inputs` wraps each
> block's `forward`, which PyTorch calls after the pre-hooks, and keeps `args[0]` of block 0:
> `utils/generic.py`, `collected_outputs[key] += (args[0],)`), but its `GPT2Model` appends each entry in its own
> loop before calling the block (`all_hidden_states = all_hidden_states + (hidden_states,)`), so there no
> pre-hook addition shows, at any L.

{KV_CACHE}
> (Exercise.)
""",
    "baukit_tracedict": f"""
## 6. Gotchas

> **Gotcha: outputs only.** `Trace` edits a module's output, never its input, so block L's input is edited as
> block L − 1's output, and block 0's as the embedding's (Llama's `embed_tokens`; GPT-2's dropout after
> `wte + wpe`). Reading is easier: `retain_input=True` keeps any block's input, block 0's included (below).

> **Gotcha: `.input` is positional only.** baukit's hook sees no keyword arguments: `.input` is the first
> positional argument, or a tuple when there are several. HF passes the attention mask and the KV cache as
> keywords, so the library records token positions with one plain PyTorch pre-hook.

> **Gotcha: a bad name leaves hooks behind.** `TraceDict` hooks each name as it goes; if a later name does not
> exist, the earlier hooks stay on the model. The library resolves every name first.

> **Gotcha: tuple vs tensor.** `edit_output` gets what the module returned: a tensor from transformers 5 blocks
> and from transformers 4.57.6's `LlamaDecoderLayer` (`return hidden_states`); a tuple `(hidden, ...)` from
> transformers 4's `GPT2Block` (`outputs = (hidden_states,)`) and from attention sublayers. Handle both.

{KV_CACHE}
""",
    "transformer_lens_hooks": f"""
## 6. Gotchas

> **Gotcha: BOS.** TransformerLens prepends BOS to a string by default (`prepend_bos=True`); HF's GPT-2 and SmolLM2
> tokenizers do not. Tokenize once and give every backend the same ids (below).

> **Gotcha: the legacy loader's weight processing.** TransformerLens 3's `HookedTransformer` (removed in 4)
> folded layer norms and centred weights by default, so its logits did not match HF's. The 4.x bridge keeps
> HF's raw weights; the self-check holds its logits within 5e-4 of HF's.

> **Gotcha: the bridge takes over the model it wraps.** Its blocks are replaced by bridge components, so
> `bridge_from_hf` works on a copy unless told not to.

> **Gotcha: who removes which hooks.** `run_with_hooks` and `bridge.hooks(...)` remove only the hooks they added,
> even on error (TransformerLens 4.3: `_remove_temporary_hook`); `bridge.reset_hooks()` removes every hook that
> is not permanent, the library's included.

{KV_CACHE}
> A hook function sees only the activation, not the mask, so the library records positions with a plain
> PyTorch pre-hook on the wrapped HF decoder.
""",
    "bias_editing": """
## 6. Gotchas

> **Gotcha: `hidden_states[L + 1]` is block L's output.** `hidden_states[0]` is the embeddings, so an edit inside
> block L − 1 first shows in `hidden_states[L]` (below). In HF GPT-2 and Llama the last entry is taken after the
> final norm: it is not the last block's output.

> **Gotcha: only position-independent additions fit.** A bias is the same at every position: no per-position
> (ActivationAddition) vector, no `start > 0`, and padding is steered too (harmless: attention never reads it).

> **Gotcha: `resid_pre` of block 0** comes before any bias. GPT-2 absorbs it into every row of its position
> table; a rotary model (Llama) has no table, so the library refuses it.

> **Gotcha: restore bitwise; no gradient.** Copy the saved bias back in `finally`: subtracting the vector would
> leave rounding errors in the weights. The vector is copied in, so no gradient reaches it; train vectors
> through a hook backend.

> **Gotcha: KV-cache positions** do not matter here: the bias is added at every position, cached or new.
""",
    "nnsight_trace": f"""
## 6. Gotchas

> **Gotcha: only runs through nnsight are steered.** An intervention belongs to nnsight's run (the library's
> edit to the envoy `lm`), not to the module: calling the HF model, `model(...)`, or `lm(...)` outside a trace
> bypasses nnsight and is not steered (below). `steer(model, ...)` refuses the HF model with a `TypeError`.

> **Gotcha: wrapping changes what it wraps.** `TransformersModel` sets the pad token and left padding on the
> tokenizer it is given (below: give it a copy), and instruments every module of the model for good: inert
> outside nnsight's runs (no hooks, the same parameters: the self-check compares them). `nnsight_from_hf` copies both.

> **Gotcha: importing nnsight patches Python and torch, process-wide.** `torch.Tensor.backward` is replaced (so
> that `with loss.backward():` can trace gradients), and every Python object gains a `.save()` method, in code
> that never uses nnsight too.

> **Gotcha: the open loop during `generate`.** A loop over `tracer.iter` that asks for a step the run never
> makes (generation stopped at EOS first, or the open-ended `tracer.all()`) is cut short with a warning, and
> nothing after the loop runs: here, the `tracer.result.save()`. Pin the count with `min_new_tokens`, as
> `GREEDY` does; the library loops over `tracer.iter[:]` and catches the end.

> **Gotcha: tuple vs tensor.** `.input` is a block's hidden states (HF passes them first), but `.output` is
> what the module returned: a tensor from transformers 5 blocks and from transformers 4.57.6's
> `LlamaDecoderLayer` (`return hidden_states`); a tuple `(hidden, ...)` from transformers 4's `GPT2Block`
> (`outputs = (hidden_states,)`) and from attention modules. `.output[0]` on a tensor silently takes the first
> *batch row*.

{KV_CACHE}
> The library reads the mask from the decoder's own `.inputs` at every step (exercise).
""",
}
GOTCHA_CODE = {
    "custom_wrapper": """
wrapper = AddToInput(blocks[warm.layer], addition)
print(f"{type(wrapper).__name__}.mlp is the block's {type(wrapper.mlp).__name__}")  # answered by __getattr__
assert wrapper.mlp is blocks[warm.layer].mlp
""",
    "pytorch_hooks": """
def add_to_output(addition: torch.Tensor):
    def hook(module, args, output):  # the return value replaces the output
        if isinstance(output, tuple):  # transformers 4's GPT2Block, attention sublayers: (hidden, ...)
            return (output[0] + addition, *output[1:])
        return output + addition  # transformers 5 blocks: [batch, pos, d_model]

    return hook


handle = blocks[warm.layer - 1].register_forward_hook(add_to_output(addition))
try:
    resid_post_logits = model(prompt).logits
finally:
    handle.remove()
assert torch.equal(resid_post_logits, inline_logits)  # block L − 1's output is block L's input
print(f"resid_post of block {warm.layer - 1} == resid_pre of block {warm.layer}: bitwise the same logits")
""",
    "baukit_tracedict": """
with (
    Trace(model, EMBED) as embedding,
    Trace(model, f"{BLOCKS}.0", retain_input=True, retain_output=False) as block_0,
):
    model(prompt)
block_0_input = block_0.input if torch.is_tensor(block_0.input) else block_0.input[0]
assert torch.equal(embedding.output, block_0_input)
print(f"block 0's input is the output of {EMBED}")
""",
    "transformer_lens_hooks": """
sentence = "I hate you because"
print("bridge.to_tokens:", bridge.to_tokens(sentence)[0].tolist())
print("tokenizer:       ", tokenizer(sentence)["input_ids"])
assert torch.equal(bridge.to_tokens(sentence), prompt)  # BOS first in both: the same ids everywhere
""",
    "bias_editing": """
unsteered_states = model(prompt, output_hidden_states=True).hidden_states
with add_to_input(warm.layer, addition):
    steered_states = model(prompt, output_hidden_states=True).hidden_states
changed = [i for i, (a, b) in enumerate(zip(unsteered_states, steered_states, strict=True)) if not torch.equal(a, b)]
print(f"bias of block {warm.layer - 1} edited: hidden_states[{changed[0]}] is the first entry that changes")
assert changed[0] == warm.layer  # block L − 1's output = block L's input = hidden_states[L]
""",
    "nnsight_trace": """
with steer(lm, [warm]):
    through_nnsight = lm.trace(prompt, trace=False).logits  # one forward through nnsight, no trace body
    around_nnsight = model(prompt).logits  # the HF model itself: nnsight never sees this call
assert torch.equal(through_nnsight, inline_logits) and torch.equal(around_nnsight, unsteered_logits)
print("inside steer(lm, ...): lm.trace(...) is steered, model(...) is not")
print(f"padding side: {lm.tokenizer.padding_side!r} on nnsight's copy, {tokenizer.padding_side!r} on ours")
""",
}
BAD_MD = {
    "custom_wrapper": "A bad spec is refused before any module is replaced:",
    "pytorch_hooks": "A bad spec is refused before any hook is registered:",
    "baukit_tracedict": "A bad spec is refused before any hook is registered:",
    "transformer_lens_hooks": "A bad spec is refused before any hook is added:",
    "bias_editing": "Bias editing refuses what a bias cannot express, before touching a parameter:",
    "nnsight_trace": "A bad spec is refused before any edit is stored:",
}
BAD_CODE = {
    "custom_wrapper": 'with steer(model, [SteeringSpec(len(blocks), "resid_pre", warm.vector, warm.coeff)]):\n    pass',
    "pytorch_hooks": 'with steer(model, [SteeringSpec(warm.layer, "resid_mid", warm.vector, warm.coeff)]):\n    pass',
    "baukit_tracedict": 'with steer(model, [SteeringSpec(warm.layer, "resid_pre", warm.vector[:-1], warm.coeff)]):\n'
    "    pass",
    "transformer_lens_hooks": 'with steer(bridge, [SteeringSpec(warm.layer, "resid_pre", warm.vector, float("nan"))]):'
    "\n    pass",
    "bias_editing": 'with steer(model, [SteeringSpec(warm.layer, "resid_pre", warm.vector, warm.coeff, start=1)]):\n'
    "    pass",
    "nnsight_trace": 'with steer(lm, [SteeringSpec(-len(blocks) - 1, "resid_pre", warm.vector, warm.coeff)]):\n'
    "    pass",
}

# ---------------------------------------------------------------------------------------------
# 7. Self-check

SELF_CHECK_MD = (
    "## 7. Self-check\n\n"
    "Inline and library agree bitwise, and after every `with` block the model is the model it was: the unsteered "
    "logits and text again, and the same modules, parameters and hooks as the snapshot from setup (which holds "
    "transformers' own output-capturing hooks, so it is not zero hooks)."
)


def self_check_code(name: str) -> str:
    net = "bridge" if name == "transformer_lens_hooks" else "model"
    logits = {"transformer_lens_hooks": "bridge(prompt)", "nnsight_trace": "logits(prompt)"}.get(
        name, "model(prompt).logits"
    )
    lines = [
        "assert torch.equal(library_logits, inline_logits) and library_text == inline_text  # inline == library",
        f"assert torch.equal({logits}, unsteered_logits) and complete(prompt) == unsteered_text  # unsteered again",
        f"assert model_state({net}) == state_at_start  # same modules, parameters and hooks",
    ]
    if name == "baukit_tracedict":
        lines += [
            "# block 0, where the inline code edits the embedding's output instead of a block's",
            "from steering_backends.vectors import activations",
            "",
            "assert torch.equal(resid_pre([pairs[0][0]], 0)[0], activations(model, tokens(pairs[0][0]), 0)[0, 1:])",
            "with add_to_input(0, addition):",
            "    inline_0 = model(prompt).logits",
            'with steer(model, [SteeringSpec(0, "resid_pre", warm.vector, warm.coeff)]):',
            "    assert torch.equal(model(prompt).logits, inline_0)",
        ]
    if name == "nnsight_trace":
        lines += [
            "# nnsight_from_hf wraps as setup did, on copies of the model and tokenizer: steered alike",
            "copied = nnsight_from_hf(model, tokenizer)",
            "with steer(copied, [warm]):",
            "    assert torch.equal(copied.trace(prompt, trace=False).logits, inline_logits)",
        ]
    if name in ("transformer_lens_hooks", "bias_editing"):
        lines = [
            "from steering_backends.parity import RELATIVE_TOLERANCES, tolerance  # 1e-4 x max |logit|",
            "from steering_backends.pytorch_hooks import steer as steer_with_hook",
            "",
            *lines,
            "with steer_with_hook(model, [warm]):  # the reference: plain HF, steered by a PyTorch hook",
            "    hook_logits = model(prompt).logits",
            "gap = (library_logits - hook_logits).abs().max().item()",
            f'assert gap <= tolerance(RELATIVE_TOLERANCES["{name}"], hook_logits), gap',
        ]
    if name in ("transformer_lens_hooks", "bias_editing"):
        lines.append('print(f"self-check passed; library vs a hook on plain HF: max |Δlogit| {gap:.1e}")')
    else:
        lines.append('print("self-check passed")')
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 8. Exercise

# ARENA-style exercises: a stub (cells tagged exercise-stub, which tests/test_exercises.py runs), a check cell
# running notebooks/exercises/checks.py on it, a difficulty and a time. Solutions: notebooks/solutions/.
CHECKS_IMPORT = "from exercises import checks  # beside the notebooks: each check builds its own small models\n\n"
EXERCISES_INTRO = (
    "## 8. Exercises\n\n"
    "Each exercise is a stub to fill in and a check cell that runs `notebooks/exercises/checks.py` on it. The "
    "checks build their own small models (seeded random weights, no download; SmolLM2 for the sweep), so they say "
    "what is wrong, on any model. Until a stub is written its check says so; the solutions are in "
    "`notebooks/solutions/{notebook}.py`, and CI runs every check on them and on these stubs."
)
STUB_OUTPUT_WRAPPER = '''
import torch


class AddToOutput(torch.nn.Module):
    """Stands in for `block`: returns its output + addition [d_model] (the output is a tensor [batch, pos,
    d_model], or a tuple whose first item is one), and answers every other attribute as the block would."""

    def __init__(self, block: torch.nn.Module, addition: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.addition = addition

    def forward(self, *args, **kwargs):
        raise NotImplementedError("AddToOutput.forward")
'''
STUB_TOKEN_NORMS = '''
import torch


def token_norms(bridge, text: str, layer: int, prepend_bos: bool) -> torch.Tensor:
    """The norm of block `layer`'s input (hook_resid_pre) at each token of `text`, read with run_with_cache:
    [tokens]. With prepend_bos=True, BOS's row is left out, so both settings give one norm per token of text."""
    raise NotImplementedError("token_norms")
'''
STUB_NEW_TOKENS = '''
import torch


def steer_new_tokens(lm, block, prompt: torch.Tensor, addition: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy lm.generate from prompt [1, T], exactly n_new new tokens, with addition [d_model] added to the
    input of `block` (an envoy of lm) at every step but step 0, the prompt's: the ids, [1, T + n_new]."""
    raise NotImplementedError("steer_new_tokens")
'''
STUB_RESID_PRE_FAST = '''
import torch
from baukit import Trace


def resid_pre_fast(model: torch.nn.Module, blocks: str, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Block `layer`'s input over ids [batch, pos] (layer >= 1; blocks: their dotted name, e.g. "model.layers"),
    read with a Trace that stops the forward, so that no module after block `layer` runs: [batch, pos, d_model]."""
    raise NotImplementedError("resid_pre_fast")
'''
STUB_BLOCKS = '''
import contextlib

import torch


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of an HF causal LM, in order: n_layers modules, each [batch, pos, d_model] in and out."""
    raise NotImplementedError("find_blocks")


@contextlib.contextmanager
def add_to_block_input(model: torch.nn.Module, layer: int, addition: torch.Tensor):
    """Inside the with block, find_blocks(model)[layer] is called with hidden + addition (hidden: [batch, pos,
    d_model]; addition: [d_model]); afterwards no hook is left, even when the body raised."""
    raise NotImplementedError("add_to_block_input")
    yield
'''
STUB_SWEEP = '''
from collections.abc import Callable

import torch

from steering_backends import SteeringSpec
from steering_backends.compare import Summary, compare


def sweep(
    model: torch.nn.Module,
    tokenizer,
    spec_for: Callable[[int, float], SteeringSpec],
    layers: list[int],
    relatives: list[float],
    prompts: list[str],
    n: int = 2,
    max_new_tokens: int = 12,
) -> dict[tuple[int, float], Summary]:
    """{(layer, relative): compare(model, tokenizer, prompts, [spec_for(layer, relative)], n=n,
    max_new_tokens=max_new_tokens).summary()} for every layer and relative."""
    raise NotImplementedError("sweep")


def choose(summaries: dict[tuple[int, float], Summary], max_perplexity_ratio: float = 2.0) -> tuple[int, float]:
    """The (layer, relative) whose sentiment moves furthest in the expected direction, among the settings whose
    perplexity ratio is at most max_perplexity_ratio; ValueError if there is none."""
    raise NotImplementedError("choose")
'''
STUB_TOKENS = '''
import torch


def tokens_per_call(model: torch.nn.Module, ids: torch.Tensor, n_new: int) -> list[int]:
    """hidden.shape[1] at block 0 in each forward call of greedy generate from ids [1, T], n_new new tokens."""
    raise NotImplementedError("tokens_per_call")
'''
STUB_ATTN_OUT = '''
import contextlib

import torch


@contextlib.contextmanager
def add_to_attn_out(model: torch.nn.Module, layer: int, addition: torch.Tensor):
    """Inside the with block, block `layer`'s attention output is + addition ([d_model], at every position),
    through the bias of its output projection; afterwards the parameters are bitwise as they were."""
    raise NotImplementedError("add_to_attn_out")
    yield
'''
ARENA = {
    "custom_wrapper": [
        (
            "exercise",
            "markdown",
            """## 8. Exercise: a wrapper on the output

*Difficulty: 1 of 3. About 10 minutes.*

Write `AddToOutput`, a wrapper that adds to its block's *output* (`resid_post`) and answers the block's
attributes as section 2's `Wrapper` does. Its block may return a tensor (transformers 5) or a tuple
`(hidden, ...)` (transformers 4's `GPT2Block`): add to the hidden states either way. Block L − 1's output is
block L's input, so wrapping block L − 1 must give bitwise the logits of `AddToInput` at block L: here,
`swapped(warm.layer - 1, AddToOutput(blocks[warm.layer - 1], addition))` gives `inline_logits`. The check tries
every block of four tiny random layouts and a block that returns a tuple. Solution:
`notebooks/solutions/01_custom_wrapper.py`; CI runs the check on it and on this stub.""",
        ),
        ("exercise-stub", "code", text(STUB_OUTPUT_WRAPPER)),
        ("exercise-check", "code", CHECKS_IMPORT + "checks.run(checks.check_add_to_output, AddToOutput)"),
    ],
    "baukit_tracedict": [
        (
            "exercise",
            "markdown",
            """## 8. Exercise: stop the forward

*Difficulty: 1 of 3. About 10 minutes.*

Reading a block's input needs only the blocks before it. `Trace(..., stop=True)` raises baukit's `StopForward`
right after the traced module, and its `with` block swallows it, so the rest of the model never runs. Write
`resid_pre_fast`, which reads block `layer`'s input that way. The check compares it with a pre-hook's record on
four tiny random layouts and makes sure no later block, and not the unembedding, ran. Then check that
`resid_pre_fast(model, BLOCKS, tokens(pairs[0][0]), warm.layer)[0, 1:]` equals
`resid_pre([pairs[0][0]], warm.layer)[0]`. Solution: `notebooks/solutions/03_baukit_tracedict.py`; CI runs the check on
it and on this stub.""",
        ),
        ("exercise-stub", "code", text(STUB_RESID_PRE_FAST)),
        ("exercise-check", "code", CHECKS_IMPORT + "checks.run(checks.check_resid_pre_fast, resid_pre_fast)"),
    ],
    "transformer_lens_hooks": [
        (
            "exercise",
            "markdown",
            """## 8. Exercise: BOS and the first token

*Difficulty: 1 of 3. About 10 minutes.*

Write `token_norms`, which reads block `layer`'s input with `bridge.run_with_cache(text, ...,
prepend_bos=prepend_bos)` and returns each token's norm, BOS's row left out when it is there. The check compares
it with a hook on a tiny random GPT-2 bridge, with and without BOS. Then print
`token_norms(bridge, pairs[0][0], warm.layer, False)` above `token_norms(bridge, pairs[0][0], warm.layer, True)`:
which token changes most, and why would a vector averaged over these tokens change with it? Solution:
`notebooks/solutions/04_transformer_lens.py`; CI runs the check on it and on this stub.

<details><summary>Answer</summary>

Without BOS the first word sits at position 0, where a trained model parks its attention sink: its activation is
about 100× larger than the others and mostly about being first, not about the word. An average over the tokens
would be dominated by it, and a warm − cold difference would depend on whether the two sentences start alike.
</details>""",
        ),
        ("exercise-stub", "code", text(STUB_TOKEN_NORMS)),
        ("exercise-check", "code", CHECKS_IMPORT + "checks.run(checks.check_token_norms, token_norms)"),
    ],
    "pytorch_hooks": [
        ("exercises", "markdown", EXERCISES_INTRO.format(notebook="02_pytorch_hooks")),
        (
            "exercise-1",
            "markdown",
            """### 8.1 Steer a model you load yourself

*Difficulty: 2 of 3. About 15 minutes.*

Setup found SmolLM2's blocks by name (`model.model.layers`). Write `find_blocks(model)`, which finds the decoder
blocks of any HF causal LM without a table of names (GPT-2 keeps them in `transformer.h`, Llama in
`model.layers`, GPT-NeoX in `gpt_neox.layers`, OPT in `model.decoder.layers`), and `add_to_block_input`,
section 3's pre-hook for any of them, negative blocks included. The check runs both on all four layouts.

Then steer a model you load yourself: in the setup cell, load it with
`AutoModelForCausalLM.from_pretrained(name)` and its tokenizer (offline: `load("tiny-qwen2-random")`), set
`blocks = find_blocks(model)`, and run sections 2 and 3 again at a block it has (`mean_difference_spec(2, 0.25)`
for a 4-block model): they read the vector from your model and steer it. Qwen2's own tokenizer has no BOS:
`tokens` then puts EOS first, as TransformerLens does, and section 2's library check, whose recipes refuse
`bos=True` without a BOS token, is the one cell to skip.""",
        ),
        ("exercise-1-stub", "code", text(STUB_BLOCKS)),
        (
            "exercise-1-check",
            "code",
            CHECKS_IMPORT + "checks.run(checks.check_find_blocks, find_blocks)\n"
            "checks.run(checks.check_add_to_block_input, add_to_block_input)",
        ),
        (
            "exercise-2",
            "markdown",
            """### 8.2 Choose a block and a coefficient

*Difficulty: 2 of 3. About 25 minutes.*

Block 21 and 0.25 came from a sweep: steer at several blocks and strengths, score the samples, keep the
setting that moves sentiment most while the text stays fluent. Write `sweep`, which runs section 5's `compare`
for each setting of a grid and keeps its `.summary()`, and `choose`, the design rule: among the settings whose
perplexity is at most `max_perplexity_ratio` × the unsteered one (`summary.perplexity_ratio`), the one whose mean
sentiment moves furthest in the expected direction (`summary.expect * summary.delta`); `ValueError` if none
qualifies. The default bound is 2, the one the measured settings were chosen under: they scored ×1.58 (warmer)
and ×1.72 (colder) in that sweep (`benchmarks/results/behaviour_sweep.md`), so 1.5 would rule both out. The check
runs your `sweep` on SmolLM2 (blocks 9 and 21, 0.25 and 1.0, one prompt, two seeds) and prints its table, and tries
`choose` on made-up tables that catch each mistake.

Then sweep with the vector this notebook built: `choose(sweep(model, tokenizer, mean_difference_spec,
[15, 21, 27], [0.25, 0.5], prompts))` (each setting reads its vector anew, so this takes minutes on a CPU).
Does the measured setting win? It was chosen on more prompts and seeds, and judged on prompts the sweep had
not seen.""",
        ),
        ("exercise-2-stub", "code", text(STUB_SWEEP)),
        (
            "exercise-2-check",
            "code",
            CHECKS_IMPORT + "checks.run(checks.check_sweep, sweep)\nchecks.run(checks.check_choose, choose)",
        ),
        (
            "exercise-3",
            "markdown",
            """### 8.3 Positions under the KV cache

*Difficulty: 1 of 3. About 10 minutes.*

How many positions does each forward call see during `generate`? Write `tokens_per_call`: record
`hidden.shape[1]` with a forward pre-hook on block 0 while generating `n_new` tokens greedily (pass
`min_new_tokens=n_new`, so that EOS cannot end it early). Then: why could a hook that steers from position 3 on
not use `torch.arange(hidden.shape[1])` as the positions?

<details><summary>Answer</summary>

With the KV cache the earlier tokens are not run again: each call after the first sees one token, whose
position is the number of tokens before it, but `arange` would call it 0. `spec.py`'s `token_positions` reads
positions from the attention mask, which covers the cache and the new tokens.
</details>""",
        ),
        ("exercise-3-stub", "code", text(STUB_TOKENS)),
        ("exercise-3-check", "code", CHECKS_IMPORT + "checks.run(checks.check_tokens_per_call, tokens_per_call)"),
    ],
    "bias_editing": [
        (
            "exercise",
            "markdown",
            """## 8. Exercise: a bias for `attn_out`

*Difficulty: 1 of 3. About 10 minutes.*

Steer `attn_out` of a block the way section 3 steers `resid_pre`: give the attention output projection
(`self_attn.o_proj` on Llama, `attn.c_proj` on GPT-2) the addition as its bias, and put everything back in
`finally`. The check compares your logits with
`steer(model, [SteeringSpec(layer, "attn_out", addition)])` on a tiny GPT-2 (whose `c_proj` has a bias) and a
tiny Llama (whose `o_proj` has none), and the weights afterwards with the weights before, bitwise, also when
the body raised. Solution: `notebooks/solutions/05_bias_editing.py`; CI runs the check on it and on this stub.""",
        ),
        ("exercise-stub", "code", text(STUB_ATTN_OUT)),
        ("exercise-check", "code", CHECKS_IMPORT + "checks.run(checks.check_add_to_attn_out, add_to_attn_out)"),
    ],
    "nnsight_trace": [
        (
            "exercise",
            "markdown",
            """## 8. Exercise: steer only the generated tokens

*Difficulty: 2 of 3. About 15 minutes.*

Write `steer_new_tokens`: during `lm.generate`, leave step 0 (the prompt) alone and add `addition` at `block`'s
input at every later step (`tracer.iter` takes a slice of steps). The library does the same with
`start=prompt.shape[1]`, the position of the first generated token; the check compares your ids with its ids on
a tiny random Llama. Then try it here: `steer_new_tokens(lm, block, prompt, addition, N_NEW)`. Solution:
`notebooks/solutions/09_nnsight.py`; CI runs the check on it and on this stub.

<details><summary>Why the first new token is the unsteered one</summary>

Step 0 runs the prompt, positions 0 … T − 1, and picks the first new token unsteered; step k runs only the
token at position T + k − 1, which the library places by the attention mask over cache and new tokens, not by
the one-token call's own `arange`. So the first new token is the unsteered one, and the steering starts after it.
</details>""",
        ),
        ("exercise-stub", "code", text(STUB_NEW_TOKENS)),
        ("exercise-check", "code", CHECKS_IMPORT + "checks.run(checks.check_steer_new_tokens, steer_new_tokens)"),
    ],
}

# ---------------------------------------------------------------------------------------------


def cells(name: str) -> list[tuple[str, str, str | None]]:
    """(cell id, kind, source), in notebook order; the ids are the same in every notebook."""
    return [
        ("preamble", "markdown", preamble(name)),
        ("setup-heading", "markdown", "## 1. Setup"),
        (install_cell.CELL_ID, "code", install_cell.source(NOTEBOOKS[name])),  # for hosted notebook services
        ("setup", "code", setup_code(name)),
        ("setup-helpers", "code", HELPERS[name].rstrip("\n")),
        ("reading-heading", "markdown", READING_INTRO + READING_MD[name]),
        ("reading", "code", text(READING_CODE[name]) + READ_VECTOR),
        ("reading-check", "code", CHECK_VECTOR[name]),
        ("steering-heading", "markdown", STEER_INTRO + STEER_MD[name]),
        ("steering", "code", text(STEER_CODE[name]) + SHOW_GREEDY),
        ("library-heading", "markdown", library_md(name)),
        ("library", "code", library_code(name)),
        *(
            [("variant-heading", "markdown", VARIANT_MD), ("variant", "code", text(VARIANT_CODE))]
            + [("variant-comment", "markdown", VARIANT_COMMENT_MD)]
            if name == "bias_editing"
            else []
        ),
        ("compare-heading", "markdown", COMPARE_MD[name]),
        ("compare-warm", "code", compare_code(name, "warm", "+1")),
        *([("compare-cold", "code", compare_code(name, "cold", "-1"))] if name == "pytorch_hooks" else []),
        ("compare-comment", "markdown", COMMENT_MD[name]),
        ("gotchas", "markdown", text(GOTCHA_MD[name])),
        ("gotcha-demo", "code", text(GOTCHA_CODE[name])),
        ("bad-spec-heading", "markdown", BAD_MD[name]),
        ("bad-spec", "code", BAD_CODE[name]),
        ("self-check-heading", "markdown", SELF_CHECK_MD),
        ("self-check", "code", self_check_code(name)),
        *ARENA[name],
    ]


def notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell_id, kind, source in cells(name):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        cell.id = cell_id
        if cell_id == "bad-spec":
            cell.metadata["tags"] = ["raises-exception"]
        if cell_id.endswith("-stub"):
            cell.metadata["tags"] = ["exercise-stub"]  # tests/test_exercises.py runs these against the checks
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


if __name__ == "__main__":
    import sys

    chosen = sys.argv[1:] or list(NOTEBOOKS.values())  # file names; none: all of them
    unknown = sorted(set(chosen) - set(NOTEBOOKS.values()))
    if unknown:
        raise SystemExit(f"unknown notebooks {unknown}; allowed: {', '.join(NOTEBOOKS.values())}")
    for backend, filename in NOTEBOOKS.items():
        if filename in chosen:
            nbformat.write(notebook(backend), HERE / filename)
            print(f"wrote {filename}")
