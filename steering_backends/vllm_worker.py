"""Steering inside vLLM's engine, each request with its own specs. Copy this file, spec.py and layout.py.

    llm = LLM(folder, worker_extension_cls=EXTENSION, enforce_eager=True, dtype="float32")
    with steer(llm):                         # hooks in every worker process, removed on exit
        prompt, params = steered(llm, ids, [SteeringSpec(21, "resid_post", v, 4.0)], SamplingParams(max_tokens=20))
        outputs = llm.generate([prompt, {"prompt_token_ids": ids}], [params, SamplingParams(max_tokens=20)])

    vllm serve FOLDER --worker-cls steering_backends.vllm_worker.SteeringWorker --enforce-eager \
        --middleware steering_backends.vllm_worker.admission    # hooks from the start; bad specs answered 400
    client.completions.create(model=FOLDER, prompt=ids, max_tokens=20, extra_body=steering_body(specs))

A request carries its specs as JSON in ``SamplingParams.extra_args["steering"]`` (the OpenAI server takes the
same as ``extra_body={"vllm_xargs": {...}}``: ``steering_body``), so one batch mixes unsteered requests and
different vectors. Its prompt carries ``cache_salt`` = SHA-256 of that JSON: vLLM's prefix cache keys blocks by
it, so KV blocks are shared only between requests with the same steering, never with an unsteered one.

vLLM's module names are HF's (layout.py's table serves both). Where each site is:
    model       forward pre-hook on the top-level model (not the decoder: vLLM's @support_torch_compile
                replaces the decoder's __call__, so its module hooks never run): the step's token -> request
                map, in force until the model's forward hook (always_call=True: also on error)
    resid_pre   forward pre-hook on the block. A Llama block takes (positions, hidden_states, residual) and the
                stream is hidden_states + residual (vLLM adds the residual inside the next fused add-RMSNorm);
                a GPT-2 block takes the stream itself
    resid_post  forward hook on the block: the same (hidden_states, residual) pair, or the stream
    attn_out    forward hook on the attention sublayer, after o_proj / c_proj (and its tensor-parallel all-reduce)
    mlp_out     forward hook on the MLP sublayer, after down_proj / c_proj (likewise)
Under tensor parallelism every rank holds the whole stream after each all-reduce, so each adds the same vector.
Hooks need eager execution (enforce_eager=True): torch.compile and CUDA graphs would replay the model without them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch
from vllm import LLM, SamplingParams
from vllm.config import CompilationMode

from .layout import LAYOUTS, get_module, site_module_name
from .spec import SITES, SteeringPlan, SteeringSpec

__all__ = ["EXTENSION", "SteeringExtension", "admission", "steer", "steered", "steering_body", "steering_json"]

# Types whose vLLM blocks pass (hidden_states, residual) pairs or the stream as described above, and are tested.
VLLM_TYPES = ("gpt2", "llama", "mistral", "qwen2")
EXTENSION = f"{__name__}.SteeringExtension"  # LLM(..., worker_extension_cls=EXTENSION) / --worker-extension-cls
_FIELDS = ("layer", "site", "coeff", "start", "op")


def steering_json(specs: Sequence[SteeringSpec]) -> str:
    """The specs as the JSON a request carries (vectors as float32 lists; ``rows`` is refused: a request is a row)."""
    for i, spec in enumerate(specs):
        if spec.rows is not None:
            raise ValueError(
                f"specs[{i}].rows={spec.rows!r}: in vLLM each request is one row; give the specs only to the "
                "requests to steer (rows must be None)"
            )
    return json.dumps(
        [{**{f: getattr(spec, f) for f in _FIELDS}, "vector": spec.vector.float().tolist()} for spec in specs]
    )


def _dims(config: Any) -> tuple[int, int]:
    """(n_layers, d_model) of a HF config of a type whose vLLM blocks this file knows."""
    if config.model_type not in VLLM_TYPES:
        raise ValueError(
            f"model type {config.model_type!r} is not supported in vLLM here; supported: {', '.join(VLLM_TYPES)} "
            "(other types' vLLM blocks add their sublayers otherwise: post-norms, multipliers, experts)"
        )
    layout = LAYOUTS[config.model_type]
    return getattr(config, layout.n_layers_attr), getattr(config, layout.d_model_attr)


@functools.lru_cache(maxsize=256)  # immutable plans keyed by their JSON: a steering decoded once, not every step
def _plan(text: str, n_layers: int, d_model: int) -> SteeringPlan:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"extra_args['steering'] is not JSON ({err}); make it with steering_json(specs)") from None
    if not isinstance(items, list) or not all(isinstance(item, dict) and "vector" in item for item in items):
        raise ValueError(f"extra_args['steering'] must be a JSON list of specs with a vector; got {text[:80]!r}")
    specs = []
    for i, item in enumerate(items):
        unknown = set(item) - {*_FIELDS, "vector"}
        if unknown:
            raise ValueError(
                f"steering specs[{i}] has unknown fields {sorted(unknown)}; allowed: {', '.join(_FIELDS)}, vector"
            )
        specs.append(SteeringSpec(**{**item, "vector": torch.tensor(item["vector"], dtype=torch.float32)}))
    return SteeringPlan(specs, n_layers, d_model)


def _check_length(plan: SteeringPlan, n_tokens: int) -> None:
    """Refuse a prompt too short for a per-position vector, as the HF backends do (vLLM would go on adding its
    remaining rows to the generated tokens)."""
    for i, spec in enumerate(plan.specs):
        if spec.per_position and n_tokens < spec.start + spec.vector.shape[0]:
            raise ValueError(
                f"specs[{i}] adds {spec.vector.shape[0]} rows from position {spec.start}, so the prompt needs at least "
                f"{spec.start + spec.vector.shape[0]} tokens; it has {n_tokens}"
            )


def steered(
    llm: LLM, prompt: str | list[int], specs: Sequence[SteeringSpec], params: SamplingParams
) -> tuple[dict[str, Any], SamplingParams]:
    """(prompt, params) of one steered request: validated against the model, params copied with the specs
    in extra_args, the prompt salted with their hash. No specs: the request as it was, unsteered."""
    key = "prompt" if isinstance(prompt, str) else "prompt_token_ids"
    if not specs:
        return {key: prompt}, params
    text = steering_json(specs)
    n_layers, d_model = _dims(llm.llm_engine.model_config.hf_config)
    plan = SteeringPlan(specs, n_layers, d_model)  # raises ValueError naming the spec, in this process
    _check_length(plan, len(llm.get_tokenizer().encode(prompt) if isinstance(prompt, str) else prompt))
    params = params.clone()
    params.extra_args = {**(params.extra_args or {}), "steering": text}
    return {key: prompt, "cache_salt": hashlib.sha256(text.encode()).hexdigest()}, params


def steering_body(specs: Sequence[SteeringSpec]) -> dict[str, Any]:
    """``extra_body`` of an OpenAI-client request to a server started with --worker-extension-cls EXTENSION."""
    text = steering_json(specs)
    return {"vllm_xargs": {"steering": text}, "cache_salt": hashlib.sha256(text.encode()).hexdigest()}


async def admission(request: Any, call_next: Any) -> Any:
    """HTTP middleware of the OpenAI server (``--middleware steering_backends.vllm_worker.admission``): a request
    whose ``vllm_xargs`` carry steering is checked against the served model before vLLM admits it. A bad spec is
    answered 400, naming the field, and never reaches the engine, where its error would stop the server. A prompt
    given as text or token ids is checked against per-position vectors too; a chat's templated prompt is not."""
    from starlette.responses import JSONResponse

    body = None
    if request.method == "POST" and request.headers.get("content-type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):  # not JSON: vLLM answers it
            body = json.loads(await request.body())
    xargs = body.get("vllm_xargs") if isinstance(body, dict) else None
    text = xargs.get("steering") if isinstance(xargs, dict) else None
    if text is None:
        return await call_next(request)
    model_config = request.app.state.vllm_config.model_config
    try:
        if not isinstance(text, str):
            raise ValueError(
                f"vllm_xargs['steering'] must be steering_json(specs), a string; got {type(text).__name__}"
            )
        plan = _plan(text, *_dims(model_config.hf_config))
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            _check_length(plan, len(_tokenizer(model_config.tokenizer).encode(prompt)))
        elif isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
            _check_length(plan, len(prompt))
    except (ValueError, TypeError) as err:
        error = {"message": str(err), "type": "BadRequestError", "param": "vllm_xargs.steering", "code": 400}
        return JSONResponse({"error": error}, status_code=400)
    return await call_next(request)


@functools.cache
def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


@contextlib.contextmanager
def steer(llm: LLM) -> Iterator[LLM]:
    """Steer the requests that carry specs inside the block; the hooks leave every worker on exit, even on error."""
    try:
        llm.collective_rpc("steering_install")
        yield llm
    finally:
        llm.collective_rpc("steering_remove")


class SteeringExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); ``steer`` calls these in every worker process."""

    def steering_install(self) -> None:
        if self.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise ValueError(
                f"compilation mode {self.vllm_config.compilation_config.mode.name}: compiled models do not run module "
                "hooks; allowed: LLM(..., enforce_eager=True)"
            )
        self.steering_remove()
        runner = self.model_runner
        model = runner.get_model()
        n_layers, d_model = _dims(model.config)
        layout = LAYOUTS[model.config.model_type]
        step: ContextVar[_Step | None] = ContextVar("steering_step", default=None)

        def begin(module, args, kwargs):
            step.set(_Step.read(runner, kwargs["positions"], n_layers, d_model))

        def end(module, args, kwargs, output):
            step.set(None)

        stack = contextlib.ExitStack()
        self._steering_handles = stack
        stack.callback(model.register_forward_pre_hook(begin, with_kwargs=True).remove)
        stack.callback(model.register_forward_hook(end, with_kwargs=True, always_call=True).remove)
        for layer in range(n_layers):
            for site in SITES:
                module = get_module(model, site_module_name(layout, layer, site))
                if site == "resid_pre":
                    handle = module.register_forward_pre_hook(_input_editor(step, layer), with_kwargs=True)
                else:
                    handle = module.register_forward_hook(_output_editor(step, layer, site))
                stack.callback(handle.remove)

    def steering_remove(self) -> None:
        handles = getattr(self, "_steering_handles", None)
        self._steering_handles = None
        if handles is not None:
            handles.close()


def __getattr__(name: str) -> Any:
    # SteeringWorker subclasses this platform's worker, which is imported only when vLLM asks for it.
    if name == "SteeringWorker":
        return _steering_worker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _steering_worker() -> type:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from vllm.v1.worker.cpu_worker import CPUWorker as Worker
    else:  # CUDA and ROCm
        from vllm.v1.worker.gpu_worker import Worker

    class SteeringWorker(SteeringExtension, Worker):
        """vLLM's worker with the hooks installed once the model is loaded (``vllm serve --worker-cls``)."""

        def load_model(self, *args: Any, **kwargs: Any) -> None:
            super().load_model(*args, **kwargs)
            self.steering_install()

    SteeringWorker.__module__, SteeringWorker.__qualname__ = __name__, "SteeringWorker"  # importable by name
    return SteeringWorker


