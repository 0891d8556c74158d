"""The loop's check before it spends: every stage config, as the loop will run it, before round 0.

The loop (`llamaduo.sh`) calls this first (and only this with `CHECK_ONLY=1` or `--check`). A
broken data_gen or evaluation config is then found in seconds, not after batch inference and
fine-tuning have run (or after paid judge calls). Checked, for each stage:

1. parsing: the stage's own argument parsing (`parse_args`, what its `--print-config` runs),
   with the per-round overrides the loop passes; the effective config it would print is kept;
2. values: each stage's own checks, on that parse (`run.check_before_run`: its
   value checks such as `lora_r: 0`, batch size 0 or an unknown data_format, then its output
   path: not a file, not under a file, not a dangling link, not an input by its real path);
3. paths that must exist before round 0: input datasets (and their splits and `messages`
   column), the base model when it is a local path, and every `*_path` file key;
4. for a service-LLM stage (evaluation, data_gen): the provider's keys and credentials, by
   the same offline validation the stage runs (`ServiceLLM.from_args`; no key is printed);
5. for a paid provider: that its API answers at all — one plain GET of the base URL, with no
   key and no paid call; any HTTP status counts as reachable;
6. every Hub push target (`push_to_hub` / `push_*_to_hf_hub` on): a valid repo id, the Hub usable
   (not HF_HUB_OFFLINE), and a token that can write to the repo's namespace (`whoami` through
   the llamaduo.hub seam).

Usage (the loop builds the argument list, so the overrides live in one place):
    python -m llamaduo.loop.check [--stage NAME CONFIG [OVERRIDES...]]...
Each stage's `--from-config CONFIG [OVERRIDES...]` is parsed as `llamaduo NAME` parses it, in the
current folder (relative paths are relative to it, as for the loop).
Exit codes: 0 everything checked out; 2 a problem (one `error: check: <stage> ...` line each).

WHY in one process: the check used to start `python -m llamaduo NAME --print-config` per stage, but
it imports every stage module anyway for step 2, so each extra process only paid the imports
again (finetune's TRL parser alone: about 10 s of CPU). Parsing in-process uses the same
functions (`parse_args`, `config_to_dict`, `redact`) and reports the same one-line errors.
"""
from __future__ import annotations

import importlib
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

PROBE_TIMEOUT_S = 10.0
# `*_path` keys that are not input files: created by the stage, or a model (folder or Hub id)
NOT_FILES = ("ledger_path", "model_name_or_path", "tokenizer_name_or_path", "chat_template_path")


@dataclass
class Stage:
    """One stage as the loop will run it."""

    name: str
    config: str
    overrides: list[str]
    printed: dict[str, Any] = field(default_factory=dict)
    #: the stage's own parse of `argv` (its args dataclasses), set by `print_configs`
    parsed: tuple[Any, ...] | None = None

    @property
    def prog(self) -> str:
        return f"llamaduo {self.name}"

    @property
    def argv(self) -> list[str]:
        return ["--from-config", self.config, *self.overrides]


def parse_argv(argv: list[str]) -> list[Stage]:
    """`--stage NAME CONFIG [OVERRIDES...] --stage ...` (overrides run to the next `--stage`, so
    they may themselves start with dashes)."""
    rest, stages = list(argv), []
    if not rest:
        raise SystemExit(_usage("usage: python -m llamaduo.loop.check --stage NAME CONFIG [OVERRIDES...] ..."))
    while rest:
        if rest[0] != "--stage" or len(rest) < 3:
            raise SystemExit(_usage(f"expected --stage NAME CONFIG, got: {' '.join(rest[:3])}"))
        end = rest.index("--stage", 1) if "--stage" in rest[1:] else len(rest)
        stages.append(Stage(rest[1], rest[2], rest[3:end]))
        rest = rest[end:]
    return stages


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------ 1. parsing


def print_configs(stages: list[Stage]) -> list[str]:
    """Parse every stage's config the stage's way; keep the parse and the config its
    `--print-config` would print (`Stage.parsed`, `Stage.printed`); return problems: a config that
    does not parse is named with the stage's own one-line error."""
    from llamaduo.config import config_to_dict
    from llamaduo.errors import LlamaDuoError
    from llamaduo.redact import redact

    problems = []
    for stage in stages:
        try:
            stage.parsed = tuple(importlib.import_module(f"llamaduo.pipeline.{stage.name}").parse_args(stage.argv))
        except Exception as err:  # noqa: BLE001 - a crash while parsing is the config's problem too
            text = redact(" ".join(str(err).split()))
            # an expected error: the line the stage itself prints (errors.run_main); else the
            # last line a traceback would show
            why = f"error: {text}" if isinstance(err, LlamaDuoError) else f"{type(err).__name__}: {text}"
            problems.append(f"{stage.name} ({stage.config}): the config does not parse: {why}")
            continue
        text = redact(yaml.safe_dump(config_to_dict(*stage.parsed), sort_keys=False, allow_unicode=True))
        printed = yaml.safe_load(text)
        stage.printed = printed if isinstance(printed, dict) else {}
    return problems


