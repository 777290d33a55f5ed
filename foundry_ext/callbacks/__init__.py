"""Composer callbacks (thin adapters over pure cores), registered in ``llmfoundry_callbacks``:
``mfu_monitor`` (foundry_ext.flops + foundry_ext.hardware), ``loss_spike_guard`` (foundry_ext.spike),
``inject_spike`` (deliberate spikes for tests and experiments), ``mix_logger`` (foundry_ext.data.mixing).
"""
