"""Training configs: load (yaml + dotlist) | schema (generated from LLM Foundry) | validate | fallbacks.

All of it runs before torch or LLM Foundry are imported.
"""
from foundry_ext.config.fallbacks import apply_fallbacks, has_flash_attn
from foundry_ext.config.load import load
from foundry_ext.config.validate import problems_of, validate

__all__ = ['load', 'validate', 'problems_of', 'apply_fallbacks', 'has_flash_attn']