class _Step:
    """One forward step's steering: each distinct steering's plan with its tokens' positions [1, num_tokens]
    (-1 at every other request's tokens and at padding, which SteeringSpec.apply never steers)."""

    __slots__ = ("plans", "sites")

    def __init__(self, plans: list[tuple[SteeringPlan, torch.Tensor]]) -> None:
        self.plans = plans
        self.sites = {site for plan, _ in plans for site in plan.by_site}

    @classmethod
    def read(cls, runner: Any, positions: torch.Tensor, n_layers: int, d_model: int) -> _Step | None:
        """From the model runner's batch: request i owns tokens query_start_loc[i]:query_start_loc[i + 1] of
        the flattened batch; ``positions`` [num_tokens] is vLLM's (tokens already computed + offset in this
        step), so chunked prefills and decode steps count from the prompt's first token, as HF does."""
        batch = runner.input_batch
        groups: dict[str, list[int]] = {}
        for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            params = runner.requests[req_id].sampling_params
            text = (params.extra_args or {}).get("steering") if params is not None else None
            if text:
                groups.setdefault(text, []).append(i)
        if not groups:
            return None
        starts = runner.query_start_loc.cpu[: batch.num_reqs + 1]
        owner = torch.full(positions.shape, -1, dtype=torch.long)  # request of each token; padding: -1
        owner[: starts[-1]] = torch.arange(batch.num_reqs).repeat_interleave(starts.diff())
        owner = owner.to(positions.device)
        plans = []
        for text, requests in groups.items():
            mine = torch.isin(owner, torch.tensor(requests, device=positions.device))
            plans.append((_plan(text, n_layers, d_model), torch.where(mine, positions, -1)[None]))
        return cls(plans)

    def steer(self, layer: int, site: str, stream: torch.Tensor) -> torch.Tensor:
        """stream [num_tokens, d_model] with each steering's specs at (layer, site) applied to its tokens."""
        for plan, positions in self.plans:
            for spec in plan.by_site.get((layer, site), ()):
                stream = spec.apply(stream[None], positions)[0]  # a new tensor: vLLM's fused norms write in place
        return stream


