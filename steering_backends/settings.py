"""Named models and measured steering settings, importable without torch.

    kind, n_layers = offline_shape("tiny-gpt2-random")   # ("gpt2", 4), no weights loaded
    setting = default_setting("llama", 30, +1)         # Setting(block=21, ... the measured warmer one)

The command line reads these before it imports torch, so ``--help`` answers at once and a
``--layer`` the model does not have is refused before any weights load. models.py re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_PROMPT",
    "HUB_MODELS",
    "LOVE_HATE",
    "LOVE_HATE_X_VECTOR",
    "MODEL_NAMES",
    "OFFLINE_MODELS",
    "RANDOM_CONFIGS",
    "SENTIMENT",
    "SMOLLM2",
    "SMOLLM2_SHAPE",
    "Setting",
    "contrast_default",
    "default_setting",
    "offline_shape",
]

# name -> (model_type, n_layers, d_model, n_heads). GPT-2's vocabulary (50257) and
# tokenizer for all; Llama-family shapes use 2 key/value heads and a 4 x d_model MLP.
RANDOM_CONFIGS: dict[str, tuple[str, int, int, int]] = {
    "tiny-gpt2-random": ("gpt2", 4, 64, 4),  # for tests: ~3.3 M parameters, mostly the embedding
    "tiny-llama-random": ("llama", 4, 64, 4),
    "tiny-mistral-random": ("mistral", 4, 64, 4),
    "tiny-qwen2-random": ("qwen2", 4, 64, 4),
    "gpt2-random": ("gpt2", 12, 768, 12),  # GPT-2 small shape, 124 M
    "gpt2-xl-random": ("gpt2", 48, 1600, 25),  # GPT-2-XL shape, 1.56 B, ~6.7 GB in float32
    # The architectures people steer today, each with a rule of its own (layout.LAYOUTS):
    "tiny-gemma-random": ("gemma", 4, 64, 4),  # embeddings scaled by sqrt(d_model); tied
    "tiny-gemma2-random": ("gemma2", 4, 64, 4),  # post-norm sublayers, soft-capped logits
    "tiny-gemma3-random": ("gemma3_text", 4, 64, 4),  # post-norm sublayers, q/k norms
    "tiny-olmo2-random": ("olmo2", 4, 64, 4),  # post-norm sublayers only
    "tiny-pythia-random": ("gpt_neox", 4, 64, 4),  # parallel residual
    "tiny-phi3-random": ("phi3", 4, 64, 4),  # fused qkv_proj and gate_up_proj
    "tiny-qwen3-random": ("qwen3", 4, 64, 4),  # q/k norms
    "tiny-granite-random": ("granite", 4, 64, 4),  # sublayer outputs and embeddings multiplied
    "tiny-qwen3-moe-random": ("qwen3_moe", 4, 64, 4),  # sparse MoE MLP, 4 experts, top 2
    "tiny-mixtral-random": ("mixtral", 4, 64, 4),  # sparse MoE MLP, 4 experts, top 2
}
SMOLLM2 = "smollm2-135m"
SMOLLM2_SHAPE = ("llama", 30, 576, 9)  # SmolLM2-135M-Instruct, as its GGUF file describes it
DEFAULT_MODEL = SMOLLM2  # the offline model with real weights
OFFLINE_MODELS = (SMOLLM2, *RANDOM_CONFIGS)
# Examples: load() takes any hub id or saved folder of a model type layout.py supports.
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "HuggingFaceTB/SmolLM2-135M-Instruct")
MODEL_NAMES = (SMOLLM2, *RANDOM_CONFIGS, *HUB_MODELS)

# config.model_type -> (block, coeff) for the Love - Hate contrast vector at resid_pre: the
# original GPT-2-XL setting, and SmolLM2's from the sweep in tests/test_behaviour.py (the
# cleanest effect in both directions).
LOVE_HATE = {"gpt2": (6, 5.0), "llama": (18, 1.0)}
# The same for the Love - Hate ActivationAddition x-vector (added at the first positions only):
# the original for GPT-2; for SmolLM2 the largest margin shift of a sweep over blocks 3-18 and
# coeff 1-10 (+1.9 nats at block 9, coeff 5), though its negative moves the margin up too.
LOVE_HATE_X_VECTOR = {"gpt2": (6, 5.0), "llama": (9, 5.0)}
# config.model_type -> {+1: warmer, -1: colder}: (recipe, block, relative coefficient), the
# settings chosen by benchmarks/behaviour_sweep.py on sampled text (VADER) and reported on
# held-out prompts (benchmarks/results/behaviour_heldout.md). Measured on SmolLM2-135M.
SENTIMENT = {"llama": {1: ("mean_difference", 21, 0.25), -1: ("mean_difference", 24, -0.35)}}

# The prompt the first run samples, both ways: a held-out prompt of the sentiment sweep whose
# unsteered samples sit near neutral, so warmer and colder both have room to move (a prompt the
# instruct model already answers kindly, such as "I hate you because", cannot get much warmer).
DEMO_PROMPT = "Last week my sister told me that"


@dataclass(frozen=True)
class Setting:
    """Where and how much to steer by default: a measured recipe (``relative`` x the block's
    median token norm) or the Love - Hate contrast vector (``coeff``)."""

    block: int
    recipe: str  # "mean_difference" (a recipe of vectors.py) or "Love - Hate"
    relative: float | None  # measured recipes: the coefficient relative to the residual norm
    coeff: float | None  # the contrast vector: the coefficient itself
    why: str  # one line for the user: where this setting comes from


def default_setting(model_type: str, n_layers: int, sign: int = 1) -> Setting:
    """The measured sentiment setting of this model type (sign +1 warmer, -1 colder) where the
    model has its block; else the original Love - Hate contrast vector at LOVE_HATE's block and
    coefficient (a type without one: coeff 1), moved to the middle block when the model has too
    few blocks for it (a tiny random shape)."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign!r} must be 1 (warmer) or -1 (colder)")
    if model_type in SENTIMENT:
        recipe, block, relative = SENTIMENT[model_type][sign]
        if block < n_layers:
            why = f"the measured {'warmer' if sign > 0 else 'colder'} setting: benchmarks/results/behaviour_heldout.md"
            return Setting(block, recipe, relative, None, why)
    block, coeff = contrast_default(model_type, n_layers, LOVE_HATE)
    why = f"the Love - Hate contrast vector; no setting was measured for a {model_type} model of {n_layers} blocks"
    return Setting(block, "Love - Hate", None, sign * coeff, why)


def contrast_default(model_type: str, n_layers: int, table: dict[str, tuple[int, float]]) -> tuple[int, float]:
    """(block, coeff) of a contrast vector from ``table`` (LOVE_HATE or LOVE_HATE_X_VECTOR): the
    type's own, its block moved to the middle one where the model has too few; a type not in the
    table: the middle block, coeff 1."""
    block, coeff = table.get(model_type, (n_layers // 2, 1.0))
    return (block if block < n_layers else n_layers // 2), coeff


def offline_shape(name: str) -> tuple[str, int] | None:
    """(model_type, n_layers) of an offline model name, known without loading; None for hub ids and folders."""
    if name == SMOLLM2:
        return SMOLLM2_SHAPE[:2]
    if name in RANDOM_CONFIGS:
        return RANDOM_CONFIGS[name][:2]
    return None
