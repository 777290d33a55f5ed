"""Gauntlet: LLM Foundry-compatible ICL evaluation (tasks, prompts, scoring, composite, reports)."""