# ------------------------------------------------------------------------------ 2. values

#: the guarded entry point (outputs.guarded_output) of each stage module
ENTRY = {"finetune": "run", "batch_inference": "run", "evaluation": "run", "data_gen": "run",
         "dataset_merge": "merge"}


def check_values(stage: Stage) -> list[str]:
    """The stage's own checks before it runs, on its config as the loop will pass it (the parse
    `print_configs` kept). The printed config alone does not catch `lora_r: 0` or an output
    folder that is a file."""
    from llamaduo.errors import LlamaDuoError

    if stage.name not in ENTRY or stage.parsed is None:
        return []
    module = importlib.import_module(f"llamaduo.pipeline.{stage.name}")
    try:
        getattr(module, ENTRY[stage.name]).check_before_run(*stage.parsed)
    except LlamaDuoError as err:
        return [f"{stage.name} ({stage.config}): {' '.join(str(err).split())}"]
    return []


# ------------------------------------------------------------------------------ 3. paths


def dataset_inputs(stage: Stage) -> list[tuple[str, str, tuple[str, ...]]]:
    """(dataset, split, required columns) the stage reads that must exist before round 0."""
    c = stage.printed
    found: list[tuple[str, str, tuple[str, ...]]] = []
    if stage.name == "finetune":
        splits = c.get("dataset_splits") or ["train_sft"]
        train = [s for s in ([splits] if isinstance(splits, str) else splits) if "train" in str(s)]
        refs = [c["dataset_id"]] if c.get("dataset_id") else list((c.get("dataset_mixer") or {}).keys())
        found += [(str(r), str(s), ("messages",)) for r in refs for s in train]
    elif stage.name == "batch_inference":
        found.append((c.get("test_ds_id"), c.get("test_ds_split") or "test_sft", ()))
    elif stage.name == "data_gen":
        found.append((c.get("reference_ds_id"), c.get("reference_ds_split") or "train_sft", ("messages",)))
        if c.get("test_ds_id") and c.get("test_ds_split"):
            found.append((c["test_ds_id"], c["test_ds_split"], ()))
        if c.get("existing_ds_id"):
            found.append((c["existing_ds_id"], c.get("existing_ds_split") or "train_sft", ()))
    elif stage.name == "dataset_merge":
        found.append((c.get("first_ds_id"), c.get("first_ds_train_split") or "train_sft", ("messages",)))
        if c.get("first_ds_test_split"):
            found.append((c["first_ds_id"], c["first_ds_test_split"], ()))
    return [(str(r), s, cols) for r, s, cols in found if r]


def check_paths(stage: Stage) -> list[str]:
    """Input datasets load (split, columns), `*_path` files exist, a local model path exists."""
    from llamaduo.data import load_split
    from llamaduo.errors import LlamaDuoError

    problems = []
    for ref, split, columns in dataset_inputs(stage):
        try:
            load_split(ref, split, required_columns=columns, what=f"{stage.name} input dataset")
        except LlamaDuoError as err:
            problems.append(f"{stage.name} ({stage.config}): {err}")
    for key, value in stage.printed.items():
        if key.endswith("_path") and key not in NOT_FILES and isinstance(value, str) and value:
            if not Path(value).expanduser().is_file():
                problems.append(f"{stage.name} ({stage.config}): {key}: file not found: {value}")
    for key in ("model_name_or_path", "ft_model_id"):
        problem = _model_problem(stage.printed.get(key))
        if problem:
            problems.append(f"{stage.name} ({stage.config}): {key}: {problem}")
    problems += [f"{stage.name} ({stage.config}): {p}" for p in model_wheel_problems(stage.printed)]
    return problems


def model_wheel_problems(printed: dict) -> list[str]:
    """The models the config names must be installed: the embedded model (as model, tuned model
    or `local` service LLM) needs its wheel, the reference judge its embedding wheel. WHY: a
    `pip install .` without them passed --check and then failed in the stage."""
    from llamaduo.errors import UsageError
    from llamaduo.models import embedded_model_problem, is_embedded_alias

    problems = []
    names = [printed.get(k) for k in ("model_name_or_path", "ft_model_id")]
    if printed.get("service_llm_provider") == "local":
        names.append(printed.get("service_model_name") or "smollm2-135m-instruct")
    if any(isinstance(n, str) and is_embedded_alias(n) for n in names):
        problem = embedded_model_problem()
        if problem:
            problems.append(problem)
    if printed.get("service_llm_provider") == "reference":
        from llamaduo.judging.reference import embedding_model_dir

        try:
            embedding_model_dir()
        except UsageError as err:
            problems.append(str(err))
    return problems


