"""Checkpoints that survive crashes: resume by default, preemption saves, integrity, one safe loader.

* :mod:`~foundry_ext.checkpoint.config` -- the options (``checkpoint_integrity``, ``preemption``)
* :mod:`~foundry_ext.checkpoint.integrity` -- manifests (completion marker + sha256 + config),
  verification, atomic sealing, and :func:`~foundry_ext.checkpoint.integrity.load_checkpoint`,
  the one safe loader (``weights_only=True`` with an allow-list)
* :mod:`~foundry_ext.checkpoint.resume` -- which checkpoint a re-run resumes from (newest intact,
  fallback, "already finished"), and the train command's resume defaults
* :mod:`~foundry_ext.checkpoint.preempt` -- the signal flag and exit codes (pure)
* :mod:`~foundry_ext.checkpoint.callbacks` -- the Composer adapters: the two callbacks and the hooks
  that route Composer's checkpoint writes and reads through :mod:`integrity`
* :mod:`~foundry_ext.checkpoint.trainer` -- the Trainer LLM Foundry builds under ``foundry-ext train``
  (replays an evaluation a preemption interrupted; finished runs return at once)
"""
