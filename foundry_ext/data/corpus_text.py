"""`corpus_text`: LLM Foundry dataloader over a multi-domain MDS root, safe on CPU.

Registered in ``llmfoundry_dataloaders`` (pyproject entry point), so any LLM Foundry yaml
can write::

    train_loader:
      name: corpus_text
      dataset: {root: data/mds, split: train, domains: [code, prose], max_seq_len: 128}
      num_workers: 0

It turns each domain folder into a streaming ``Stream`` and hands the rest to LLM
Foundry's own ``text`` loader, fixing the CPU traps on the way: ``prefetch_factor`` and
``persistent_workers`` only when there are workers, ``pin_memory`` only with CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError
from foundry_ext.validation import ConfigError, collect, section


@dataclass
class CorpusTextConfig:
    """The ``corpus_text`` loader mapping. ``dataset``: ``root`` (the MDS root of
    convert_text_to_mds; with ``remote``, the local cache root), ``remote`` (optional: the MDS root
    to download from, a folder or s3://...), ``split`` (default train), ``domains`` (default: all
    with that split), ``proportions`` ({domain: weight}); every other key (``cache_limit``,
    ``shuffle`` ...) goes to LLM Foundry's ``text`` dataset."""
    dataset: dict[str, Any] = field(default_factory=dict)
    drop_last: bool = True
    num_workers: int = 0
    pin_memory: Optional[bool] = None
    prefetch_factor: Optional[int] = None
    persistent_workers: Optional[bool] = None
    timeout: int = 0
    label: Optional[str] = None

    def __post_init__(self) -> None:
        where = section('train_loader')
        if self.num_workers < 0:
            raise UserError(f'{where}.num_workers must be an integer >= 0, got {self.num_workers!r}')
        if self.dataset.get('root') is None:
            raise UserError(f'{where}.dataset.root is missing: the MDS root written by '
                            'data_prep/convert_text_to_mds.py')

    @property
    def root(self) -> Path:
        return Path(self.dataset['root'])

    @property
    def split(self) -> str:
        return str(self.dataset.get('split', 'train'))

    @property
    def remote(self) -> Optional[str]:
        r = self.dataset.get('remote')
        return str(r) if r else None


def check_data(cfg: CorpusTextConfig) -> None:
    """Every chosen domain's split is a whole MDS dataset (a remote one: reachable, its index
    fetched into the cache); one line naming the domain and the file."""
    from foundry_ext.data.mds_check import check_stream
    from foundry_ext.data.remote import join
    where = section('train_loader')
    root, remote = cfg.root, cfg.remote
    if not remote and not root.is_dir():
        raise UserError(f'{where}.dataset.root: data folder {root} does not exist; build it with '
                        f'`make data` or data_prep/convert_text_to_mds.py --out {root}')
    problems: list[str] = []
    for d in _domains(root, cfg.split, cfg.dataset.get('domains'), remote, where):
        if not remote and not (root / d / cfg.split / 'index.json').is_file():
            problems.append(f'{where}.dataset: {root}/{d}/{cfg.split}/index.json does not exist; '
                            f'is {d!r} a converted domain with a {cfg.split!r} split?')
            continue
        collect(problems, check_stream, str(root / d), join(remote, d) if remote else None, cfg.split,
                f'{where}.dataset domain {d!r}')
    if problems:
        raise ConfigError(problems)


def _domains(root: Path, split: str, domains: Optional[list[str]], remote: Optional[str], where: str) -> list[str]:
    """The chosen domains; by default every one the source (root, or a local-folder remote) has."""
    from foundry_ext.data.remote import local_folder
    if domains:
        return list(domains)
    if remote:
        src = local_folder(remote)
        if src is None:
            raise UserError(f'{where}.dataset.domains is required with a remote that is not a local folder '
                            f'({remote}); list the domains to read, e.g. [code, prose]')
        if not src.is_dir():
            raise UserError(f'{where}.dataset.remote: folder {src} does not exist')
        return sorted(p.name for p in src.iterdir() if (p / split / 'index.json').is_file())
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def corpus_streams(root: str | Path, split: str, domains: Optional[list[str]] = None,
                   proportions: Optional[dict[str, float]] = None,
                   remote: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """``{domain: Stream kwargs}`` for the domains of an MDS root that have ``split`` (with
    ``remote``: each domain downloaded from ``<remote>/<domain>`` into ``<root>/<domain>``)."""
    root = Path(root)
    if remote:
        from foundry_ext.data.remote import join
        out: dict[str, dict[str, Any]] = {}
        for d in _domains(root, split, domains, remote, 'train_loader'):
            out[d] = {'local': str(root / d), 'remote': join(remote, d), 'split': split}
            if proportions and d in proportions:
                out[d]['proportion'] = float(proportions[d])
        return out
    if not root.is_dir():
        raise UserError(f'MDS root {root} does not exist; convert a corpus with '
                        f'`python data_prep/convert_text_to_mds.py --out {root} ...`')
    available = sorted(p.name for p in root.iterdir() if (p / split / 'index.json').is_file())
    if not available:
        raise UserError(f'MDS root {root} has no <domain>/{split}/index.json; '
                        'convert a corpus into it with data_prep/convert_text_to_mds.py')
    chosen = list(domains) if domains else available
    missing = [d for d in chosen if d not in available]
    if missing:
        raise UserError(f'domain(s) {missing} have no {split} split under {root}; available: {available}')
    streams = {}
    for d in chosen:
        s: dict[str, Any] = {'local': str(root / d), 'split': split}
        if proportions and d in proportions:
            s['proportion'] = float(proportions[d])
        streams[d] = s
    return streams


def loader_kwargs(num_workers: int, pin_memory: Optional[bool], prefetch_factor: Optional[int],
                  persistent_workers: Optional[bool]) -> dict[str, Any]:
    """DataLoader worker settings that cannot crash: the torch rules, applied up front."""
    if num_workers < 0:
        raise UserError(f'num_workers must be >= 0, got {num_workers}')
    if pin_memory is None:
        import torch
        pin_memory = torch.cuda.is_available()
    if num_workers == 0:
        return {'num_workers': 0, 'pin_memory': pin_memory, 'prefetch_factor': None,
                'persistent_workers': False}
    return {'num_workers': num_workers, 'pin_memory': pin_memory,
            'prefetch_factor': 2 if prefetch_factor is None else prefetch_factor,
            'persistent_workers': True if persistent_workers is None else persistent_workers}


def build_corpus_dataloader(tokenizer: Any, device_batch_size: Any, **loader: Any) -> Any:
    """LLM Foundry registry entry (``llmfoundry_dataloaders: corpus_text``); options: :class:`CorpusTextConfig`."""
    from llmfoundry.data.text_data import build_text_dataloader

    from foundry_ext.validation import parse
    cfg = parse(CorpusTextConfig, loader, 'train_loader')
    ds = dict(cfg.dataset)
    root, split = ds.pop('root'), ds.pop('split', 'train')
    ds['streams'] = corpus_streams(root, split, ds.pop('domains', None), ds.pop('proportions', None),
                                   remote=ds.pop('remote', None))
    from foundry_ext.data.leftovers import clean_stale_streaming_state
    clean_stale_streaming_state()
    return build_text_dataloader(
        tokenizer=tokenizer, device_batch_size=device_batch_size, dataset=ds, drop_last=cfg.drop_last,
        timeout=cfg.timeout,
        **loader_kwargs(cfg.num_workers, cfg.pin_memory, cfg.prefetch_factor, cfg.persistent_workers))
