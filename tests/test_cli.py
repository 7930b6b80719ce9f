"""The command line as a user runs it: a subprocess, its exit status, its stdout and stderr.

Every user error is one line on stderr naming the option and what is allowed, exit status 2;
the main job runs end to end on tiny models in bfloat16 on the CPU. The option errors are
checked through main() in this process (each subprocess spends seconds importing torch), as
are the main job's runs on saved folders and tiny models; one option error, and everything that
depends on the process (environment, import path, --debug's traceback, the main job end to end
in bfloat16), runs as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from steering_backends import BACKENDS
from steering_backends.__main__ import main
from steering_backends.models import RANDOM_CONFIGS, gpt2_tokenizer, random_model

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m steering_backends *args`` from the repository root, with no model hub."""
    full_env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "steering_backends", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """main(args) in this process, as run_cli would report it: the exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["main", *args], code, out, err)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a user error prints; fails unless it is exactly one line, exit status 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m steering_backends")
    return lines[0]


BAD_VALUES = [
    (["--model", "tiny-gpt2-random", "--layer", "99"], ["argument --layer: 99 is out of range", "allowed: -4 to 3"]),
    (["--coeff", "nan"], ["argument --coeff: 'nan' is not allowed", "allowed: a finite number"]),
    (["compare", "--coeff", "inf"], ["compare: error: argument --coeff: 'inf'", "allowed: a finite number"]),
    (["--site", "resid_mid"], ["argument --site", "resid_pre", "attn_out", "mlp_out", "resid_post"]),
    (["--dtype", "float64"], ["argument --dtype", "float32", "bfloat16", "float16"]),
    (["--device", "tpu"], ["argument --device: 'tpu' is not allowed", "allowed: a device this machine has: cpu"]),
    (["--max-new-tokens", "0"], ["argument --max-new-tokens: '0'", "allowed: an integer >= 1"]),
    (["--prompt", ""], ["argument --prompt: '' is not allowed", "allowed: any non-empty text"]),
    (["compare", "--top-p", "2"], ["argument --top-p: '2'", "allowed: a number in (0, 1]"]),
    (["compare", "--model", "tiny-gpt2-random", "--layer", "-5"], ["argument --layer: -5", "allowed: -4 to 3"]),
    (["--backend", "nnsight"], ["argument --backend", "invalid choice: 'nnsight'", *BACKENDS]),
    (["--bogus"], ["unrecognized arguments: --bogus", "--help"]),
]


@pytest.mark.parametrize("args, expected", BAD_VALUES, ids=[" ".join(args) for args, _ in BAD_VALUES])
def test_bad_option_values_are_one_line_naming_the_option_and_what_is_allowed(args, expected, capsys):
    line = error_line(run_main(capsys, *args))
    for text in expected:
        assert text in line


def test_a_bad_option_value_is_one_line_and_exit_status_2_from_the_process():
    args, expected = BAD_VALUES[0]
    line = error_line(run_cli(*args))
    for text in expected:
        assert text in line


OFFLINE_NAMES = ["smollm2-135m", "tiny-gpt2-random", "tiny-llama-random", "gpt2-xl-random"]


def test_a_hub_model_with_no_hub_says_what_to_use_offline(tmp_path):
    line = error_line(run_cli("--model", "gpt2-xl", env={"HF_HOME": str(tmp_path)}))  # an empty hub cache
    assert "argument --model: model 'gpt2-xl' is not in the local cache and the model hub is unreachable" in line
    assert all(name in line for name in OFFLINE_NAMES)


def test_an_unreachable_hub_is_found_out_at_once_without_hf_hub_offline(tmp_path):
    # Nothing listens on port 9: the one quick probe fails, and huggingface_hub's retries never start.
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    result = run_cli("compare", "--model", "Qwen/Qwen2.5-0.5B", env=env)
    line = error_line(result)
    assert "'Qwen/Qwen2.5-0.5B' is not in the local cache and the model hub is unreachable" in line
    assert "http://127.0.0.1:9 did not answer" in line and all(name in line for name in OFFLINE_NAMES)


def test_a_folder_of_an_unsupported_model_type_gets_the_layout_error(tmp_path, capsys):
    config = AutoConfig.for_model(
        "opt", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    line = error_line(run_main(capsys, "--model", str(tmp_path)))
    assert "argument --model: model type 'opt'" in line
    assert (
        "not supported; supported model types: gemma, gemma2, gemma3_text, gpt2, gpt_neox, granite, llama, "
        "mistral, mixtral, olmo2, phi3, qwen2, qwen3, qwen3_moe" in line
    )


def test_a_folder_without_a_model_says_so(tmp_path, capsys):
    line = error_line(run_main(capsys, "--model", str(tmp_path)))
    assert f"argument --model: folder {tmp_path} holds no saved model (no config.json)" in line


@pytest.mark.parametrize("command", [[], ["compare"]])
def test_a_chosen_backend_that_cannot_be_imported_names_the_importable_ones(tmp_path, command):
    # A baukit that fails to import, found before any installed one.
    (tmp_path / "baukit").mkdir()
    (tmp_path / "baukit" / "__init__.py").write_text("raise ImportError('baukit is broken on purpose')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    line = error_line(run_cli(*command, "--backend", "baukit_tracedict", env=env))
    assert "argument --backend: baukit_tracedict cannot be imported here (baukit is broken on purpose)" in line
    assert "importable: custom_wrapper, pytorch_hooks" in line


def test_a_spec_the_validation_refuses_is_one_line_too(monkeypatch, capsys):
    # A NaN vector cannot come from the options, so make one: SteeringSpec must refuse it.
    monkeypatch.setattr(
        "steering_backends.vectors.contrast_vector", lambda *args, **kwargs: torch.full([64], torch.nan)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-gpt2-random", "--layer", "1"])
    assert exit_info.value.code == 2
    refusal = "SteeringSpec.vector[0] is nan; only finite values are allowed (no NaN or inf)"
    assert capsys.readouterr().err.strip().splitlines() == [f"python -m steering_backends: error: {refusal}"]


def test_debug_shows_the_traceback():
    result = run_cli("--model", "tiny-gpt2-random", "--layer", "99", "--debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "UsageError: argument --layer: 99 is out of range" in result.stderr


def backend_rows(stdout: str) -> dict[str, str]:
    """{backend: its completion row} from the main job's output, skipped ones included."""
    rows = {}
    for line in stdout.splitlines():
        name, _, rest = line.strip().partition(": ")
        if name in BACKENDS:
            rows[name] = rest
    return rows


