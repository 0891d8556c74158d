"""After the loop: the model (a base plus the round's adapter, or a merged model) behind an
OpenAI-compatible `/v1/models` and `/v1/chat/completions`, so the app switches by changing
`base_url` and `model`.

No server is written here: serve.py builds the command line of a maintained engine and execs
it, so signals (Ctrl-C, SIGTERM) go straight to the engine, which stops cleanly.
* `vllm` (GPU): `vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER`, the adapter
  served under the name batch_inference's `lora_name` gives it.
* `transformers` (`transformers serve`, CPU or GPU): it loads full models only and names a model
  by its path, so an adapter is merged once into a cached folder, and the engine runs in a
  folder where the served name is a link to the weights.
Keys, commands and the openai SDK switch: docs/serve.md.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Sequence

from llamaduo.config import parse_config
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, UsageError
from llamaduo.inference.model_ref import ModelRef, resolve_model_ref
from llamaduo.inference.served_name import served_target
from llamaduo.logging_setup import setup_logging

logger = logging.getLogger("llamaduo.serve")

COMPLETE = ".llamaduo-merged"  # written last into a merged folder: a half-written one is redone
# `transformers serve` as a command: its CLI app, minus the PyPI update check, with SIGINT and
# SIGTERM meaning a clean exit 0. Why: uvicorn shuts down gracefully, then re-raises the signal,
# which click turns into "Aborted!" and exit 1 (SIGINT) or the default handler into a kill (SIGTERM).
TRANSFORMERS_CLI = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "from transformers.cli.transformers import app\n"
    "sys.argv[0] = 'transformers'\n"
    "app()\n"
)


@dataclass
class ServeArgs:
    """Every key of `serve.py`."""

    model_id: str = field(default="smollm2-135m-instruct", metadata={
        "help": "What to serve: a LoRA adapter folder (served with its base), a full or merged model folder, a "
                "Hub id, or the embedded alias smollm2-135m-instruct."})
    base_model_id: Optional[str] = field(default=None, metadata={
        "help": "An adapter's base model (default: the one its adapter_config.json names)."})
    served_model_name: Optional[str] = field(default=None, metadata={
        "help": "The name a full model is served under (default: model_id), and an adapter's base under vLLM; "
                "as batch_inference's served_model_name."})
    lora_name: str = field(default="{name}", metadata={
        "help": "The name an adapter is served under, as batch_inference's lora_name: {name} = the adapter "
                "folder's name, {parent} = its parent's (<OUT>/round_k/model -> round_k)."})
    engine: Literal["auto", "vllm", "transformers"] = field(default="auto", metadata={
        "help": "auto = vllm where it is installed and a GPU is visible, else transformers (transformers serve)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "Weights dtype; auto = bf16 on GPUs and on CPUs with fast bf16, else fp32."})
    device: str = field(default="auto", metadata={"help": "transformers engine: auto, cpu, cuda, cuda:0, ..."})
    max_lora_rank: int = field(default=0, metadata={
        "help": "vllm engine: --max-lora-rank; 0 = the adapter's rank rounded up to what vLLM accepts."})
    merged_dir: Optional[str] = field(default=None, metadata={
        "help": "transformers engine: where an adapter merged into its base is kept (reused while the adapter "
                "is unchanged). Default: $LLAMADUO_CACHE/serve/<adapter hash>."})
    engine_args: Optional[str] = field(default=None, metadata={
        "help": "Extra flags appended to the engine's command line, e.g. \"--gpu-memory-utilization 0.8\"."})
    log_level: str = field(default="info", metadata={"help": "The engine's log level."})
    print_command: bool = field(default=False, metadata={
        "help": "Print the engine command (and the folder it runs in) and exit, instead of starting it."})


# ------------------------------------------------------------------------------ what to serve


def resolve(args: ServeArgs) -> ModelRef:
    """The model or adapter, and an adapter's base, checked without loading weights."""
    ref = resolve_model_ref(args.model_id)
    if args.base_model_id:
        if not ref.is_adapter:
            raise UsageError(f"base_model_id is set but model_id '{args.model_id}' is a full model, not an adapter")
        from llamaduo.inference.model_ref import _locate

        path, is_local = _locate(args.base_model_id, None, what="base_model_id")
        ref = replace(ref, base_path=path, base_is_local=is_local, base_revision=None)
    return ref


