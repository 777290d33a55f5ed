"""Checkpoints in and out: safe reading of Composer checkpoints (load), HF model folders (hf),
MPT -> Llama conversion (convert), `foundry-ext export` (export) and its verification (verify),
and the ``load_path`` fit check (fit)."""