def parity_row(stdout: str, case: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(f"| {case} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_main_job_end_to_end_in_bfloat16_on_cpu():
    args = ["--model", "tiny-gpt2-random", "--device", "cpu", "--dtype", "bfloat16", "--layer", "2"]
    result = run_cli(*args, "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "model tiny-gpt2-random loaded in" in result.stdout and "(bfloat16 on cpu)" in result.stdout
    assert "steered: block 2 resid_pre, coeff 5: act('<|endoftext|>Love')" in result.stdout  # gpt2: the original coeff
    assert result.stdout.count("seed 2: ") == 2 and "mean sentiment (VADER): unsteered" in result.stdout  # 3 samples
    rows = backend_rows(result.stdout)
    assert set(rows) == set(BACKENDS)  # every backend: a completion, or why it was skipped
    for name, row in rows.items():
        assert row.startswith("'Last week my sister") or row.startswith("skipped, cannot import it"), (name, row)
    header = next(line for line in result.stdout.splitlines() if line.startswith("| case |"))
    ran = [name for name, row in rows.items() if not row.startswith("skipped")]
    assert all(f" {name} " in header for name in ran)
    effect, *diffs = parity_row(result.stdout, "steered")
    assert float(effect) > 0.1  # the steering did something, so the zeros below mean agreement
    assert diffs[ran.index("pytorch_hooks")] == "0"


def test_any_saved_folder_runs_and_a_type_without_defaults_takes_the_middle_block(tmp_path, capsys):
    for name in ("tiny-llama-random", "tiny-qwen2-random"):
        random_model(name).save_pretrained(tmp_path / name)
        gpt2_tokenizer().save_pretrained(tmp_path / name)
    common = ["--device", "cpu", "--dtype", "bfloat16", "--max-new-tokens", "2", "--backend", "custom_wrapper"]

    llama = run_main(capsys, "--model", str(tmp_path / "tiny-llama-random"), "--layer", "-1", *common)
    assert llama.returncode == 0, llama.stderr
    assert "block -1 resid_pre, coeff 1:" in llama.stdout  # --layer given: a contrast vector, llama coeff 1
    assert set(backend_rows(llama.stdout)) == {"custom_wrapper", "pytorch_hooks"}  # --backend, plus the reference

    qwen2 = run_main(capsys, "--model", str(tmp_path / "tiny-qwen2-random"), *common)  # no --layer: 4 blocks -> 2
    assert qwen2.returncode == 0, qwen2.stderr
    assert "warmer: Love - Hate, block 2 resid_pre, coeff +1 (" in qwen2.stdout  # no measured setting for qwen2
    assert "colder: Love - Hate, block 2 resid_pre, coeff -1 (" in qwen2.stdout
    assert "(bfloat16 on cpu)" in qwen2.stdout


def test_full_parity_shows_its_progress_on_stderr(capsys):
    args = ["--model", "tiny-mistral-random", "--dtype", "bfloat16", "--max-new-tokens", "2", "--full-parity"]
    result = run_main(capsys, *args, "--backend", "bias_editing")
    assert result.returncode == 0, result.stderr
    assert "14 parity cases: bias_editing" in result.stderr and "14 parity cases: pytorch_hooks" in result.stderr
    assert set(backend_rows(result.stdout)) == {"pytorch_hooks", "bias_editing"}
    assert parity_row(result.stdout, "attn_out mid")[1] == "0"  # the reference against itself


def test_help_lists_both_commands_with_examples_and_the_defaults_per_model_type():
    for command, other in (([], "compare"), (["compare"], "--colder")):
        result = run_cli(*command, "--help")
        assert result.returncode == 0, result.stderr
        examples = result.stdout.split("examples:\n", 1)[1]
        assert len([line for line in examples.splitlines() if line.strip().startswith("python -m")]) >= 3
        assert other in result.stdout
        # the defaults that apply, per model type: the measured setting, the contrast vector's
        text = " ".join(result.stdout.split())  # argparse wraps the help text
        assert "llama: warmer block 21 (+0.25 x norm), colder block 24 (-0.35 x norm)" in text
        assert "gpt2 block 6 coeff 5" in text


def test_parsing_and_help_import_neither_torch_nor_transformers():
    # What makes --help answer at once: nothing heavy is imported before the options are parsed.
    code = (
        "import sys\nfrom steering_backends.__main__ import main, parse_compare_args\n"
        "parse_compare_args(['--model', 'tiny-gpt2-random'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_layer_out_of_range_is_refused_before_any_weights_load(monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before --layer was checked")

    monkeypatch.setattr("steering_backends.models.load", no_load)
    for argv in (
        ["--model", "gpt2-xl-random", "--layer", "48"],
        ["compare", "--model", "smollm2-135m", "--layer", "-31"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "is out of range for" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(RANDOM_CONFIGS) + ["smollm2-135m"])
def test_every_offline_model_has_defaults_inside_its_range(name):
    from steering_backends.__main__ import _steerings, parse_args, parse_compare_args
    from steering_backends.settings import offline_shape

    _, n_layers = offline_shape(name)
    for steering in _steerings(parse_args(["--model", name]), (1, -1), x_vector=False):
        assert 0 <= steering.layer < n_layers
    (steering,) = _steerings(parse_compare_args(["--model", name, "--plus", "Love"]), (1,), x_vector=True)
    assert 0 <= steering.layer < n_layers


def test_compare_defaults_to_the_measured_setting_and_the_contrast_vector_is_one_option_away():
    from steering_backends.__main__ import _steerings, parse_compare_args

    (warmer,) = _steerings(parse_compare_args([]), (1,), x_vector=True)
    assert (warmer.label, warmer.sign, warmer.layer) == ("warmer", 1, 21)  # settings.SENTIMENT, SmolLM2's
    (colder,) = _steerings(parse_compare_args(["--colder"]), (-1,), x_vector=True)
    assert (colder.label, colder.sign, colder.layer) == ("colder", -1, 24)
    (contrast,) = _steerings(parse_compare_args(["--plus", "Love"]), (1,), x_vector=True)
    assert (contrast.sign, contrast.plus, contrast.minus, contrast.layer, contrast.coeff) == (0, "Love", "Hate", 9, 5.0)


def test_a_tiny_model_runs_with_no_options(capsys):
    result = run_main(capsys, "--model", "tiny-llama-random")
    assert result.returncode == 0, result.stderr
    assert "warmer: Love - Hate, block 2 resid_pre, coeff +1" in result.stdout  # 4 blocks: the middle one
    assert result.stdout.count("mean sentiment (VADER)") == 2  # warmer and colder, sampled


def test_the_first_run_shows_steering_both_ways_on_smollm2(capsys):
    # The main job as a newcomer runs it (only the reference backend, to keep the test short). On the
    # demo prompt, 3 seeds, this measured Δ +0.79 warmer and -1.06 colder, every row moved; the bar is
    # the |Δ| >= 0.4 a reader must see in each direction.
    main(["--backend", "pytorch_hooks", "--max-new-tokens", "2"])
    means = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mean sentiment (VADER)")]
    deltas = [float(line.split("(Δ ")[1].split(")")[0]) for line in means]
    assert len(deltas) == 2 and deltas[0] >= 0.4 and deltas[1] <= -0.4, means
