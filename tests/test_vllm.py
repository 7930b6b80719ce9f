"""vllm_worker: steering inside vLLM's engine agrees with pytorch_hooks on SmolLM2, request by request.

Runs in the vLLM leg (.ci/vllm: its own environment, where a missing vLLM fails); elsewhere it skips.
One engine for the module (~40 s to start on 2 cores). Its settings make the cases below hard:
max_num_batched_tokens=32 splits every prompt's prefill into chunks (a spec's positions must continue
across them), and the prefix cache is on (vLLM's default), with the unsteered prompt computed first,
so a steered request that reused its cached blocks would start from an unsteered prefill.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

if os.environ.get("STEERING_BACKENDS_VLLM_REQUIRED"):
    import vllm  # noqa: F401  (the vLLM leg: an import error fails it)
else:
    pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM leg, .ci/vllm, runs these tests)")

from vllm import LLM, SamplingParams

from steering_backends import models, pytorch_hooks
from steering_backends.spec import SteeringSpec
from steering_backends.vllm_worker import EXTENSION, steer, steered, steering_body, steering_json

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would reserve 4
NEW_TOKENS = 12
PROMPT = (
    "<|im_start|>user\nWrite two sentences about the weather this weekend in the city, and say what "
    "the people who live there will most likely do outside on Saturday and Sunday.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Log-probabilities of the greedy tokens, vLLM vs pytorch_hooks on the same steering (float32, CPU: vLLM's
# kernels sum in another order): max |Δ| measured 2.5e-5 nats (ablate_after_add; the other cases 0.9-1.9e-5,
# unsteered 1.0e-5), on tokens of log-probability -0.0 to -2.9. Allowed: 1e-4, 4x the largest.
LOGPROB_TOLERANCE = 1e-4


def _vector(seed: int, scale: float, rows: int | None = None, width: int = 576) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (width,) if rows is None else (rows, width)
    return torch.randn(shape, generator=generator) * scale


# Each case's specs; scales chosen so that each changes the greedy tokens (asserted below).
CASES = {
    "resid_pre": [SteeringSpec(6, "resid_pre", _vector(1, 1.0), 2.0)],
    "resid_post": [SteeringSpec(21, "resid_post", _vector(2, 1.0), 2.0)],
    "attn_out": [SteeringSpec(10, "attn_out", _vector(3, 1.0), 3.0)],
    "mlp_out": [SteeringSpec(15, "mlp_out", _vector(4, 1.0), 3.0)],
    "start_20": [SteeringSpec(12, "resid_pre", _vector(5, 1.0), 3.0, start=20)],
    "per_position": [SteeringSpec(3, "resid_pre", _vector(6, 1.0, rows=4), 6.0, start=10)],
    "ablate_after_add": [
        SteeringSpec(8, "resid_post", _vector(7, 1.0), 3.0),
        SteeringSpec(8, "resid_post", _vector(8, 1.0), op="ablate"),
    ],
}


@pytest.fixture(scope="module")
def hf():
    return models.smollm2()


@pytest.fixture(scope="module")
def ids(hf):
    ids = hf[1](PROMPT).input_ids
    assert len(ids) > 32  # longer than one prefill chunk, and one 32-token cache block
    return ids


@pytest.fixture(scope="module")
def llm(hf):
    llm = LLM(
        str(models.cache_dir() / models.SMOLLM2),  # its config.json names LlamaForCausalLM (models.smollm2)
        worker_extension_cls=EXTENSION,
        enforce_eager=True,
        dtype="float32",
        max_model_len=256,
        max_num_batched_tokens=32,
        max_num_seqs=16,
        block_size=32,  # the CPU attention backend takes multiples of 32
        enable_prefix_caching=True,
        seed=0,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


def _greedy(logprobs: bool = True) -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=0 if logprobs else None)


def _tokens_and_logprobs(output) -> tuple[list[int], list[float]]:
    tokens, steps = output.outputs[0].token_ids, output.outputs[0].logprobs
    return list(tokens), [step[t].logprob for t, step in zip(tokens, steps, strict=True)]


@pytest.fixture(scope="module")
def runs(llm, ids) -> dict:
    """vLLM's greedy tokens and their log-probabilities: the unsteered prompt alone (first, so its
    blocks are in the prefix cache), then one batch of every case with an unsteered copy among them."""
    with steer(llm):
        alone = llm.generate([{"prompt_token_ids": ids}], _greedy(), use_tqdm=False)[0]
        requests = [steered(llm, ids, specs, _greedy()) for specs in CASES.values()]
        requests.insert(3, ({"prompt_token_ids": ids}, _greedy()))
        outputs = llm.generate([p for p, _ in requests], [s for _, s in requests], use_tqdm=False)
    results = dict(zip([*list(CASES)[:3], "unsteered in the batch", *list(CASES)[3:]], outputs, strict=True))
    return {"unsteered alone": _tokens_and_logprobs(alone)} | {k: _tokens_and_logprobs(v) for k, v in results.items()}


def _hf_greedy(hf, ids: list[int], specs) -> tuple[list[int], list[float]]:
    """pytorch_hooks' greedy tokens and the log-probability of each, read in one forward of the whole text."""
    model, _ = hf
    with pytorch_hooks.steer(model, specs):
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        logits = model(out).logits[0, len(ids) - 1 : -1]
    new = out[0, len(ids) :]
    return new.tolist(), logits.log_softmax(-1).gather(-1, new[:, None])[:, 0].tolist()


