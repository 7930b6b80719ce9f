"""Per-row steering: SteeringSpec.rows lets one batch carry unsteered rows and different vectors.

Row r of a per-row batch must equal row r run alone with only the specs that steer it: logits on
its real tokens, and greedy tokens with the KV cache, through every backend that takes rows.
Bias editing refuses rows (a bias is shared by every row).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import TRANSFORMERS_4, vec
from model_state import assert_unchanged, snapshot

from steering_backends import SteeringPlan, SteeringSpec
from steering_backends.parity import RELATIVE_ROUNDING, left_pad, tolerance

PROMPTS = ["I hate you because", "The weather today is rather", "Once upon a time"]
N_NEW = 5


def per_row_specs(flags: tuple[bool, ...]) -> list[SteeringSpec]:
    """Two vectors at two sites, each on its own rows, plus one per-position spec on row 2."""
    a, b = [], []
    for row, steered in enumerate(flags):
        a.append(steered and row != 2)
        b.append(steered and row != 1)
    return [
        SteeringSpec(1, "resid_pre", 3 * vec(1), rows=tuple(a)),
        SteeringSpec(2, "mlp_out", 2 * vec(2), coeff=1.5, start=1, rows=tuple(b)),
        SteeringSpec(0, "resid_post", torch.stack([vec(3), vec(4)]), rows=tuple(r == 2 for r in range(len(flags)))),
    ]


def alone(specs: list[SteeringSpec], row: int) -> list[SteeringSpec]:
    """The specs that steer ``row``, for that row run by itself (rows dropped)."""
    return [dataclasses.replace(spec, rows=None) for spec in specs if spec.rows[row]]


def test_rows_are_validated_on_construction():
    v = torch.ones(4)
    assert SteeringSpec(0, "resid_pre", v, rows=[True, False]).rows == (True, False)
    assert SteeringSpec(0, "resid_pre", v, rows=torch.tensor([False, True])).rows == (False, True)
    for bad in ([0, 1], [], "ab", torch.tensor([0, 1]), [True, 1]):
        with pytest.raises(ValueError, match=r"SteeringSpec.rows=.* must be None or a non-empty sequence of bools"):
            SteeringSpec(0, "resid_pre", v, rows=bad)


def test_a_batch_that_does_not_match_the_rows_is_refused_before_any_block_runs(runner, tokenizer):
    if runner.name == "bias_editing":
        pytest.skip("bias editing refuses rows before the forward (tested below)")
    ids, mask = left_pad(tokenizer, PROMPTS)
    spec = SteeringSpec(1, "resid_pre", vec(1), rows=(True, False))  # 2 flags, 3 rows
    before = snapshot(runner.model)
    refused = r"specs\[0\]: SteeringSpec.rows has 2 flags, but the model was called with 3 rows"
    with pytest.raises(ValueError, match=refused):
        with runner.steer(runner.model, [spec]):
            runner.logits(ids, mask)
    assert_unchanged(before, runner.model)


def test_bias_editing_refuses_rows(tokenizer):
    from steering_backends.bias_editing import steer
    from steering_backends.models import random_model

    model = random_model("tiny-gpt2-random")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"specs\[0\].rows=\(True, False\): a bias is shared by every row"):
        with steer(model, [SteeringSpec(1, "resid_pre", vec(1), rows=(True, False))]):
            pass
    assert_unchanged(before, model)


def test_each_row_of_a_per_row_batch_equals_that_row_alone(runner, tokenizer):
    if runner.name == "bias_editing":
        pytest.skip("bias editing refuses rows")
    ids, mask = left_pad(tokenizer, PROMPTS)
    specs = per_row_specs((False, True, True))
    with runner.steer(runner.model, specs):
        batch_logits = runner.logits(ids, mask)
        batch_tokens, batch_steps = runner.generate(ids, mask, N_NEW)
    unsteered = runner.logits(ids, mask)
    for row, prompt in enumerate(PROMPTS):
        row_ids, row_mask = left_pad(tokenizer, [prompt])
        with runner.steer(runner.model, alone(specs, row)):
            row_logits = runner.logits(row_ids, row_mask)
            row_tokens, row_steps = runner.generate(row_ids, row_mask, N_NEW)
        real = mask[row].bool()
        got, want = batch_logits[row, real], row_logits[0]
        assert (got - want).abs().max() <= tolerance(RELATIVE_ROUNDING, want[None])
        if not (runner.name == "nnsight_trace" and TRANSFORMERS_4):  # frozen padded positions there (helpers)
            assert (batch_steps[row] - row_steps[0]).abs().max() <= tolerance(RELATIVE_ROUNDING, row_steps)
            assert batch_tokens[row, -N_NEW:].tolist() == row_tokens[0, -N_NEW:].tolist()
        if row > 0:  # the check can fail: steering moved this row's logits
            assert (got - unsteered[row, real]).abs().max() > 100 * tolerance(RELATIVE_ROUNDING, want[None])
    assert torch.equal(batch_logits[0, mask[0].bool()], unsteered[0, mask[0].bool()])  # row 0: no spec steers it


def test_generate_repeats_each_rows_flags_for_its_beams(tiny, tokenizer):
    """num_beams=2, num_return_sequences=2: the decoder sees rows r0 r0 r1 r1 ...; each copy
    of row r keeps row r's steering, so both beams match row r run alone."""
    from steering_backends.pytorch_hooks import steer

    ids, mask = left_pad(tokenizer, PROMPTS[:2])
    spec = SteeringSpec(1, "resid_pre", 3 * vec(1), rows=(False, True))
    kwargs = dict(max_new_tokens=N_NEW, num_beams=2, num_return_sequences=2, do_sample=False, eos_token_id=None)
    with steer(tiny, [spec]):
        beams = tiny.generate(ids, attention_mask=mask, **kwargs)[:, -N_NEW:]
    for row, specs in ((0, []), (1, [dataclasses.replace(spec, rows=None)])):
        row_ids, row_mask = left_pad(tokenizer, [PROMPTS[row]])
        with steer(tiny, specs):
            want = tiny.generate(row_ids, attention_mask=row_mask, **kwargs)[:, -N_NEW:]
        assert beams[2 * row : 2 * row + 2].tolist() == want.tolist()
    unsteered = tiny.generate(ids, attention_mask=mask, **kwargs)[:, -N_NEW:]
    assert beams[:2].tolist() == unsteered[:2].tolist() and beams[2:].tolist() != unsteered[2:].tolist()


