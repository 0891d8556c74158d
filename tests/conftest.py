"""Shared test setup. The environment is set before anything imports `datasets` or
`huggingface_hub`, because both read HF_HUB_OFFLINE at import time (REFERENCE.md): without it a
Hub id stalls for 20-45 s before failing.

Test tiers (`make test-fast` runs `-m "not slow"`; `make test` runs everything with pytest-xdist):
every test is classified at collection, so a new test needs no marker of its own. A test is
`model` (and `slow`) when it uses a model fixture (`MODEL_FIXTURES`, directly or through another
fixture) or its code loads one (`MODEL_CALLS`), `process` (and `slow`) when its code starts a
process (`PROCESS_CALLS`); "its code" is the test, its class, its fixtures and the helpers they
call, read from the test module's AST (`names_that`). `slow` by hand: a test that is neither but
still takes seconds (a stage run in-process that loads the embedding judge, say)."""
from __future__ import annotations

import ast
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# pytest-xdist runs one worker per core, and each may start stage processes: idle OpenMP threads
# sleep instead of spinning on the cores the other worker needs (llamaduo.cli.batch_inference).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ... and each worker, with the stage processes it starts, gets its share of the cores as OpenMP
# threads (one each with `-n auto`): two workers of two threads each on two cores made four
# threads that kept waking each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Child processes (the stage scripts) import this checkout's package, not whatever `llamaduo` the
# environment has installed (an editable install may point at another checkout).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / "src"), str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, provisioned from the wheel (converted once, cached)."""
    from llamaduo.models import provision_embedded_model

    return provision_embedded_model()


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every pytest-xdist worker of this run sees (the workers' common base temp), so an
    expensive artefact is built once per run, not once per worker. Build inside `FileLock`."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-of-user/pytest-N/popen-gwK -> .../pytest-N, shared by the workers
    return root / name


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer and ChatML template: every code path
    of a real chat model (templates, eos, padding, LoRA targets), loading in well under 1 s.
    Built once per test run and shared by the xdist workers (tests only read it)."""
    out = _shared_dir(tmp_path_factory, "tiny-model")
    with FileLock(str(out) + ".lock"):
        if not (out / ".complete").is_file():
            _build_tiny_model(out, embedded_model_dir)
            (out / ".complete").touch()
    return out


def _build_tiny_model(out: Path, embedded_model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


# ============================================================================ test tiers
#: fixtures that load or build a model: a test using one (directly or through another fixture) is `model`
MODEL_FIXTURES = frozenset({"embedded_model_dir", "tiny_model_dir"})
#: calls that load a model (a function or method of that name): `model` too
MODEL_CALLS = frozenset({"from_pretrained", "SentenceTransformer", "ReferenceJudge", "provision_embedded_model",
                         "load_model", "HFGenerator"})
#: calls that start a process, by module (`subprocess.run`, `os.system`, `multiprocessing.Process`...)
PROCESS_CALLS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {"system", "popen", "fork", "execv", "execvp", "execvpe", "spawnv", "spawnvp", "posix_spawn"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "multiprocessing": {"Process", "Pool", "get_context"},
}


def _is_process_call(call: ast.Call) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.attr in PROCESS_CALLS.get(f.value.id, ())


def _is_model_call(call: ast.Call) -> bool:
    f = call.func
    return (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)) in MODEL_CALLS


_KINDS = {"process": _is_process_call, "model": _is_model_call}


@functools.lru_cache(maxsize=None)
def names_that(kind: str, path: str) -> frozenset[str]:
    """Top-level functions, fixtures and classes of the module at `path` whose code makes a `kind`
    call (`_KINDS`): directly, through another such function of the module, or through one imported
    from a `tests.` module. Read from the AST, so code inside strings (a sandbox test's
    `"subprocess.run(...)"`) does not count."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:  # imported helpers: `from tests.servers.process import server_process`
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.") and not node.level:
            source = REPO_ROOT / (node.module.replace(".", os.sep) + ".py")
            if source.is_file():
                theirs = names_that(kind, str(source))
                found |= {a.asname or a.name for a in node.names if a.name in theirs}
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    found |= {name for name, node in defs.items()
              if any(isinstance(c, ast.Call) and _KINDS[kind](c) for c in ast.walk(node))}
    changed = True
    while changed:  # helpers calling helpers
        changed = False
        for name, node in defs.items():
            if name not in found and {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & found:
                found.add(name)
                changed = True
    return frozenset(found)


def _makes(kind: str, item: pytest.Item) -> bool:
    """Whether the test, a fixture it uses or its class makes a `kind` call."""
    found = names_that(kind, str(item.path)) | names_that(kind, __file__)
    names = set(getattr(item, "fixturenames", ()))
    names.add(getattr(getattr(item, "function", None), "__name__", ""))
    names.add(getattr(getattr(item, "cls", None), "__name__", ""))
    return bool(names & found)


# The modules whose tests run longest (`--durations`), scheduled first so that pytest-xdist
# starts them at once and fills the end of the run with short tests (a loop test of ~3 minutes
# that starts last makes the whole run ~3 minutes longer). Only the order changes: a stale
# list costs time, never a result.
LONGEST_FIRST = ("test_loop.py", "test_openai_backend.py", "test_batch_inference_processes.py",
                 "test_finetune_processes.py", "test_serve.py", "test_docs_commands.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Classify every test into the tiers (see this module's docstring); the longest-running
    modules go first (LONGEST_FIRST; a stable sort keeps every module's own order)."""
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or _makes("model", item):
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)
        if _makes("process", item):
            item.add_marker(pytest.mark.process)
            item.add_marker(pytest.mark.slow)


@pytest.fixture()
def fake_hub():
    """The fake Hugging Face Hub installed at the single seam `llamaduo.hub.set_api` for one test
    (tests/fake_hub.py), removed afterwards."""
    from llamaduo import hub
    from tests.fake_hub import FakeHubApi

    api = FakeHubApi()
    hub.set_api(api)
    yield api
    hub.set_api(None)
