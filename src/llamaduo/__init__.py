"""LlamaDuo: migrate a task from a service LLM to a small local LLM."""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)