def test_rows_work_on_the_plan_directly():
    """The arithmetic: a row flagged False gets exactly nothing, a True row the whole addition."""
    plan = SteeringPlan([SteeringSpec(0, "resid_pre", torch.ones(3), 2.0, rows=(True, False))], 1, 3)
    plan.record_call((torch.zeros(2, 4, dtype=torch.long),), {})
    out = plan.steer(0, "resid_pre", torch.zeros(2, 4, 3))
    assert out[0].eq(2).all() and out[1].eq(0).all()
    plan.record_call((torch.zeros(4, 1, dtype=torch.long),), {"past_key_values": None})  # 2 rows x 2 copies
    out = plan.steer(0, "resid_pre", torch.zeros(4, 1, 3))
    assert out[:2].eq(2).all() and out[2:].eq(0).all()


def test_compare_samples_both_columns_in_one_batch_as_two_passes_would(monkeypatch, tokenizer):
    """Through a backend that takes rows, compare() samples the unsteered and the steered column
    in one batch; the texts are those of two separate passes (each row has its own generator)."""
    from steering_backends import compare as compare_module
    from steering_backends.models import random_model

    model = random_model("tiny-llama-random")
    specs = [SteeringSpec(1, "resid_pre", 4 * vec(1))]
    one_batch = compare_module.compare(model, tokenizer, PROMPTS[:2], specs, "pytorch_hooks", n=3, max_new_tokens=8)
    with pytest.raises(ValueError, match=r"specs\[0\].rows=\(True,\): compare steers whole columns"):
        compare_module.compare(model, tokenizer, "Hi", [dataclasses.replace(specs[0], rows=(True,))], n=1)
    monkeypatch.setattr(compare_module, "ONE_BATCH", ())
    two_passes = compare_module.compare(model, tokenizer, PROMPTS[:2], specs, "pytorch_hooks", n=3, max_new_tokens=8)
    for column in ("unsteered", "steered"):
        got = [c.ids for c in getattr(one_batch, column)]
        assert got == [c.ids for c in getattr(two_passes, column)]
    assert [c.ids for c in one_batch.unsteered] != [c.ids for c in one_batch.steered]
