"""`python -m llamaduo STAGE [ARGS...]`: run one stage (or the loop) as its console entry point would.

The loop runs every stage this way (`$PYTHON -m llamaduo finetune --from-config ...`), so it
works the same in a clone and when installed, and a launcher such as `accelerate launch -m` or
`torchrun -m` can wrap it.
"""
from __future__ import annotations

import sys

from llamaduo import cli


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(cli.COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: llamaduo {{{names}}} [ARGS...]\n"
              "       llamaduo init DIR    write starter configs into DIR\n"
              "       llamaduo env         print versions and settings for a bug report\n"
              "       llamaduo --version\n\n"
              "Runs one LlamaDuo stage (or the loop) with its own arguments; "
              "`llamaduo STAGE --help` shows them (`python -m llamaduo` is the same command).",
              file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] == "env":
        from llamaduo.version import env_report

        print(env_report())
        sys.exit(0)
    if argv[0] == "init":
        from llamaduo.starter import main as init_main
        from llamaduo.errors import run_main

        sys.argv = ["llamaduo init", *argv[1:]]
        run_main(init_main)
    if argv[0] in ("--version", "-V"):
        from llamaduo.version import version_line

        print(version_line("python -m llamaduo"))
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    entry = cli.COMMANDS.get(name)
    if entry is None:
        print(f"error: unknown stage {name!r}; choose one of: {names}, init, env", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"llamaduo {name}", *rest]  # the stage's --help and errors name the command
    entry()


if __name__ == "__main__":
    main()
