"""LlamaDuo: migrate a task from a service LLM to a small local LLM."""
