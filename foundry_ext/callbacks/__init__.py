"""Composer callbacks, registered in LLM Foundry's `llmfoundry_callbacks` (see pyproject.toml)."""
