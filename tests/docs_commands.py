"""The shell commands shown in README.md and docs/*.md, extracted for tests/test_docs_commands.py.

Fenced blocks tagged console, bash, sh or shell are read:
- a block whose lines start with `$ ` is a transcript: each `$ ` line (plus its `\\` continuation
  lines) is a command, every other line is output or a comment;
- a block starting with `#!` is a script file: it is kept whole (kind "script");
- any other block is a list of commands: lines are joined until bash parses them as complete
  (`bash -n`), so a `case ... esac` or an `if ... fi` over several lines is one command.

WHY the key: a command's text with its trailing comment dropped and whitespace collapsed, so
the test's table of how to run each command survives re-wrapping and re-commenting of docs.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(console|bash|sh|shell)[ \t]*\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class DocCommand:
    file: str      # relative to the repository root
    line: int      # 1-based line of the command's first line in the file
    text: str      # continuation lines joined, comment kept
    kind: str = "command"  # or "script"

    @property
    def key(self) -> str:
        return command_key(self.text) if self.kind == "command" else self.text.strip()


def command_key(text: str) -> str:
    """The command without its comments, whitespace collapsed (quotes kept as written)."""
    return " ".join(strip_comments(text).split())


def strip_comments(text: str) -> str:
    """Drop shell comments: a `#` that starts a word outside quotes, up to the end of its line.
    (shlex's comment handling would also split `a; b` into tokens and lose the shell syntax.)"""
    out, quote, prev = [], "", " "
    lines = iter(text)
    for ch in lines:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev in " \t\n;":
            for ch in lines:  # skip to the end of the line, keep the newline
                if ch == "\n":
                    break
            else:
                break
        out.append(ch)
        prev = ch
    return "".join(out).strip()


def doc_files(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


def extract(repo: Path) -> list[DocCommand]:
    found = []
    for path in doc_files(repo):
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            first_line = text.count("\n", 0, m.start(2)) + 1
            found += _block(str(path.relative_to(repo)), first_line, m.group(2))
    return found


def _block(file: str, first_line: int, body: str) -> list[DocCommand]:
    lines = body.splitlines()
    if lines and lines[0].startswith("#!"):
        return [DocCommand(file, first_line, body, "script")]
    if any(line.startswith("$ ") for line in lines):
        return _transcript(file, first_line, lines)
    return _command_list(file, first_line, lines)


def _transcript(file: str, first_line: int, lines: list[str]) -> list[DocCommand]:
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            start, parts = i, [lines[i][2:]]
            while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i])
            out.append(DocCommand(file, first_line + start, _join(parts)))
        i += 1
    return out


def _command_list(file: str, first_line: int, lines: list[str]) -> list[DocCommand]:
    out, parts, start = [], [], 0
    for i, line in enumerate(lines):
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not parts:
            start = i
        parts.append(line)
        if not line.rstrip().endswith("\\") and _complete("\n".join(parts)):
            out.append(DocCommand(file, first_line + start, _join(parts)))
            parts = []
    if parts:
        out.append(DocCommand(file, first_line + start, _join(parts)))
    return out


def _join(parts: list[str]) -> str:
    """Continuation lines joined into one line; multi-line constructs keep their newlines."""
    text = "\n".join(parts)
    return re.sub(r"\\\n\s*", "", text).strip()


def _complete(text: str) -> bool:
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
