"""The offline models: the real GPT-2 tokenizer, seeded random models, SmolLM2 from its GGUF file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import steering_backends.models as models
from steering_backends.models import SMOLLM2, cache_dir, load, random_model, smollm2, smollm2_gguf


def test_tokenizer_is_gpt2s_and_loads_from_its_folder(tokenizer):
    # Published GPT-2 ids: "Hello world" -> [15496, 995]; <|endoftext|> is 50256.
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257
    again = AutoTokenizer.from_pretrained(cache_dir() / "gpt2-tokenizer")
    text = " Love is the answer — naïve café 🙂"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]) == text


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    one, other = a.state_dict(), b.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[name], other[name]) for name in one)


def test_random_models_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = random_model("tiny-gpt2-random"), random_model("tiny-gpt2-random")
    assert torch.rand(1) == expected_next
    assert same_weights(a, b)
    assert not torch.equal(
        a.transformer.h[0].attn.c_attn.weight,
        random_model("tiny-gpt2-random", seed=1).transformer.h[0].attn.c_attn.weight,
    )
    assert not a.training


def test_a_name_neither_offline_nor_cached_names_the_offline_models_when_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(
        OSError,
        match="'gpt2-xxl' is not in the local cache and the model hub is unreachable .*; "
        "offline, use one of smollm2-135m, tiny-gpt2-random, tiny-llama-random, .*, gpt2-xl-random, .*, "
        "tiny-mixtral-random or a folder",
    ):
        load("gpt2-xxl")


@pytest.fixture(scope="module")
def smol():
    return smollm2()


def test_smollm2_is_a_trained_llama_that_knows_things(smol):
    model, tokenizer = smol
    assert model.config.model_type == "llama" and (model.config.num_hidden_layers, model.config.hidden_size) == (
        30,
        576,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # "135M"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_smollm2s_tokenizer_is_the_same_whichever_transformers_converted_it(smol):
    """transformers 4 builds the GGUF's tokenizer with <|im_start|> prepended to every encoding and
    as end of sequence; the cache holds it as 5 builds it, in both legs of CI. SmolLM2's vocabulary:
    " love" is 2606, <|im_start|> 1, "user" 4093, <|im_end|> 2 (the model's eos in its config)."""
    _, tokenizer = smol
    assert tokenizer.encode(" love") == [2606]  # nothing prepended
    assert tokenizer("<|im_start|>user").input_ids == [1, 4093]  # <|im_start|> once, from the text
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tokenizer.eos_token_id == 2 == smol[0].generation_config.eos_token_id


def test_a_cache_of_an_older_format_is_not_valid(smol, tmp_path):
    folder = tmp_path / SMOLLM2
    shutil.copytree(cache_dir() / SMOLLM2, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = models.CACHE_FORMAT - 1  # e.g. a tokenizer as transformers 4 built it
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not models._cache_is_valid(folder, smollm2_gguf())


def test_smollm2_loads_from_the_cache_without_converting_again(smol, monkeypatch):
    def convert(*args):
        raise AssertionError("a valid cache must not be converted again")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    model, _ = smollm2()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), smol[0].state_dict().values(), strict=True)
    )


def corrupt(folder):
    """Flip one byte in the middle of the weights file."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        corrupt,
        lambda folder: (folder / "manifest.json").unlink(),  # conversion stopped before the manifest
        lambda folder: (folder / "tokenizer.json").unlink(),
        lambda folder: (folder / "manifest.json").write_text("{not json"),
    ],
    ids=["flipped byte", "no manifest", "missing file", "bad manifest"],
)
def test_a_damaged_cache_is_not_valid(smol, tmp_path, damage):
    folder = tmp_path / SMOLLM2
    shutil.copytree(cache_dir() / SMOLLM2, folder)
    assert models._cache_is_valid(folder, smollm2_gguf())
    damage(folder)
    assert not models._cache_is_valid(folder, smollm2_gguf())


def test_the_cache_names_its_architecture_and_an_older_cache_gets_it_in_place(smol, tmp_path):
    """config.json names LlamaForCausalLM (vLLM and other tools read it to pick the class); a cache
    converted before that is completed in place and stays valid, with nothing converted again."""
    assert AutoConfig.from_pretrained(cache_dir() / SMOLLM2).architectures == ["LlamaForCausalLM"]
    folder = tmp_path / SMOLLM2
    shutil.copytree(cache_dir() / SMOLLM2, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]  # as an older conversion wrote it, with its manifest's checksum
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["config.json"] = models._sha256(folder / "config.json")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert models._cache_is_valid(folder, smollm2_gguf())
    models._record_architectures(folder)
    assert AutoConfig.from_pretrained(folder).architectures == ["LlamaForCausalLM"]
    assert models._cache_is_valid(folder, smollm2_gguf())
    assert {path.name for path in folder.iterdir()} == {path.name for path in (cache_dir() / SMOLLM2).iterdir()}


def test_a_manifest_without_reference_logits_is_not_valid(smol, tmp_path):
    # Caches written before the reference check are converted again, not completed (models._cache_is_valid).
    folder = tmp_path / SMOLLM2
    shutil.copytree(cache_dir() / SMOLLM2, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["reference"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not models._cache_is_valid(folder, smollm2_gguf())


def _rope_theta_10000(folder, dtype, **dispatch):
    """What transformers 4.57 made of a cache written by 5 before models._from_cache translated the
    key: SmolLM2 with RoPE base 10000 instead of 100000, set here in whichever place this version reads."""
    config = AutoConfig.from_pretrained(folder)
    if "rope_theta" in vars(config):  # transformers 4
        config.rope_theta = 10000.0
    else:  # transformers 5
        config.rope_parameters["rope_theta"] = 10000.0
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, **dispatch).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_model_that_loads_wrong_is_refused_naming_what_differs(smol, monkeypatch, dtype):
    monkeypatch.setattr(models, "_from_cache", _rope_theta_10000)
    with pytest.raises(ValueError, match=r"logits differ .* config differs: rope_theta=10000.0 \(recorded 100000.0\)"):
        smollm2(dtype)  # bfloat16: checked through a float32 load of the same files


def test_a_tokenizer_that_reads_the_prompt_differently_is_refused(smol, monkeypatch):
    manifest = json.loads((cache_dir() / SMOLLM2 / "manifest.json").read_text())
    manifest["reference"]["ids"] = manifest["reference"]["ids"][:-1]
    with pytest.raises(ValueError, match=r"the tokenizer reads .* as \[1, .*\], the cache recorded"):
        models._check_reference(smol[0], smol[1], manifest, cache_dir() / SMOLLM2)


def test_a_corrupt_cache_is_rebuilt_not_used(smol, tmp_path, monkeypatch):
    shutil.copytree(cache_dir() / SMOLLM2, tmp_path / SMOLLM2)
    corrupt(tmp_path / SMOLLM2)
    monkeypatch.setenv("STEERING_BACKENDS_CACHE", str(tmp_path))
    model, _ = smollm2()  # converts the GGUF again (~20 s)
    assert models._cache_is_valid(tmp_path / SMOLLM2, smollm2_gguf())
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), smol[0].state_dict().values(), strict=True)
    )
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2]  # no partial folder left behind