@pytest.mark.parametrize("case", list(CASES))
def test_steered_requests_in_one_batch_give_pytorch_hooks_tokens(case, hf, ids, runs):
    tokens, logprobs = runs[case]
    expected, expected_logprobs = _hf_greedy(hf, ids, CASES[case])
    assert tokens != runs["unsteered alone"][0]  # the steering changes the text, so the check can fail
    assert tokens == expected
    assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs, strict=True)) <= LOGPROB_TOLERANCE


def test_an_unsteered_request_gives_its_own_tokens_in_a_mixed_batch(hf, ids, runs):
    assert runs["unsteered in the batch"][0] == runs["unsteered alone"][0] == _hf_greedy(hf, ids, [])[0]


def test_without_the_salt_a_steered_request_reuses_an_unsteered_prefill(llm, hf, ids, runs):
    """Why steered() salts the prompt: the same specs in extra_args alone hit the unsteered prompt's
    cached blocks, so its first 32 positions (one cache block) run unsteered and the tokens are not pytorch_hooks'."""
    specs = CASES["resid_pre"]
    _, params = steered(llm, ids, specs, _greedy(logprobs=False))
    with steer(llm):
        unsalted = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
    assert list(unsalted.outputs[0].token_ids) != _hf_greedy(hf, ids, specs)[0] == runs["resid_pre"][0]


def test_outside_the_block_no_request_is_steered(llm, ids, runs):
    prompt, params = steered(llm, ids, CASES["resid_post"], _greedy(logprobs=False))
    output = llm.generate([prompt], params, use_tqdm=False)[0]
    assert list(output.outputs[0].token_ids) == runs["unsteered alone"][0]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([SteeringSpec(30, "resid_pre", _vector(1, 1.0))], r"specs\[0\]\.layer=30 is out of range"),
        ([SteeringSpec(0, "resid_pre", torch.ones(64))], r"width 64, but this model's d_model is 576"),
        ([SteeringSpec(0, "resid_pre", _vector(1, 1.0), rows=[True])], r"rows=\(True,\): in vLLM each request"),
        ([SteeringSpec(0, "resid_pre", _vector(1, 1.0, rows=40), start=10)], r"needs at least 50 tokens; it has"),
    ],
    ids=["layer", "width", "rows", "too short"],
)
def test_a_bad_spec_raises_in_the_callers_process(llm, ids, specs, message):
    with pytest.raises(ValueError, match=message):
        steered(llm, ids, specs, _greedy())


def test_the_json_a_request_carries_is_the_specs(ids):
    from steering_backends.vllm_worker import _plan

    specs = CASES["ablate_after_add"] + CASES["per_position"]
    plan = _plan(steering_json(specs), 30, 576)
    for spec, back in zip(specs, plan.specs, strict=True):
        assert (back.layer, back.site, back.coeff, back.start, back.op) == (
            spec.layer,
            spec.site,
            spec.coeff,
            spec.start,
            spec.op,
        )
        assert torch.equal(back.vector, spec.vector)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """vLLM's OpenAI-compatible server of SmolLM2 with SteeringWorker, on a free localhost port; stopped
    after the module."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = str(models.cache_dir() / models.SMOLLM2)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # The server `vllm serve` starts; that command of vllm-cpu 0.32.0 stops before parsing its arguments
    # (it asks for the version of a distribution named "vllm", which the CPU build is not).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port", str(port)]
    command += ["--worker-cls", "steering_backends.vllm_worker.SteeringWorker", "--enforce-eager", "--dtype", "float32"]
    command += ["--middleware", "steering_backends.vllm_worker.admission"]
    command += ["--max-model-len", "256", "--seed", "0"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 (not listening yet: connection refused, of whatever type openai raises)
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not answer within 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield client, folder
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_server_steers_the_requests_that_name_steering_in_extra_body(server, hf, ids, runs):
    """Over HTTP with the openai client: a request whose extra_body carries specs (steering_body) gets
    pytorch_hooks' tokens, and one without gets the unsteered tokens, from the same server."""
    client, folder = server

    def tokens(**extra):
        response = client.completions.create(
            model=folder,
            prompt=ids,
            max_tokens=NEW_TOKENS,
            temperature=0,
            extra_body={"return_token_ids": True, **extra},
        )
        return response.choices[0].token_ids

    assert (
        tokens(**steering_body(CASES["resid_post"]))
        == runs["resid_post"][0]
        == _hf_greedy(hf, ids, CASES["resid_post"])[0]
    )
    assert tokens() == runs["unsteered alone"][0]


