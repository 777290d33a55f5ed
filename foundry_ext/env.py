"""The process's environment: offline defaults, rank / world size, joining the process group."""
from __future__ import annotations

import os

from foundry_ext.errors import UserError


def set_offline_defaults() -> None:
    """No hub, no cloud logging unless the user opts in through the environment."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', os.environ['HF_HUB_OFFLINE'])
    os.environ.setdefault('WANDB_MODE', 'offline')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def launcher_defaults() -> None:
    """torchrun describes a process with RANK / LOCAL_RANK / GROUP_RANK; Composer also wants
    NODE_RANK (``composer -n`` sets it), and would stop with MissingEnvironmentError: take torchrun's
    node rank (GROUP_RANK) for it."""
    if 'WORLD_SIZE' in os.environ and 'NODE_RANK' not in os.environ and 'GROUP_RANK' in os.environ:
        os.environ['NODE_RANK'] = os.environ['GROUP_RANK']


def rank() -> int:
    """Global rank from the launcher's environment (0 without one)."""
    return int(os.environ.get('RANK', '0'))


def local_rank() -> int:
    return int(os.environ.get('LOCAL_RANK', '0'))


def world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', '1'))


def rank_device(device: str | None) -> str | None:
    """``cuda`` (or no device on a GPU machine) means this process's GPU in a distributed run."""
    import torch
    if device not in (None, 'cuda') or not torch.cuda.is_available():
        return device
    return f'cuda:{local_rank()}'


def init_distributed() -> bool:
    """Join the process group the launcher describes (WORLD_SIZE > 1); nccl on GPUs, gloo on CPU.
    Returns whether this is a distributed run."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank())
        for k in ('MASTER_ADDR', 'MASTER_PORT', 'RANK'):
            if k not in os.environ:
                raise UserError(f'WORLD_SIZE is set but {k} is not; launch with `composer -n N <script> ...` '
                                'or torchrun')
        dist.init_process_group('nccl' if cuda else 'gloo')
    return True