def served_name(args: ServeArgs, ref: ModelRef) -> str:
    """The `model` the app asks for: the adapter's lora_name, else served_model_name/model_id."""
    target = served_target(ref.path if ref.is_adapter else args.model_id, args.served_model_name, args.lora_name)
    name = target.request_model
    if ".." in Path(name).parts or name.startswith(("/", "~")) or not name.strip():
        raise UsageError(f"served model name '{name}' must be a plain name (set served_model_name)")
    return name


def pick_engine(engine: str, print_only: bool = False) -> str:
    """The engine to run; an explicit vllm must be installed unless the command is only printed."""
    if engine != "auto":
        if engine == "vllm" and shutil.which("vllm") is None and not print_only:
            raise UsageError("engine vllm: vLLM is not installed here (pip install -r requirements-vllm.txt on a GPU "
                             "machine), or use engine: transformers")
        return engine
    if importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "transformers"


def pick_device(device: str) -> str:
    """auto -> cpu on a machine without an NVIDIA driver, else the engine's own choice.
    WHY not torch.cuda: importing torch here cost seconds of startup, and the engine imports it
    again after the exec."""
    if device != "auto":
        return device
    return "auto" if Path("/proc/driver/nvidia/version").exists() else "cpu"


def pick_dtype(dtype: str, device: str) -> str:
    """auto -> bf16 on CPUs with fast bf16 (measured 1.5x fp32 here), else the engine's choice
    (the weights' dtype on CPU; on GPUs what the weights say)."""
    if dtype != "auto" or device != "cpu":
        return dtype
    from llamaduo.models import cpu_supports_bf16

    return "bfloat16" if cpu_supports_bf16() else "auto"


# ------------------------------------------------------------------------------ vllm


def vllm_rank(rank: Optional[int], wanted: int) -> int:
    """vLLM's --max-lora-rank takes one of these values; the adapter's rank rounded up."""
    if wanted:
        return wanted
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if (rank or 16) <= allowed:
            return allowed
    return 512


def vllm_command(args: ServeArgs, ref: ModelRef, name: str) -> list[str]:
    """`vllm serve ...` for the model, or for the base with the adapter as a LoRA module."""
    cmd = ["vllm", "serve", ref.weights_path, "--host", args.host, "--port", str(args.port)]
    if args.dtype != "auto":
        cmd += ["--dtype", args.dtype]
    if ref.is_adapter:
        base_name = args.served_model_name or Path(args.base_model_id or ref.base_path or "base").name
        cmd += ["--served-model-name", base_name, "--enable-lora", "--lora-modules", f"{name}={ref.path}",
                "--max-lora-rank", str(vllm_rank(ref.adapter_rank, args.max_lora_rank))]
    else:
        cmd += ["--served-model-name", name]
    return cmd + shlex.split(args.engine_args or "")


# ------------------------------------------------------------------------------ transformers serve


def cache_root() -> Path:
    return Path(os.environ.get("LLAMADUO_CACHE") or Path.home() / ".cache" / "llamaduo")


