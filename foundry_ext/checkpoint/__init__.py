"""Checkpoints that survive crashes: resume by default (resume), preemption saves (preempt,
callbacks), integrity manifests (integrity), the Trainer our train command builds (trainer).
The one safe loader is :mod:`foundry_ext.safeload`. No re-exports here: import the modules."""
