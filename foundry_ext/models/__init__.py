"""Model components: attention backends and the dropless MoE FFN (pure torch), plus the thin
LLM Foundry adapter (``foundry_ext.models.mpt``) that registers them."""
