"""The work steering adds to one forward pass: our interception code against the peers'.

    python -m benchmarks.hook_work                       # SmolLM2, needs steering-vectors and repeng
    python -m benchmarks.hook_work --model tiny-llama-random --blocks 1 2 --calls 200 --rounds 5
    python -m benchmarks.hook_work --device cuda               # where the work matters: an accelerator

On a CPU a token costs tens of milliseconds and this work is invisible; on a GPU a small
model's token costs a few milliseconds and the Python run per forward is what is left. To see
it alone, the model is run once to record what its decoder and the steered blocks receive and
return; then each of those modules' own ``forward`` is replaced by a replay of its result, and each
implementation's hooks or wrappers are timed around the replay: the decoder call and its block calls,
steered minus bare (the same calls with nothing attached). The blocks are called from inside the
decoder's replayed call, as in a real forward, so per-call state set at the decoder's input is
in force there. Steering adds ``coeff * v`` to the output of one block, and of eight
consecutive blocks as a control vector does (our ``resid_post``; steering-vectors' and repeng's
"decoder block"), at every real token. What is paid once per decoder call shows in the first;
what is paid at every steered block, in the difference. Shapes: a 16-token prompt (prefill) and
one decoding step after it, batch 1 and 8; in the batch of 8, seven rows are left-padded by 3
tokens (ours skip the padding there, the peers add to it too: they do a little less work for a
different result).

Each implementation's steered call is also run once under a dispatch mode that counts the tensor
operations it adds: views, reads of a value back to the host (which wait for an accelerator), and
the rest, which compute. These counts do not depend on the machine (``--ops-only``: count, do not time).

Writes benchmarks/results/hook_work.md (the times) and hook_ops.md (the counts). Peers that are not
installed are left out, with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.peers import PEERS, installed_peers, peer_steer
from steering_backends import SteeringSpec, backend
from steering_backends.layout import dims, get_module, layout_of, site_module_name
from steering_backends.models import RANDOM_CONFIGS, load, random_model

OUT = Path(__file__).resolve().parent / "results"
OURS = ("pytorch_hooks", "custom_wrapper", "baukit_tracedict")


def record_calls(model, ids: torch.Tensor, mask: torch.Tensor, names: list[str], cache=None):
    """{name: (args, kwargs, output)} for the decoder and the blocks ``names`` in one forward."""
    seen, handles = {}, []
    for name in names:
        module = get_module(model, name)

        def pre(m, args, kwargs, name=name):
            seen[name] = [args, kwargs]

        def post(m, args, kwargs, output, name=name):
            seen[name].append(output)

        handles += [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True),
        ]
    # position_ids as generate() passes them (repeng's padding mask reads them from the block's kwargs).
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
    try:
        with torch.no_grad():
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            )
    finally:
        for handle in handles:
            handle.remove()
    return seen, out.past_key_values


@contextlib.contextmanager
def replayed(module: torch.nn.Module, output, inner=()):
    """``module`` returns ``output`` without computing anything (instance attribute over forward);
    ``inner``: (callable, args, kwargs) triples it calls first, in order, as a decoder calls its blocks."""

    def forward(*args, **kwargs):
        for call, inner_args, inner_kwargs in inner:
            call(*inner_args, **inner_kwargs)
        return output

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


class CountedOps(TorchDispatchMode):
    """Counts the aten operations run inside it: views, reads back to the host (``.item()``,
    ``bool(t)``: _local_scalar_dense), and the rest, which compute."""

    def __init__(self) -> None:
        super().__init__()
        self.computing = self.views = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        elif func.is_view:
            self.views += 1
        else:
            self.computing += 1
        return func(*args, **(kwargs or {}))


def count_ops(model, decoder_name: str, call) -> tuple[int, int, int]:
    """(computing, views, reads) in one decoder call, after one call to fill whatever is made once."""
    decoder = model.get_submodule(decoder_name)
    args, kwargs, _ = call
    with torch.no_grad():
        decoder(*args, **kwargs)
        with CountedOps() as counted:
            decoder(*args, **kwargs)
    return counted.computing, counted.views, counted.reads


def time_calls(model, decoder_name: str, call, n: int) -> float:
    """Seconds per decoder call (whose replay calls the block), whatever module now sits there. On an
    accelerator the clock stops when the device has run every kernel the calls launched."""
    decoder = model.get_submodule(decoder_name)
    args, kwargs, _ = call
    device = next(model.parameters()).device
    wait_for(device)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            decoder(*args, **kwargs)
    wait_for(device)
    return (time.perf_counter() - started) / n


def wait_for(device: torch.device) -> None:
    """Until ``device`` has finished the work queued on it; nothing to wait for on a CPU."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 8], help="how many consecutive blocks to steer")
    parser.add_argument("--calls", type=int, default=2000, help="decoder calls per timing")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the median is reported")
    parser.add_argument("--ops-only", action="store_true", help="count the operations; time nothing")
    parser.add_argument("--device", default="cpu", help="where the model and the steering run: cpu, cuda, ...")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model = random_model(args.model) if args.model in RANDOM_CONFIGS else load(args.model)[0]
    model = model.to(args.device)
    layout = layout_of(model)
    n_layers, d_model = dims(model)
    first = n_layers // 3
    if first + max(args.blocks) > n_layers:
        raise ValueError(f"--blocks {max(args.blocks)} from block {first} needs more than this model's {n_layers}")
    decoder_name = layout.decoder
    block_names = [site_module_name(layout, layer, "resid_post") for layer in range(first, first + max(args.blocks))]
    vectors = torch.randn(len(block_names), d_model, device=args.device)
    missing = [peer for peer in PEERS if peer not in installed_peers()]
    if importlib.util.find_spec("baukit") is None:
        missing.append("baukit_tracedict")

    rows, op_rows = [], []
    for batch in (1, 8):
        ids = torch.randint(100, 1000, (batch, 16), device=args.device)
        mask = torch.ones_like(ids)
        mask[1:, :3] = 0  # rows after the first are left-padded by 3
        prefill, cache = record_calls(model, ids, mask, [decoder_name, *block_names])
        step_ids = torch.randint(100, 1000, (batch, 1), device=args.device)
        step_mask = torch.cat([mask, torch.ones_like(step_ids)], 1)
        step, _ = record_calls(model, step_ids, step_mask, [decoder_name, *block_names], cache)
        for n_blocks in args.blocks:
            specs = [
                SteeringSpec(layer=first + i, site="resid_post", vector=vectors[i], coeff=4.0) for i in range(n_blocks)
            ]
            ours = [name for name in OURS if name not in missing]
            contenders = {name: (lambda m, name=name, specs=specs: backend(name).steer(m, specs)) for name in ours}
            for peer in installed_peers():
                contenders[peer] = lambda m, peer=peer, specs=specs: peer_steer(peer, m, specs)
            for phase, recorded in (("prefill, 16 tokens", prefill), ("decoding step", step)):
                with replaying(model, decoder_name, block_names[:n_blocks], recorded) as call:
                    for name, ops in count_contenders(model, decoder_name, call, contenders).items():
                        op_rows.append((n_blocks, batch, phase, name, *ops))
                    if args.ops_only:
                        continue
                    added = time_contenders(model, decoder_name, call, contenders, args.rounds, args.calls)
                for name, (median, low, high, bare) in added.items():
                    rows.append((n_blocks, batch, phase, name, median, low, high, bare))

    if not args.ops_only:
        write(args, rows, missing, first)
    write_ops(args, op_rows, missing, first)


