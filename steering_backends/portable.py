"""Vectors that travel: SteeringSpecs to and from files that other tools read.

    save_control_vector(specs, "warm.gguf", model_hint="llama", n_layers=30)  # llama.cpp, repeng
    specs = load_control_vector("warm.gguf")                                  # [SteeringSpec(N, "resid_post", v)]
    save_specs(specs, "warm.safetensors", model=model)                        # every spec, exactly
    specs = load_specs("warm.safetensors", model=model)                       # checked against the model

Contents:
    save_control_vector / load_control_vector   llama.cpp's control-vector GGUF (one direction per block)
    save_specs / load_specs                     any list of SteeringSpec: safetensors + JSON metadata
    SPECS_FORMAT, SPECS_VERSION                 what save_specs writes and load_specs reads

llama.cpp's control-vector format, as read in its source (ggml-org/llama.cpp):
    * ``common/common.cpp``, ``common_control_vector_load_one``: every tensor must be named
      ``direction.N`` with an integer N >= 1 (N = 0 and any other name make it refuse the file),
      be F32 and 1-D, all of one length (n_embd). ``direction.N`` lands at offset n_embd * (N - 1)
      of a flat buffer, multiplied by the strength (``--control-vector-scaled``; 1 for
      ``--control-vector``); several directions for one N, in one file or several, are summed.
      It reads no metadata key at all.
    * ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: block ``il`` (0-based, from 1 to
      n_layer - 1) takes its tensor from offset n_embd * (il - 1); so ``direction.N`` is block N's,
      and block 0 never has one. ``tensor_for`` returns nothing outside [layer_start, layer_end],
      which ``common_init_from_params`` (common.cpp) defaults to [1, n_layer].
    * ``src/models/llama.cpp`` and ``src/models/gpt2.cpp``: ``cur = build_cvec(cur, il)`` right after
      the MLP's residual add, the tensor named ``l_out`` that feeds block il + 1; ``build_cvec``
      (``src/llama-graph.cpp``) adds the tensor with ``ggml_add``, at every position.
    * ``tools/cvector-generator/cvector-generator.cpp``, ``export_gguf``: writes
      ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's own
      ``general.architecture``, e.g. "llama") and ``controlvector.layer_count`` (INT32, the number
      of tensors).
So ``direction.N`` is our ``resid_post`` of block N, i.e. ``resid_pre`` of block N + 1. repeng
(vgel/repeng, ``repeng/extract.py`` ``ControlVector.export_gguf`` / ``import_gguf`` and
``repeng/control.py`` ``ControlModule``) agrees: its ``directions[N]`` is added to the output of
``model.model.layers[N]`` and is written as ``direction.N`` (``layer_count`` as UINT32 there).

What the format cannot hold, save_control_vector refuses: any op but "add" (llama.cpp only adds),
an [n, d_model] vector, ``start > 0``, ``attn_out`` / ``mlp_out``, and anything that would be
``direction.0`` (``resid_post`` of block 0, ``resid_pre`` of blocks 0 and 1). Coefficients are
folded into the stored direction, and specs on one block are summed, so a file loads back as one
``coeff=1`` spec per block.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .layout import dims
from .spec import SteeringPlan, SteeringSpec

__all__ = ["SPECS_FORMAT", "SPECS_VERSION", "load_control_vector", "load_specs", "save_control_vector", "save_specs"]

SPECS_FORMAT = "steering_backends.specs"
SPECS_VERSION = 1
_META_KEY = "steering_backends"  # safetensors __metadata__ entry: the JSON below, as a string
_DIGEST_KEY = "steering_backends.sha256"  # and the sha256 of that string and of every tensor
_CV_ARCH = "controlvector"
_DIRECTION = re.compile(r"direction\.(\d+)")
# Floating dtypes a spec vector may have and safetensors stores as they are.
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _spec_list(specs: Iterable[SteeringSpec]) -> list[SteeringSpec]:
    specs = list(specs)
    if not specs:
        raise ValueError("specs is empty; a file needs at least one SteeringSpec")
    for i, spec in enumerate(specs):
        if not isinstance(spec, SteeringSpec):
            raise TypeError(f"specs[{i}] must be a SteeringSpec, got {type(spec).__name__}")
    return specs


def _write_atomically(path: str | os.PathLike, write: Any) -> None:
    """Call write(tmp_path), then move tmp_path to path: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------
# llama.cpp control vectors (GGUF)


