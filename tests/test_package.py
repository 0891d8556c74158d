"""The built wheel works from any folder: what `pip install .` gives a user, checked as they use it.

The wheel is built from this checkout (`pip wheel --no-deps`) and installed with `--no-deps` into
a fresh virtual environment. That environment sees the test environment's installed dependencies
through a .pth line naming its site-packages; .pth files inside a folder added that way are not
processed, so the editable llamaduo of the test environment (which may point at another
checkout) stays out: `import llamaduo` must resolve to the wheel's copy. Every command runs
from an empty folder outside the repository, without PYTHONPATH.
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
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

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
