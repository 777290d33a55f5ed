"""metrics.jsonl holds each step once across resumes: the logger cuts on resume, the reader dedupes."""
import json

from foundry_ext.runs.report import read_metrics


def _steps(path):
    return [json.loads(x)['step'] for x in path.read_text().splitlines()]


def test_logger_cuts_what_was_logged_after_the_checkpoint(tmp_path):
    from foundry_ext.runs.metrics import MetricsJsonlLogger
    a = MetricsJsonlLogger(folder=str(tmp_path))
    a.after_load(None, None)
    for s in range(6):
        a.log_metrics({'loss/train/total': float(s)}, step=s)
    saved = a.state_dict()                 # in the checkpoint of step 6
    for s in range(6, 9):                  # logged, then the run is killed
        a.log_metrics({'loss/train/total': float(s)}, step=s)
    a._file.write('{"step": 9, "loss/tr')  # a line cut by the kill
    a._file.flush()
    b = MetricsJsonlLogger(folder=str(tmp_path))
    b.load_state_dict(saved)
    b.after_load(None, None)
    for s in range(6, 10):
        b.log_metrics({'loss/train/total': float(s) + 0.5}, step=s)
    b.close(None, None)
    path = tmp_path / 'metrics.jsonl'
    assert _steps(path) == list(range(10))
    c = MetricsJsonlLogger(folder=str(tmp_path))   # a new run from step 0 in the same folder
    c.after_load(None, None)
    c.log_metrics({'loss/train/total': 1.0}, step=0)
    c.close(None, None)
    assert _steps(path) == [0]
    d = MetricsJsonlLogger(folder=str(tmp_path))   # resumed from a checkpoint that predates the logger state
    d.load_state_dict({})
    d.after_load(None, None)
    d.log_metrics({'x': 1}, step=1)
    d.close(None, None)
    assert _steps(path) == [0, 1]


def test_checkpoint_during_an_evaluation_ends_before_it(tmp_path):
    """A preemption stop saves in the middle of an eval round; the next start replays the whole round,
    so the metrics of the evaluators that finished before the stop must not be kept twice."""
    from foundry_ext.runs.metrics import MetricsJsonlLogger
    a = MetricsJsonlLogger(folder=str(tmp_path))
    a.after_load(None, None)
    a.log_metrics({'loss/train/total': 1.0}, step=4)
    a.eval_before_all(None, None)
    a.log_metrics({'metrics/eval/code/LanguageCrossEntropy': 3.0}, step=4)   # first evaluator done
    saved = a.state_dict()                                                  # stopped during the second
    b = MetricsJsonlLogger(folder=str(tmp_path))
    b.load_state_dict(saved)
    b.after_load(None, None)
    b.eval_before_all(None, None)                                           # the replayed round
    for label in ('code', 'prose'):
        b.log_metrics({f'metrics/eval/{label}/LanguageCrossEntropy': 3.0}, step=4)
    b.eval_after_all(None, None)
    assert b.state_dict()['bytes'] == (tmp_path / 'metrics.jsonl').stat().st_size   # after the round: all
    b.close(None, None)
    rows = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [sorted(r) for r in rows] == [['loss/train/total', 'step'],
                                         ['metrics/eval/code/LanguageCrossEntropy', 'step'],
                                         ['metrics/eval/prose/LanguageCrossEntropy', 'step']]


def test_reader_keeps_one_value_per_step_of_older_files(tmp_path):
    rows = [{'step': s, 'loss/train/total': s} for s in range(8)]           # killed after step 7
    rows += [{'step': 4, 'metrics/eval/code/LanguageCrossEntropy': 3.0}]  # eval at 4 (kept: not re-logged)
    rows += [{'step': s, 'loss/train/total': s + 0.5} for s in range(4, 6)]  # resumed from 4, stopped at 6
    p = tmp_path / 'metrics.jsonl'
    p.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 6, "lo')
    got = read_metrics(p)
    train = [(r['step'], r['loss/train/total']) for r in got if 'loss/train/total' in r]
    assert train == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4.5), (5, 5.5)]
    assert [r['step'] for r in got if 'metrics/eval/code/LanguageCrossEntropy' in r] == [4]
