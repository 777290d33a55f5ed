"""Typed options of our model components (no torch): attention backends, the ``torch_dmoe`` FFN,
the ``moe_monitor`` callback."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from foundry_ext.errors import UserError
from foundry_ext.validation import section

FOUNDRY_MPT = 'foundry_mpt_causal_lm'          # our model (foundry_ext.models.mpt)
ATTN_IMPLS = ('auto', 'flash', 'sdpa', 'torch')
ACTIVATION_NAMES = ('silu', 'gelu', 'gelu_exact', 'relu')


@dataclass
class MoEConfig:
    """``model.ffn_config`` of ``ffn_type: torch_dmoe``; keys named like LLM Foundry's MegaBlocks ffns."""
    ffn_type: str = 'torch_dmoe'
    ffn_hidden_size: Optional[int] = None           # per expert; default expansion_ratio x d_model
    moe_num_experts: int = 8
    moe_top_k: int = 2
    moe_glu: bool = True                            # GLU experts (Llama/Mixtral) or a plain MLP
    ffn_act_fn: Union[dict[str, Any], str, None] = None   # {name: silu|gelu|gelu_exact|relu}
    moe_capacity_factor: Optional[float] = None     # null = dropless
    moe_loss_weight: float = 0.01                   # Switch/GShard load balancing
    moe_z_loss_weight: float = 0.001                # ST-MoE router z-loss
    moe_normalize_expert_weights: bool = True       # renormalise the top-k weights to sum to 1

    def __post_init__(self) -> None:
        where = section('model.ffn_config')
        e, k = self.moe_num_experts, self.moe_top_k
        if e < 1:
            raise UserError(f'{where}.moe_num_experts must be an integer >= 1, got {e!r}')
        if not 1 <= k <= e:
            raise UserError(f'{where}.moe_top_k ({k}) must be between 1 and moe_num_experts ({e})')
        cf = self.moe_capacity_factor
        if cf is not None and not cf > 0:
            raise UserError(f'{where}.moe_capacity_factor must be > 0 or null (dropless), got {cf!r}')
        if self.ffn_hidden_size is not None and self.ffn_hidden_size <= 0:
            raise UserError(f'{where}.ffn_hidden_size must be > 0, got {self.ffn_hidden_size!r}')
        if self.activation not in ACTIVATION_NAMES:
            raise UserError(f'{where}.ffn_act_fn name {self.activation!r} is not one of {", ".join(ACTIVATION_NAMES)}')

    @property
    def activation(self) -> str:
        a = self.ffn_act_fn
        if a is None:
            return 'silu'
        return str(a.get('name', 'silu')) if isinstance(a, dict) else str(a)


@dataclass
class MoEMonitorConfig:
    """``moe_monitor`` callback options."""
    log_interval: int = 1      # batches between moe/* metrics
    per_expert: bool = False   # also log every expert's load

    def __post_init__(self) -> None:
        if self.log_interval < 1:
            raise UserError(f"{section('moe_monitor')}: log_interval must be an integer >= 1, "
                            f'got {self.log_interval!r}')
