"""Files the package ships as defaults (judge and generation prompts, prices, generation settings).

They live inside the package so an installed `llamaduo-eval` finds them from any folder; a user
changes them by copying one and pointing the matching key (`prompt_tmpl_path`, `pricing_path`,
`service_llm_gen_config_path`) at the copy.
"""
from importlib.resources import files


def default_file(name: str) -> str:
    """The path of a shipped default file (a real file: the wheel installs unzipped)."""
    return str(files(__name__) / name)