@contextlib.contextmanager
def replaying(model, decoder_name: str, block_names: list[str], recorded):
    """The decoder and the blocks replay ``recorded``, the decoder calling the blocks; yields the decoder's call."""
    with contextlib.ExitStack() as stack:
        inner = []
        for name in block_names:
            block_args, block_kwargs, block_output = recorded[name]
            stack.enter_context(replayed(get_module(model, name), block_output))
            # Looked up at each call: a wrapper backend puts its own module at the block's name.
            inner.append((lambda *a, name=name, **k: model.get_submodule(name)(*a, **k), block_args, block_kwargs))
        stack.enter_context(replayed(get_module(model, decoder_name), recorded[decoder_name][2], inner))
        yield recorded[decoder_name]


def time_contenders(model, decoder_name: str, call, contenders, rounds: int, calls: int) -> dict:
    """{contender: (median, lower quartile, upper quartile, bare)} in µs added per decoder call."""
    per_contender = {name: [] for name in contenders}
    for _ in range(rounds):  # interleaved: bare, then each contender, every round
        bare = time_calls(model, decoder_name, call, calls)
        for name, steer in contenders.items():
            with steer(model):
                per_contender[name].append(time_calls(model, decoder_name, call, calls) - bare)
    result = {}
    for name, added in per_contender.items():
        spread = sorted(1e6 * a for a in added)
        result[name] = (statistics.median(spread), spread[len(spread) // 4], spread[3 * len(spread) // 4], 1e6 * bare)
    return result


def count_contenders(model, decoder_name: str, call, contenders) -> dict:
    """{contender: (computing, views, reads)} that it adds to one decoder call."""
    bare = count_ops(model, decoder_name, call)
    added = {}
    for name, steer in contenders.items():
        with steer(model):
            added[name] = tuple(n - b for n, b in zip(count_ops(model, decoder_name, call), bare, strict=True))
    return added


def machine(device: str) -> str:
    host = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
    return host if device == "cpu" else f"{device_name(device)}, driven from {host}"


def device_name(device: str) -> str:
    """``device`` as a reader knows it: a GPU by its name."""
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else device


def versions() -> str:
    import transformers

    names = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    return "; ".join(names + [f"{peer} {version(peer)}" for peer in installed_peers()])


def write(args, rows, missing, first: int) -> None:
    lines = [
        f"# Work added per forward: {args.model}, steering the output of consecutive blocks from block {first}",
        "",
        "Microseconds per forward pass that each implementation's interception adds (one decoder call and "
        "the steered blocks' calls, every module's own computation replaced by a replay of its real "
        f"result; steered minus bare). Median of {args.rounds} interleaved rounds of {args.calls} calls "
        "(in brackets: the quartiles). `bare` is the same replayed calls with nothing attached.",
        "",
        f"Machine: {machine(args.device)}; {versions()}.",
        "",
        "| blocks steered | batch | call | implementation | added µs per forward | quartiles | bare µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for n_blocks, batch, phase, name, median, low, high, bare in rows:
        lines.append(
            f"| {n_blocks} | {batch} | {phase} | {name} | {median:.1f} | {low:.1f} – {high:.1f} | {bare:.1f} |"
        )
    save(args, "hook_work.md", lines, missing)


def write_ops(args, rows, missing, first: int) -> None:
    lines = [
        f"# Operations added per forward: {args.model}, steering the output of consecutive blocks from block {first}",
        "",
        "The tensor operations each implementation's interception adds to one forward pass, in the replay "
        "of [hook_work.md](hook_work.md) (which itself runs none), counted by a dispatch mode at the second "
        "steered call: those that compute, views, and reads of a value back to the host, each of which "
        "waits for an accelerator to finish the work queued before it. The counts do not depend on the machine.",
        "",
        f"{versions()}.",
        "",
        "| blocks steered | batch | call | implementation | ops computing | views | host reads |",
        "|---|---|---|---|---|---|---|",
    ]
    for n_blocks, batch, phase, name, computing, views, reads in rows:
        lines.append(f"| {n_blocks} | {batch} | {phase} | {name} | {computing} | {views} | {reads} |")
    save(args, "hook_ops.md", lines, missing)


def save(args, filename: str, lines: list[str], missing: list[str]) -> None:
    if missing:
        lines += ["", f"Not installed here, so not measured: {', '.join(missing)}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / filename).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
