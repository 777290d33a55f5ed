"""Checkpoints in, out and across crashes. No re-exports here: import the modules.

In: safe reading of Composer checkpoints, monolithic or sharded (load), HF model folders (hf), the
``load_path`` fit check (fit, callback). Out: MPT -> Llama conversion (convert), ``foundry-ext
export`` (export) and its verification (verify). Across crashes: resume by default (resume),
preemption saves (preempt, callbacks), integrity manifests (integrity), the Trainer our train
command builds (trainer). The one safe ``torch.load`` is :mod:`foundry_ext.safeload`."""