def _model_problem(ref: Any) -> str | None:
    """A model given as a local path must exist; an alias or Hub id is resolved by the stage."""
    from llamaduo.models import is_embedded_alias

    if not isinstance(ref, str) or not ref or is_embedded_alias(ref):
        return None
    path = Path(ref).expanduser()
    local = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if local and not path.exists():
        return f"model folder not found: {ref}"
    return None


# ------------------------------------------------------------------------------ 4-5. providers


def stage_args(stage: Stage) -> Any:
    """The stage's own args dataclass, as `print_configs` parsed it (secrets included, never printed)."""
    (args,) = stage.parsed
    return args


def provider_url(spec: Any) -> str:
    """The URL requests would go to: the configured base URL, else the provider's default
    (its class's `default_url`; empty: nothing to probe)."""
    from llamaduo.service_llm.providers import get

    if spec.base_url:
        return spec.base_url
    return get(spec.provider).default_url.format(gcp=spec.gcp_location or "us-central1",
                                                 aws=spec.aws_location or "us-east-1")


def probe(url: str) -> str | None:
    """None when the server answers an unauthenticated GET (any status); else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # 401/404/405...: something answered
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_provider(stage: Stage, probed: dict[str, str | None], reach: Callable[[str], str | None] = probe) -> list[str]:
    """Credentials (offline, the stage's own rules) and, for a paid provider, reachability."""
    from llamaduo.errors import LlamaDuoError
    from llamaduo.service_llm import ServiceLLM

    provider = str(stage.printed.get("service_llm_provider") or "")
    if provider in ("reference", "none"):  # offline judges (none: the task metric alone)
        return []
    try:
        llm = ServiceLLM.from_args(stage_args(stage), workers=1, show_progress=False)
    except LlamaDuoError as err:
        return [f"{stage.name} ({stage.config}): {err}"]
    url = provider_url(llm.spec)
    if not url:  # offline (local): nothing to reach, nothing to pay
        return []
    if url not in probed:
        probed[url] = reach(url)
    if probed[url] is None:
        return []
    return [f"{stage.name} ({stage.config}): provider {llm.spec.provider} at {url} is not reachable: {probed[url]}"]


# ------------------------------------------------------------------------------ 5. Hub push targets

# stage -> (the key that turns its push on, the key naming the Hub repo it pushes to)
PUSH_KEYS = {
    "finetune": ("push_to_hub", "hub_model_id"),
    "batch_inference": ("push_lm_responses_to_hf_hub", "lm_response_ds_id"),
    "evaluation": ("push_eval_to_hf_hub", "eval_ds_id"),
    "data_gen": ("push_synth_ds_to_hf_hub", "synth_ds_id"),
    "dataset_merge": ("push_result_ds_to_hf_hub", "result_ds_id"),
}


def check_push_targets(stages: list[Stage]) -> list[str]:
    """Every Hub push target the stages would write to, checked as the stage checks it first
    (llamaduo.hub.check_push_possible: offline, reachable, a token, write access to the repo's
    namespace), so a push that cannot happen fails here and not after round 0's minutes.

    WHY here: a stage checks its own push only when it starts, and finetune starts after round 0
    (batch inference and the judge calls) has run."""
    from llamaduo.errors import LlamaDuoError
    from llamaduo.hub import check_push_possible

    problems = []
    for stage in stages:
        switch, target = PUSH_KEYS.get(stage.name, (None, None))
        if not switch or not stage.printed.get(switch):
            continue
        repo_id = str(stage.printed.get(target) or "")
        where = f"{stage.name} ({stage.config})"
        invalid = _repo_id_problem(repo_id)
        if invalid:
            problems.append(f"{where}: {switch} is on but {target} '{repo_id}' {invalid}; set {switch}: false "
                            f"(the loop writes every round to a local folder; push the final output yourself)")
            continue
        try:
            check_push_possible(True, f"{target} '{repo_id}'", repo_id, switch)
        except LlamaDuoError as err:
            problems.append(f"{where}: {err}")
    return problems


def _repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is no Hub repo id (the loop's per-round folders are paths), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        return "is not set"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return "is not a Hub repo id (the loop passes a local per-round folder there)"
    return None


# ------------------------------------------------------------------------------ main


def run_checks(stages: list[Stage]) -> list[str]:
    problems = print_configs(stages)
    if problems:
        return problems  # later checks read the printed configs
    probed: dict[str, str | None] = {}
    for stage in stages:
        problems += check_values(stage)
        problems += check_paths(stage)
        if stage.name in ("evaluation", "data_gen"):
            problems += check_provider(stage, probed)
    problems += check_push_targets(stages)
    return problems


def main(argv: list[str]) -> int:
    stages = parse_argv(argv)
    from llamaduo.logging_setup import setup_logging

    setup_logging()
    import datasets

    datasets.disable_progress_bars()
    problems = run_checks(stages)
    for problem in problems:
        print(f"error: check: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"check: {len(stages)} stage configs parse; inputs, credentials, providers and Hub push targets OK",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
