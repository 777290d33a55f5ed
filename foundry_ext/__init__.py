"""foundry_ext: pretraining on Composer, mosaicml-streaming and LLM Foundry.

Kept import-light: heavy libraries (torch, composer, llmfoundry) load only where a
command needs them.
"""
__version__ = '0.1.0'