def _control_vector_block(i: int, spec: SteeringSpec, n_layers: int | None) -> int:
    """The N of direction.N that holds ``spec``, or ValueError saying why it has none."""
    where = f"specs[{i}] (layer={spec.layer}, site={spec.site!r})"
    if spec.op != "add":
        raise ValueError(f"{where} has op={spec.op!r}; llama.cpp only adds a control vector, so allowed: op='add'")
    if spec.per_position:
        raise ValueError(
            f"{where} has an [n, d_model] vector of shape {tuple(spec.vector.shape)}; a llama.cpp control "
            "vector holds one [d_model] direction per block, added at every position"
        )
    if spec.start != 0:
        raise ValueError(f"{where} has start={spec.start}; llama.cpp adds a control vector at every position")
    if spec.rows is not None:
        raise ValueError(f"{where} has rows={spec.rows}; llama.cpp adds a control vector to every sequence")
    if spec.site not in ("resid_pre", "resid_post"):
        raise ValueError(
            f"{where}: llama.cpp adds a control vector only to a block's output; allowed sites: "
            "resid_post (block N's output) or resid_pre (block N + 1's input)"
        )
    layer = spec.layer
    if n_layers is None:
        if layer < 0:
            raise ValueError(
                f"{where} counts from the end, and a control vector file names blocks from the start; "
                "pass n_layers (the model's number of blocks) to resolve it"
            )
    else:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"{where}: layer must be in [{-n_layers}, {n_layers - 1}] for n_layers={n_layers}")
        layer %= n_layers
    block = layer if spec.site == "resid_post" else layer - 1
    if block < 1:
        raise ValueError(
            f"{where} would be direction.{block}: llama.cpp never adds a direction to block 0's output "
            "(it refuses direction.0) nor to the embeddings; the first block it steers is "
            "resid_post of block 1 = resid_pre of block 2"
        )
    return block


