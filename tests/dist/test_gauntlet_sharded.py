"""The gauntlet sharded over 2 gloo CPU processes (whole model per rank, and torch-FSDP lockstep)
vs one process, per example."""
import json

import pytest

from conftest import icl_files


@pytest.fixture
def files(tmp_path):
    return icl_files(tmp_path)


@pytest.mark.slow
def test_sharded_over_two_processes_equals_one_process(files, tiny_tokenizer, tmp_path):
    """2 gloo processes: examples split over ranks (whole model on each, and one FSDP-sharded model with
    lockstep forwards) give per-example results identical to one process."""
    import subprocess
    import sys

    from conftest import ROOT
    tasks = [{'label': 'mc', 'dataset_uri': files['mc'], 'icl_task_type': 'multiple_choice', 'num_fewshot': [0, 2]},
             {'label': 'schema', 'dataset_uri': files['schema'], 'icl_task_type': 'schema', 'num_fewshot': [1]},
             {'label': 'lm', 'dataset_uri': files['lm'], 'icl_task_type': 'language_modeling', 'num_fewshot': [0],
              'limit': 12},
             {'label': 'gen', 'dataset_uri': files['gen'], 'icl_task_type': 'generation_task_with_answers',
              'num_fewshot': [1], 'limit': 5}]
    (tmp_path / 'tasks.json').write_text(json.dumps(tasks))
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(ROOT / 'tests' / 'dist' / 'gauntlet_worker.py'), str(tiny_tokenizer),
                        str(tmp_path / 'tasks.json'), str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    load = lambda name: json.loads((tmp_path / f'{name}.json').read_text())  # noqa: E731
    single = load('single-rank0')
    assert single['world'] == 1 and not single['errors']
    assert set(single['correct']) == {'mc/0-shot', 'mc/2-shot', 'schema/1-shot', 'lm/0-shot', 'gen/1-shot'}
    assert len(single['correct']['lm/0-shot']) == 12 and len(single['correct']['gen/1-shot']) == 5
    for what in ('sharded', 'fsdp'):
        for rank in (0, 1):
            got = load(f'{what}-rank{rank}')
            assert got['world'] == 2, what
            assert got['correct'] == single['correct'], (what, rank)


