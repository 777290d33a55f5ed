"""`foundry-ext report` on a continued run: the new domain's gain and each old domain's forgetting."""
import json

import pytest

from foundry_ext.runs.forgetting import forgetting_lines, is_continued, mix_shares
from foundry_ext.runs.report import write_report

HP = {'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': 'base'},
      'variables': {'new_domains': ['records']},
      'train_loader': {'name': 'mixture', 'schedule': {'points': [
          {'at': 0.0, 'weights': {'records': 0.7, 'code': 0.2, 'prose': 0.1}}]}}}
EVALS = {'records': [(0, 5.0), (100, 1.5)], 'code': [(0, 4.0), (100, 4.1)], 'prose': [(0, 4.5), (100, 4.4)],
         'arithmetic': [(0, 2.0), (100, 2.3)]}


def test_continued_runs_are_recognised():
    assert is_continued(HP) and is_continued({'load_path': 'x.pt'}) and is_continued({'model': {'peft_config': {'r': 4}}})
    assert not is_continued({'model': {'name': 'hf_causal_lm', 'pretrained': False}})
    assert not is_continued({'model': {'name': 'mpt_causal_lm'}})
    assert mix_shares(HP) == pytest.approx({'records': 0.7, 'code': 0.2, 'prose': 0.1})
    assert mix_shares({'train_loader': {'dataset': {'domains': ['a', 'b']}}}) == {'a': 0.5, 'b': 0.5}


def test_forgetting_table_and_summary():
    text = '\n'.join(forgetting_lines(EVALS, HP))
    assert '| records | new | 5.000 | 1.500 | -3.500 |' in text
    assert '| code | old, 20% of the mix (replay) | 4.000 | 4.100 | +0.100 |' in text
    assert '| arithmetic | old, not trained | 2.000 | 2.300 | +0.300 |' in text
    assert 'New domain **records**: 5.000 -> 1.500' in text
    assert 'mean +0.100, worst arithmetic +0.300' in text


def test_report_writes_the_section(tmp_path):
    rows = [{'step': s, f'metrics/eval/{d}/LanguageCrossEntropy': v} for d, pts in EVALS.items() for s, v in pts]
    rows.append({'step': 1, 'loss/train/total': 3.0})
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    (tmp_path / 'hparams.json').write_text(json.dumps(HP))
    text = write_report(tmp_path).read_text()
    assert '## Before and after this run' in text and 'worst arithmetic' in text
    text = write_report(tmp_path, new_domains=['arithmetic']).read_text()
    assert '| arithmetic | new |' in text


def test_report_shows_sft_eval_before_and_after(tmp_path):
    rows = [{'step': 1, 'loss/train/total': 3.0}, {'step': 0, 'metrics/eval/LanguageCrossEntropy': 6.9},
            {'step': 60, 'metrics/eval/LanguageCrossEntropy': 0.7}]        # one unlabeled eval_loader
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    res = [{'model': 'runs/demo/hf', 'n': 4, 'exact_match': 0.0, 'format': 0.25, 'strict': 0.0,
            'tasks': {'word_problem': {'n': 4, 'exact_match': 0.0, 'format': 0.25, 'strict': 0.0}}},
           {'model': 'runs/demo-sft/hf', 'n': 4, 'exact_match': 0.5, 'format': 1.0, 'strict': 0.5,
            'tasks': {'word_problem': {'n': 4, 'exact_match': 0.5, 'format': 1.0, 'strict': 0.5}}}]
    (tmp_path / 'sft_eval.json').write_text(json.dumps(res))
    text = write_report(tmp_path).read_text()
    assert '## Held-out instruction following' in text
    assert '| eval | n/a | 6.900 (batch 0) | 0.700 (batch 60) | n/a |' in text
    before, after = text.index('| runs/demo/hf | all | 4 | 0.000 | 0.250 | 0.000 |'), text.index(
        '| runs/demo-sft/hf | all | 4 | 0.500 | 1.000 | 0.500 |')
    assert before < after and '| runs/demo-sft/hf | word_problem | 4 | 0.500 |' in text
    (tmp_path / 'sft_eval.json').write_text('{oops')
    assert 'is not valid JSON' in write_report(tmp_path).read_text()