def save_control_vector(
    specs: Iterable[SteeringSpec], path: str | os.PathLike, model_hint: str, n_layers: int | None = None
) -> None:
    """Write ``specs`` as a llama.cpp control vector: one F32 ``direction.N`` [d_model] per block N.

    model_hint: the model's architecture, as llama.cpp's generator writes it ("llama", "gpt2"...).
    n_layers: the model's number of blocks; needed for negative layers, and checks the rest.
    Folds each coeff into its vector (in float32, or float64 for a float64 vector) and sums specs
    on one block, in the order given. Refuses, before writing anything, what the format cannot hold.
    """
    import gguf

    specs = _spec_list(specs)
    if not isinstance(model_hint, str) or not model_hint:
        raise ValueError(f"model_hint={model_hint!r} must be a non-empty string, e.g. the model type 'llama'")
    if n_layers is not None and (not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1):
        raise ValueError(f"n_layers={n_layers!r} must be None or an int >= 1")
    blocks = [_control_vector_block(i, spec, n_layers) for i, spec in enumerate(specs)]
    width = specs[0].vector.shape[-1]
    for i, spec in enumerate(specs):
        if spec.vector.shape[-1] != width:
            raise ValueError(
                f"specs[{i}].vector has width {spec.vector.shape[-1]}, but specs[0]'s is {width}; "
                "every direction of a control vector has the model's d_model"
            )
    directions: dict[int, torch.Tensor] = {}
    for block, spec in zip(blocks, specs, strict=True):
        wide = torch.promote_types(spec.vector.dtype, torch.float32)
        scaled = (spec.coeff * spec.vector.detach().to("cpu", wide)).float()  # [d_model]
        directions[block] = directions[block] + scaled if block in directions else scaled

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, _CV_ARCH)  # writes general.architecture = "controlvector"
        writer.add_string(f"{_CV_ARCH}.model_hint", model_hint)
        writer.add_int32(f"{_CV_ARCH}.layer_count", len(directions))
        for block in sorted(directions):
            writer.add_tensor(f"direction.{block}", directions[block].numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomically(path, write)


def load_control_vector(path: str | os.PathLike, n_layers: int | None = None) -> list[SteeringSpec]:
    """Read a llama.cpp control vector: ``[SteeringSpec(N, "resid_post", direction.N)]`` by N.

    Each vector is [d_model] float32 with coeff 1 (llama.cpp's strength is yours to set: scale
    the specs). Refuses what llama.cpp refuses (names other than direction.N with N >= 1, non-F32
    or non-1-D tensors, unequal lengths) and a file whose general.architecture is not
    "controlvector". With n_layers, also refuses N >= n_layers (llama.cpp would ignore them).
    """
    import gguf
    import numpy as np

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error) as err:
        raise ValueError(f"{path} is not a readable GGUF file: {err}") from err
    arch_field = reader.get_field("general.architecture")
    arch = None if arch_field is None else bytes(arch_field.parts[-1]).decode("utf-8", "replace")
    if arch != _CV_ARCH:
        raise ValueError(f"{path}: general.architecture is {arch!r}; a control vector has {_CV_ARCH!r}")
    directions: dict[int, torch.Tensor] = {}
    width = None
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None or int(match[1]) == 0:
            raise ValueError(
                f"{path}: tensor {tensor.name!r} is not direction.N with N >= 1, which is all llama.cpp reads"
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ValueError(
                f"{path}: {tensor.name} is {tensor.tensor_type.name} of shape {tuple(int(n) for n in tensor.shape)}; "
                "llama.cpp reads only 1-D F32 directions"
            )
        vector = torch.from_numpy(np.array(tensor.data, dtype=np.float32))  # a copy: the reader maps the file
        if width is not None and vector.shape[0] != width:
            raise ValueError(f"{path}: {tensor.name} has length {vector.shape[0]}, the directions before it {width}")
        width = vector.shape[0]
        block = int(match[1])
        if n_layers is not None and block >= n_layers:
            raise ValueError(f"{path}: {tensor.name} names block {block}, but n_layers={n_layers}")
        directions[block] = directions[block] + vector if block in directions else vector  # as llama.cpp sums
    if not directions:
        raise ValueError(f"{path} holds no direction.N tensor")
    return [SteeringSpec(block, "resid_post", directions[block]) for block in sorted(directions)]


# ----------------------------------------------------------------------------------------------
# Portable spec files (safetensors + JSON)


def _model_info(model: torch.nn.Module) -> dict[str, Any]:
    n_layers, d_model = dims(model)
    config = model.config
    return {
        "name": str(getattr(config, "name_or_path", "") or ""),
        "model_type": config.model_type,
        "n_layers": n_layers,
        "d_model": d_model,
    }


def _digest(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the metadata JSON exactly as stored and of every tensor (name, dtype, shape, bytes).

    Over the stored text, not the parsed values: "0.30000000000000004" and "...05" parse to one float.
    """
    h = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        h.update(f"\n{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write(path: str | os.PathLike, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` and ``meta`` (as JSON, with its digest) as one safetensors file."""
    from safetensors.torch import save

    text = json.dumps(meta)
    data = save(tensors, metadata={_META_KEY: text, _DIGEST_KEY: _digest(text, tensors)})
    _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def save_specs(specs: Iterable[SteeringSpec], path: str | os.PathLike, *, model: torch.nn.Module | None) -> None:
    """Write every field of ``specs`` to one safetensors file, exactly (vectors keep their dtype).

    model: the HF model they were made for (its name, model type, n_layers and d_model are
    recorded, and the specs are checked against it first), or None if unknown.
    The JSON lives in the safetensors header, so the vectors and what they mean cannot be
    separated, and a sha256 over both makes any corruption an error on load.
    """
    specs = _spec_list(specs)
    info = None
    if model is not None:
        info = _model_info(model)
        SteeringPlan(specs, info["n_layers"], info["d_model"])  # raises, naming the spec, before writing
    tensors, entries = {}, []
    for i, spec in enumerate(specs):
        dtype = str(spec.vector.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"specs[{i}].vector has dtype {dtype}; allowed: {', '.join(_DTYPES)}")
        name = f"specs.{i}.vector"
        # A copy of its own: safetensors refuses tensors that share memory (one vector in two specs).
        tensors[name] = spec.vector.detach().to("cpu", copy=True).contiguous()
        entries.append(
            {
                "layer": spec.layer,
                "site": spec.site,
                "coeff": spec.coeff,
                "start": spec.start,
                "rows": None if spec.rows is None else list(spec.rows),
                "tensor": name,
                "dtype": dtype,
                "shape": list(spec.vector.shape),
            }
            # Written only when it is not "add": a file of additions stays the one every version reads.
            | ({} if spec.op == "add" else {"op": spec.op})
        )
    _write(path, {"format": SPECS_FORMAT, "version": SPECS_VERSION, "model": info, "specs": entries}, tensors)


_ENTRY_TYPES = {
    "layer": int,
    "site": str,
    "coeff": (int, float),
    "start": int,
    "rows": (list, type(None)),
    "tensor": str,
    "dtype": str,
    "shape": list,
    "op": str,
}
_MODEL_TYPES = {"name": str, "model_type": str, "n_layers": int, "d_model": int}


def _check_fields(where: str, value: Any, types: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    missing, extra = sorted(types.keys() - value.keys()), sorted(value.keys() - types.keys())
    if missing or extra:
        raise ValueError(f"{where} has missing keys {missing} and unknown keys {extra}; expected {sorted(types)}")
    for key, kind in types.items():
        if isinstance(value[key], bool) or not isinstance(value[key], kind):
            raise ValueError(f"{where}.{key}={value[key]!r} has the wrong type")


def _read_meta(path: str | os.PathLike, data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and verify a spec file's bytes: (metadata, tensors), or ValueError saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    header_len = int.from_bytes(data[:8], "little")  # safetensors checked the layout just now
    raw = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    if _META_KEY not in raw:
        raise ValueError(f"{path} has no {_META_KEY!r} metadata: it was not written by save_specs")
    try:
        meta = json.loads(raw[_META_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its {_META_KEY!r} metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != SPECS_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"{path}: format is {got!r}, expected {SPECS_FORMAT!r}")
    if meta.get("version") != SPECS_VERSION:
        raise ValueError(
            f"{path}: format version {meta.get('version')!r} is not supported; this code reads version {SPECS_VERSION}"
        )
    if raw.get(_DIGEST_KEY) != _digest(raw[_META_KEY], tensors):
        raise ValueError(f"{path} is corrupt: its sha256 does not match its contents")
    _check_fields("metadata", meta, {"format": str, "version": int, "model": (dict, type(None)), "specs": list})
    return meta, tensors


def load_specs(path: str | os.PathLike, model: torch.nn.Module | None = None) -> list[SteeringSpec]:
    """Read a file written by save_specs: the same SteeringSpecs, vectors on CPU in their dtype.

    With ``model``, refuses a file made for another d_model or number of blocks, and any spec
    whose layer or width does not fit the model. A truncated, corrupt, unknown-version or
    incomplete file raises ValueError; nothing is returned half-read.
    """
    meta, tensors = _read_meta(path, Path(path).read_bytes())
    recorded = meta["model"]
    if recorded is not None:
        _check_fields("metadata.model", recorded, _MODEL_TYPES)
    if not meta["specs"]:
        raise ValueError(f"{path} lists no specs")
    specs, used = [], set()
    for i, entry in enumerate(meta["specs"]):
        entry = {"op": "add"} | entry  # files of additions have no "op"
        _check_fields(f"specs[{i}]", entry, _ENTRY_TYPES)
        tensor = tensors.get(entry["tensor"])
        if tensor is None:
            raise ValueError(f"{path}: specs[{i}].tensor={entry['tensor']!r} is not in the file")
        if entry["dtype"] not in _DTYPES or tensor.dtype != _DTYPES[entry["dtype"]]:
            raise ValueError(f"{path}: specs[{i}] says dtype {entry['dtype']}, the tensor is {tensor.dtype}")
        if list(tensor.shape) != entry["shape"]:
            raise ValueError(f"{path}: specs[{i}] says shape {entry['shape']}, the tensor is {list(tensor.shape)}")
        used.add(entry["tensor"])
        try:
            specs.append(
                SteeringSpec(
                    entry["layer"], entry["site"], tensor, entry["coeff"], entry["start"], entry["rows"], entry["op"]
                )
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: specs[{i}]: {err}") from err
    if extra := sorted(tensors.keys() - used):
        raise ValueError(f"{path} holds tensors no spec uses: {extra}")
    if model is not None:
        n_layers, d_model = dims(model)
        if recorded is not None and (recorded["n_layers"], recorded["d_model"]) != (n_layers, d_model):
            raise ValueError(
                f"{path} was made for {recorded['name'] or recorded['model_type']!r} with "
                f"n_layers={recorded['n_layers']}, d_model={recorded['d_model']}; this model has "
                f"n_layers={n_layers}, d_model={d_model} (load with model=None to take the specs anyway)"
            )
        try:
            SteeringPlan(specs, n_layers, d_model)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    return specs