@pytest.mark.parametrize(
    ("extra_body", "message"),
    [
        (steering_body([SteeringSpec(30, "resid_pre", _vector(1, 1.0))]), r"specs\[0\]\.layer=30 is out of range"),
        (steering_body([SteeringSpec(0, "resid_pre", torch.ones(64))]), r"width 64, but this model's d_model is 576"),
        (
            steering_body([SteeringSpec(0, "resid_pre", _vector(1, 1.0, rows=40), start=10)]),
            r"needs at least 50 tokens",
        ),
        ({"vllm_xargs": {"steering": "[{"}}, r"is not JSON"),
        ({"vllm_xargs": {"steering": '[{"layer": 0, "site": "resid", "vector": [0]}]'}}, r"site"),
    ],
    ids=["layer", "width", "too short", "not JSON", "site"],
)
def test_the_server_answers_a_bad_spec_400_and_keeps_serving(server, ids, runs, extra_body, message):
    """The admission middleware refuses a bad spec before the engine sees it: HTTP 400 naming the field, and
    the next request is served as before (in the worker, the same error would stop the engine)."""
    import openai

    client, folder = server
    with pytest.raises(openai.BadRequestError, match=message):
        client.completions.create(model=folder, prompt=ids, max_tokens=2, extra_body=extra_body)
    response = client.completions.create(
        model=folder, prompt=ids, max_tokens=NEW_TOKENS, temperature=0, extra_body={"return_token_ids": True}
    )
    assert response.choices[0].token_ids == runs["unsteered alone"][0]


GPT2_CASES = {  # a random GPT-2 (4 blocks, d_model 128, 2 heads): large coefficients, so each changes its tokens
    "resid_pre of block 0": [SteeringSpec(0, "resid_pre", _vector(1, 1.0, width=128), 8.0)],
    "resid_post": [SteeringSpec(2, "resid_post", _vector(2, 1.0, width=128), 8.0)],
    "attn_out, start 20": [SteeringSpec(1, "attn_out", _vector(3, 1.0, width=128), 8.0, start=20)],
    "mlp_out": [SteeringSpec(3, "mlp_out", _vector(4, 1.0, width=128), 8.0)],
}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism on CPU binds one core per rank")
def test_gpt2_under_tensor_parallelism_gives_pytorch_hooks_tokens(tmp_path, monkeypatch):
    """GPT-2's blocks pass the stream itself; with tensor_parallel_size=2 each rank adds the same vector to the
    stream it holds whole after each all-reduce. One request per site in one batch, as pytorch_hooks steers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=2, n_positions=256)).eval()
    model.save_pretrained(tmp_path)
    models.gpt2_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (vLLM refuses to choose on 1 NUMA node)
    llm = LLM(
        str(tmp_path),
        worker_extension_cls=EXTENSION,
        enforce_eager=True,
        dtype="float32",
        max_model_len=256,
        max_num_batched_tokens=32,
        block_size=32,
        tensor_parallel_size=2,
        seed=0,
    )
    try:
        ids = list(range(100, 140))
        greedy = _greedy(logprobs=False)
        with steer(llm):
            requests = [steered(llm, ids, specs, greedy) for specs in [[], *GPT2_CASES.values()]]
            outputs = llm.generate([p for p, _ in requests], [s for _, s in requests], use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    unsteered, *steered_tokens = (list(o.outputs[0].token_ids) for o in outputs)
    for specs, tokens in zip([[], *GPT2_CASES.values()], [unsteered, *steered_tokens], strict=True):
        with pytorch_hooks.steer(model, specs):
            expected = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        assert tokens == expected[0, len(ids) :].tolist()
        assert not specs or tokens != unsteered  # the steering changes the tokens, so the check can fail