def _steer_pair(step: _Step, layer: int, site: str, hidden: torch.Tensor, residual: torch.Tensor | None):
    """(hidden, residual) of a Llama block with the stream hidden + residual steered: (stream', zeros), which the
    next fused add-RMSNorm sums back exactly."""
    if residual is None:  # block 0's input: the embeddings are the stream
        return step.steer(layer, site, hidden), None
    return step.steer(layer, site, hidden + residual), torch.zeros_like(residual)


def _input_editor(step_var: ContextVar, layer: int):
    def hook(module, args, kwargs):
        step = step_var.get()
        if step is None or (layer, "resid_pre") not in step.sites:
            return None
        if len(args) == 3:  # Llama: (positions, hidden_states, residual)
            return (args[0], *_steer_pair(step, layer, "resid_pre", args[1], args[2])), kwargs
        return (step.steer(layer, "resid_pre", args[0]), *args[1:]), kwargs  # GPT-2: (hidden_states,)

    return hook


def _output_editor(step_var: ContextVar, layer: int, site: str):
    def hook(module, args, output):
        step = step_var.get()
        if step is None or (layer, site) not in step.sites:
            return None
        if isinstance(output, tuple):  # a Llama block's (hidden_states, residual)
            return _steer_pair(step, layer, site, *output)
        return step.steer(layer, site, output)

    return hook
