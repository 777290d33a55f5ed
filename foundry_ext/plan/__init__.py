"""The planner: will a training config fit on a cluster, how long will it run, what will it cost,
and why one config fits where another runs out of memory.

Pure core (no torch): :mod:`inputs` (a validated yaml -> typed :class:`~foundry_ext.plan.inputs.TrainSetup`),
:mod:`activations` (what autograd keeps, per template), :mod:`memory` (itemized per-GPU memory, phases,
verdict, host RAM), :mod:`speed` (FLOPs, tokens/s, days, cost), :mod:`advice` (ranked fixes, microbatch),
:mod:`build` (one plan), :mod:`render` (text, ``--diff``, the training-start line). :mod:`summary` is the
training-start hook; :mod:`measure` (torch) is the live-memory tracker the calibration uses.
"""