def merged_folder(args: ServeArgs, ref: ModelRef) -> Path:
    """The adapter merged into its base, made once per adapter content + base + dtype."""
    from llamaduo.models import model_sha

    if args.merged_dir:
        target = Path(args.merged_dir)
    else:
        key = f"{model_sha(ref.path)}|{ref.base_path}|{args.dtype}"
        target = cache_root() / "serve" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (target / COMPLETE).is_file():
        logger.info("using the merged model in %s", target)
        return target
    from llamaduo.pipeline.export_model import save_standalone
    from llamaduo.outputs import staged_output

    logger.info("merging adapter %s into %s once (transformers serve loads full models only) -> %s",
                ref.path, ref.base_path, target)
    with staged_output(target) as staging:
        save_standalone(ref, staging, args.dtype)
        (staging / COMPLETE).write_text(ref.path + "\n")
    return target


def weights_folder(args: ServeArgs, ref: ModelRef) -> Path:
    """A local folder of full weights for transformers serve."""
    if ref.is_adapter:
        return merged_folder(args, ref)
    if ref.is_local:
        return Path(ref.path)
    from huggingface_hub import snapshot_download

    from llamaduo.hub import hub_offline

    return Path(snapshot_download(ref.path, revision=ref.revision, local_files_only=hub_offline()))


def name_folder(name: str, weights: Path) -> Path:
    """A folder in which `name` is a link to `weights`: `transformers serve NAME` run there
    serves the weights under NAME (it names a local model by the path it was given). It lives
    in the temp folder: the model cache may be read-only, and a link costs nothing to remake."""
    key = hashlib.sha256(f"{name}|{weights.resolve()}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"llamaduo-serve-{os.getuid()}" / key
    link = folder / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) != weights.resolve():
        link.unlink()
    if not link.is_symlink():
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(weights.resolve(), target_is_directory=True)
        os.replace(tmp, link)
    return folder


def transformers_command(args: ServeArgs, name: str, device: str) -> list[str]:
    cmd = [sys.executable, "-c", TRANSFORMERS_CLI,
           "serve", name, "--host", args.host, "--port", str(args.port), "--device", device,
           "--dtype", pick_dtype(args.dtype, device), "--log-level", args.log_level]
    return cmd + shlex.split(args.engine_args or "")


def check_serving_deps() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"transformers serve needs {' and '.join(missing)}: pip install -r requirements.txt "
                         "(or pip install 'llamaduo[serve]')")


# ------------------------------------------------------------------------------ the run


def validate(args: ServeArgs) -> None:
    if not 0 < args.port < 65536:
        raise UsageError(f"port must be in 1..65535, got {args.port}")
    if not args.host:
        raise UsageError("host must be set")


def run(args: ServeArgs) -> int:
    validate(args)
    ref = resolve(args)
    name = served_name(args, ref)
    engine = pick_engine(args.engine, args.print_command)
    env = dict(os.environ, HF_HUB_DISABLE_UPDATE_CHECK="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    if engine == "vllm":
        cmd, cwd = vllm_command(args, ref, name), None
    else:
        check_serving_deps()
        device = pick_device(args.device)
        if args.print_command and ref.is_adapter:
            cwd = Path("<merged on first start>")
        else:
            cwd = name_folder(name, weights_folder(args, ref))
        cmd = transformers_command(args, name, device)
    base_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/v1"
    if args.print_command:
        print(("cd " + shlex.quote(str(cwd)) + " && " if cwd else "") + shlex.join(cmd))
        print(f"# then: OpenAI(base_url='{base_url}', api_key='EMPTY'), model='{name}'")
        return EXIT_OK
    logger.info("serving '%s' (%s) with %s at %s", name, ref.path, engine, base_url)
    sys.stdout.flush()
    sys.stderr.flush()
    if cwd is not None:
        os.chdir(cwd)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as err:
        raise UsageError(f"cannot start {cmd[0]}: {err}") from None
    return EXIT_OK  # not reached: exec replaced this process


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    (args,) = parse_config(
        ServeArgs, argv=argv, epilog=EXIT_CODES_HELP,
        description="Serve a model (a base + a LoRA adapter, or a merged model) behind an OpenAI-compatible "
        "/v1/models and /v1/chat/completions, with vLLM (GPU) or transformers serve (CPU).",
    )
    return run(args)
