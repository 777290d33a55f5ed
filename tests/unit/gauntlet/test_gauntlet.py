"""Gauntlet: prompts and scores identical to LLM Foundry's ICL evaluator, composite, intervals,
cache, bad inputs, starter task generation (tiny random GPT-2 / MPT built in the test)."""
import json
import random

import numpy as np
import pytest
import torch

from foundry_ext.errors import UserError
from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.config import RunOptions
from foundry_ext.gauntlet.generate import greedy_generate
from foundry_ext.gauntlet.models import wrap
from foundry_ext.gauntlet.prompts import build_items, fewshot_sample_idxs
from foundry_ext.gauntlet.runner import compare, parse_tasks, run_gauntlet
from foundry_ext.gauntlet.scoring import generation_correct, normalize_answer, score_items, score_sequences
from foundry_ext.gauntlet.tasks import load_examples, task_from_cfg

from conftest import WORDS, icl_files  # noqa: E402
from conftest import write_jsonl as _write  # noqa: E402


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    return icl_files(tmp_path_factory.mktemp('icl'))


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


@pytest.fixture(scope='module')
def gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    return wrap(GPT2LMHeadModel(cfg), tok, 'tiny-gpt2', 128, device='cpu')


@pytest.fixture(scope='module')
def mpt(tok):
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    torch.manual_seed(1)
    cfg = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, vocab_size=len(tok), init_device='cpu',
                    attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'alibi': False})
    return wrap(MPTForCausalLM(cfg), tok, 'tiny-mpt', 128, device='cpu')


NO_BOOT = RunOptions(bootstrap_samples=0)
CASES = [('mc', 'multiple_choice', 0, ' '), ('mc', 'multiple_choice', 3, '\nAnswer: '),
         ('schema', 'schema', 2, ' '), ('lm', 'language_modeling', 0, ' '), ('lm', 'language_modeling', 5, ' ')]


def _foundry_dataset(path, ty, shot, cd, tok, tmp_path, seq=128):
    from llmfoundry.eval.datasets.in_context_learning_evaluation import (
        InContextLearningLMTaskDataset,
        InContextLearningMultipleChoiceTaskDataset,
        InContextLearningSchemaTaskDataset,
    )
    cls = {'multiple_choice': InContextLearningMultipleChoiceTaskDataset, 'schema': InContextLearningSchemaTaskDataset,
           'language_modeling': InContextLearningLMTaskDataset}[ty]
    return cls(dataset_uri=path, tokenizer=tok, max_seq_len=seq, pad_tok_id=tok.pad_token_id, num_fewshot=shot,
               destination_path=str(tmp_path / f'{ty}-{shot}.jsonl'), continuation_delimiter=cd,
               prompt_string='Answer these.' if shot == 3 else '', fewshot_random_seed=7)


@pytest.mark.parametrize('name,ty,shot,cd', CASES)
def test_prompts_token_identical_to_llmfoundry(files, tok, tmp_path, name, ty, shot, cd):
    t = task_from_cfg({'label': name, 'dataset_uri': files[name], 'icl_task_type': ty, 'num_fewshot': [shot],
                       'continuation_delimiter': cd, 'prompt_string': 'Answer these.' if shot == 3 else '',
                       'fewshot_random_seed': 7})
    items = build_items(t, load_examples(t), tok, shot, 128)
    ds = _foundry_dataset(files[name], ty, shot, cd, tok, tmp_path)
    assert len(ds) == len(items)
    for i, it in enumerate(items):
        d = ds[i]
        if ty == 'language_modeling':
            ids, ci = d['context'], d['continuation_indices']
            assert it.contexts[0] + it.continuations[0] == ids[:ci[-1] + 1] and ci[0] == len(it.contexts[0])
        else:
            key = 'query' if ty == 'multiple_choice' else 'context_options'
            assert d['gold'] == it.gold
            for j, (c, x) in enumerate(zip(it.contexts, it.continuations)):
                ids, ci = d[key][j], d['continuation_indices'][j]
                assert c + x == ids[:ci[-1] + 1] and ci[0] == len(c)


@pytest.mark.parametrize('name,ty,shot,cd', CASES[:4])
def test_scores_equal_llmfoundry_metrics(files, tok, gpt2, tmp_path, name, ty, shot, cd):
    from llmfoundry.eval.metrics import InContextLearningLMAccuracy, InContextLearningMultipleChoiceAccuracy
    ds = _foundry_dataset(files[name], ty, shot, cd, tok, tmp_path)
    metric = InContextLearningLMAccuracy() if ty == 'language_modeling' else InContextLearningMultipleChoiceAccuracy()
    per = 8 if ty == 'language_modeling' else 3
    with torch.no_grad():
        for s in range(0, len(ds), per):
            batch = ds.collate_fn([ds[i] for i in range(s, min(s + per, len(ds)))])
            logits = gpt2.model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits
            labels = batch['input_ids'].clone()
            labels[:, :-1] = labels[:, 1:].clone()
            metric.update(batch, logits, labels)
    t = task_from_cfg({'label': name, 'dataset_uri': files[name], 'icl_task_type': ty, 'num_fewshot': [shot],
                       'continuation_delimiter': cd, 'prompt_string': 'Answer these.' if shot == 3 else '',
                       'fewshot_random_seed': 7})
    items = build_items(t, load_examples(t), tok, shot, 128)
    ours = score_items(gpt2.forward, items, ty, gpt2.pad_id, max_rows=7)
    assert sum(r['correct'] for r in ours) == int(metric.correct)


def test_length_sorted_batches_match_one_by_one(gpt2, tok):
    rng = random.Random(3)
    seqs = [([rng.randrange(5, 500) for _ in range(rng.randrange(2, 40))],
             [rng.randrange(5, 500) for _ in range(rng.randrange(1, 6))]) for _ in range(17)]
    ce, ex = score_sequences(gpt2.forward, seqs, gpt2.pad_id, max_rows=5, max_tokens=120)
    for (c, x), v in zip(seqs, ce):
        ids = torch.tensor([c + x])
        logits = gpt2.model(ids).logits[0, len(c) - 1:-1]
        assert abs(float(torch.nn.functional.cross_entropy(logits, torch.tensor(x))) - v) < 1e-5


@pytest.mark.parametrize('which', ['gpt2', 'mpt'])
def test_shared_context_kv_cache_equals_plain(files, tok, which, request):
    lm = request.getfixturevalue(which)
    t = task_from_cfg({'label': 'mc', 'dataset_uri': files['mc'], 'icl_task_type': 'multiple_choice',
                       'num_fewshot': [0]})
    items = build_items(t, load_examples(t), tok, 0, 128)
    from foundry_ext.gauntlet.scoring import score_shared_context
    kv = score_shared_context(lm.forward_cached, items, lm.pad_id, max_rows=8)
    plain = score_items(lm.forward, items, 'multiple_choice', lm.pad_id)
    for a, b in zip(kv, plain):
        assert np.allclose(a, b['ce'], atol=1e-4)


def test_fewshot_sampler_excludes_self_and_is_seeded():
    rng = random.Random(1234)
    for i in range(50):
        s = fewshot_sample_idxs(10, 4, i % 10, rng)
        assert len(s) == 4 and (i % 10) not in s
    assert fewshot_sample_idxs(3, 5, 0, random.Random(0)) == {1, 2}


def test_generation_normalization_and_greedy(gpt2, tok):
    assert normalize_answer('The  Cat_sat!') == 'cat sat'
    assert generation_correct(' the cat\nnext', ['Cat'], stops=['\n'])
    assert not generation_correct('dog', ['cat'])
    out = greedy_generate(gpt2.step, [[5, 6, 7], [8, 9, 10], [11, 12]], 4, None, gpt2.pad_id)
    assert [len(o) for o in out] == [4, 4, 4]


def test_generation_task_runs(files, gpt2):
    tasks, errs = parse_tasks([{'label': 'gen', 'dataset_uri': files['gen'],
                                'icl_task_type': 'generation_task_with_answers', 'num_fewshot': [1]}])
    r = run_gauntlet(gpt2, tasks, None, NO_BOOT, log=lambda s: None)
    assert not errs and r.benchmarks['gen/1-shot'].n == 10


# --- generation_task_with_answers vs LLM Foundry's evaluator -----------------------------------

def _foundry_gen_dataset(path, tok, tmp_path, seq=128, **kw):
    from llmfoundry.eval.datasets.in_context_learning_evaluation import (
        InContextLearningGenerationTaskWithAnswersDataset as GenDataset,
    )
    ds = GenDataset(
        dataset_uri=path, tokenizer=tok, max_seq_len=seq, pad_tok_id=tok.pad_token_id,
        destination_path=str(tmp_path / f'gen-{len(list(tmp_path.iterdir()))}.jsonl'), **kw)
    return ds


GEN_PROMPT_CASES = {  # rows, task settings: what each case exercises
    'plain': (lambda s, i: {'context': s(4), 'answer': s(1 + i % 3), 'aliases': [s(1)]}, {}),
    # answers padded with whitespace: LLM Foundry sizes max_new_tokens before it strips them
    'unstripped': (lambda s, i: {'context': s(4) + '  ', 'answer': ' ' + s(1 + i % 2) + ' \n\n \n'},
                   {'continuation_delimiter': '\nA:', 'prompt_string': 'Answer.', 'question_prelimiter': 'Q: '}),
    'cot': (lambda s, i: {'context': s(3), 'answer': s(1), 'chain_of_thought': ' ' + s(2 + i % 4) + ' '},
            {'cot_delimiter': ' #### ', 'example_delimiter': '\n\n'}),
    'max_new_tokens': (lambda s, i: {'context': s(3), 'answer': s(1)}, {'generation_kwargs': {'max_new_tokens': 9}}),
}


@pytest.mark.parametrize('case', list(GEN_PROMPT_CASES))
def test_generation_prompts_and_lengths_identical_to_llmfoundry(tok, tmp_path, case):
    make, extra = GEN_PROMPT_CASES[case]
    rng = random.Random(5)
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    path = _write(tmp_path / f'{case}.jsonl', [make(s, i) for i in range(12)])
    cfg = {'label': case, 'dataset_uri': path, 'icl_task_type': 'generation_task_with_answers', 'num_fewshot': [2],
           'fewshot_random_seed': 3, **extra}
    t = task_from_cfg(cfg)
    seq = 48  # short enough that some few-shot prompts are left-trimmed
    items = build_items(t, load_examples(t), tok, 2, seq)
    kw = {k: v for k, v in extra.items() if k != 'question_prelimiter'}
    if 'question_prelimiter' in extra:
        kw['prelimiter'] = extra['question_prelimiter']
    ds = _foundry_gen_dataset(path, tok, tmp_path, seq=seq, num_fewshot=2, fewshot_random_seed=3, **kw)
    assert len(ds) == len(items)
    assert items[0].max_new_tokens == ds.base_batch['generation_kwargs']['max_new_tokens']
    for i, it in enumerate(items):
        padded = ds[i]['context']
        assert len(padded) == ds.padding_size  # left-padded to max_seq_len - longest answer
        n_pad = len(padded) - len(it.contexts[0])
        assert padded[:n_pad] == [tok.pad_token_id] * n_pad and padded[n_pad:] == it.contexts[0]
        assert set(it.aliases) == {a.strip() for a in ds[i]['aliases']}


def _foundry_generation_eval(model, tok, cfg, tmp_path, seq=128, batch=16):
    """LLM Foundry's evaluator as its eval script runs it: build_icl_evaluators + Composer Trainer.eval on
    the HF model wrapped by Composer (eval_forward -> HF generate with left padding). Returns the
    accuracy and, per example, the generated text and the metric's 0/1."""
    import copy

    from composer import Callback, Trainer
    from composer.models import HuggingFaceModel
    from llmfoundry.eval.metrics import InContextLearningGenerationExactMatchAccuracy
    from llmfoundry.utils.builders import build_icl_evaluators
    seen = {'out': [], 'ok': []}

    class Grab(Callback):  # each generated text, and the metric's verdict on it alone
        def eval_after_forward(self, state, logger):
            seen['out'] += list(state.outputs)
            for out, labels in zip(state.outputs, state.model.labels):
                m = InContextLearningGenerationExactMatchAccuracy()
                m.update(state.batch, [out], [labels])
                seen['ok'].append(int(m.compute()))

    tmp_path.mkdir(exist_ok=True)
    evaluators, _ = build_icl_evaluators([copy.deepcopy(cfg)], tok, seq, batch, destination_dir=str(tmp_path))
    hf = HuggingFaceModel(model, tokenizer=tok, use_logits=True,  # the metric LLM Foundry's models carry
                          eval_metrics=[InContextLearningGenerationExactMatchAccuracy()])
    trainer = Trainer(model=hf, eval_dataloader=evaluators,
                      device='cpu', progress_bar=False, log_to_console=False, loggers=[], callbacks=[Grab()],
                      precision='fp32')
    trainer.eval()
    label = f"{cfg['label']}/{cfg['num_fewshot'][0]}-shot"
    acc = float(trainer.state.eval_metrics[label]['InContextLearningGenerationExactMatchAccuracy'].compute())
    return acc, seen['out'], seen['ok']


def _informative_generation_file(lm, tok, path, n=16, shot=2):
    """A generation file a random model scores about half on: every answer is a fixed 8-word phrase
    (so the longest answer, hence max_new_tokens, does not depend on what is chosen below); the
    model's own greedy output for each prompt picks the early-stopping string and the aliases:
    half the examples get the start (<= 3 characters, shorter than any answer) of their
    stop-truncated, normalized output, the others a miss, including one whose alias matches only
    the text *after* the stop."""
    import re as _re

    from foundry_ext.gauntlet.prompts import needs_prefix_space
    rng = random.Random(11)
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    rows = [{'context': s(4), 'answer': s(8), 'aliases': []} for _ in range(n)]
    _write(path, rows)
    t = task_from_cfg({'label': 'g', 'dataset_uri': str(path), 'icl_task_type': 'generation_task_with_answers',
                       'num_fewshot': [shot]})
    items = build_items(t, load_examples(t), tok, shot, 128)
    outs = greedy_generate(lm.step, [it.contexts[0] for it in items], items[0].max_new_tokens, tok.eos_token_id,
                           lm.pad_id)
    seen = [('' if needs_prefix_space(tok) else ' ') + x for x in tok.batch_decode(outs, skip_special_tokens=True)]
    # stop 1: three word characters from the middle of one output (so it truncates there);
    # stop 2: the start of another output (truncates it to nothing)
    cut = next(i for i, x in enumerate(seen) if _re.search(r'\w{3}', x[4:]))
    stop1 = _re.search(r'\w{3}', seen[cut][4:]).group()
    first = next(i for i, x in enumerate(seen) if i != cut and _re.match(r'[ \w]{2}\w', x))
    stop2 = seen[first][:3]
    stops = [stop1, stop2]
    trunc = [_re.split('|'.join(stops), x)[0] for x in seen]
    hits = []
    for i, (x, tr) in enumerate(zip(seen, trunc)):
        words, full = normalize_answer(tr).split(), normalize_answer(x).split()
        if i == first:
            rows[i]['aliases'] = [full[0][:3]]  # right only if the stop were ignored
        elif i % 2 == 0 and words:
            rows[i]['aliases'] = [words[0][:3].upper(), 'zq' + words[0][:3]]  # normalization lower-cases it
            hits.append(i)
        else:
            rows[i]['aliases'] = ['zqzq']
    _write(path, rows)
    return stops, hits, trunc, seen, first


def _metaspace_tokenizer(corpus):
    """A SentencePiece-style tokenizer (' a' is two tokens): Composer prepends a space to its generations."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from foundry_ext.prep.corpus import iter_texts
    t = Tokenizer(models.BPE(unk_token='<unk>'))
    t.normalizer = normalizers.Prepend('▁')  # a dummy prefix, as SentencePiece: ' a' -> '▁▁a'
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    t.train_from_iterator(iter_texts(corpus), trainers.BpeTrainer(
        vocab_size=512, special_tokens=['<unk>', '</s>', '<pad>'], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token='</s>', pad_token='<pad>', unk_token='<unk>')


@pytest.mark.parametrize('which', ['gpt2', 'mpt', 'mpt-metaspace'])
def test_generation_accuracy_equals_llmfoundry_evaluator(which, request, tmp_path, tiny_corpus):
    """Same file, same weights: LLM Foundry's generation evaluator and ours give the same outputs
    (up to the first stop string), the same per-example 0/1 and the same non-trivial accuracy.
    gpt2 has absolute positions, mpt rotary ones (LLM Foundry left-pads, we do not pad); the
    metaspace tokenizer checks the space Composer puts in front of SentencePiece generations."""
    import re as _re
    if which == 'mpt-metaspace':
        from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
        tk = _metaspace_tokenizer(tiny_corpus)
        torch.manual_seed(2)
        cfg = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, vocab_size=len(tk), init_device='cpu',
                        attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'alibi': False})
        lm = wrap(MPTForCausalLM(cfg), tk, 'tiny-mpt-metaspace', 128, device='cpu')
    else:
        lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    path = tmp_path / 'gen.jsonl'
    stops, hits, trunc, seen, first = _informative_generation_file(lm, tok, path)
    cfg = {'label': 'gen', 'dataset_uri': str(path), 'icl_task_type': 'generation_task_with_answers',
           'num_fewshot': [2], 'early_stopping_criteria': stops}
    tasks, errs = parse_tasks([cfg])
    r = run_gauntlet(lm, tasks, None, NO_BOOT, log=lambda s: None)
    b = r.benchmarks['gen/2-shot']
    theirs, their_out, their_ok = _foundry_generation_eval(lm.model, tok, cfg, tmp_path / 'foundry')
    lm.model.eval()  # Composer's Trainer leaves the module in train mode (dropout on) for the next test
    ours = [int(c) for c in b.correct]
    # the file is informative and exercises the stops: some outputs are cut, one to nothing
    assert sum(tr != x for tr, x in zip(trunc, seen)) >= 2 and trunc[first] == ''
    assert 0 < b.accuracy < 1 and b.accuracy == len(hits) / len(ours)
    assert ours == [int(i in hits) for i in range(len(ours))]
    # ... and LLM Foundry agrees, example by example
    assert [_re.split('|'.join(stops), x)[0] for x in their_out] == trunc
    assert their_ok == ours
    assert theirs == pytest.approx(b.accuracy, abs=1e-6)


def test_generation_task_bad_settings_one_line(files, tmp_path):
    base = {'label': 'g', 'dataset_uri': files['gen'], 'icl_task_type': 'generation_task_with_answers',
            'num_fewshot': [0]}
    cases = [({'generation_kwargs': {'do_sample': True}}, 'generation_kwargs do_sample=True is not supported'),
             ({'generation_kwargs': {'num_beams': 4}}, 'num_beams=4 is not supported'),
             ({'generation_kwargs': {'max_new_tokens': 0}}, 'max_new_tokens must be a positive integer'),
             ({'early_stopping_criteria': ['(']}, 'escape the special characters'),
             ({'early_stopping_criteria': '\n'}, 'must be a list of non-empty strings')]
    for extra, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            task_from_cfg({**base, **extra})
        assert '\n' not in str(e.value)
    ok = task_from_cfg({**base, 'generation_kwargs': {'use_cache': True, 'do_sample': False, 'max_new_tokens': 5}})
    assert ok.max_new_tokens == 5
    mixed = _write(tmp_path / 'mixed.jsonl', [{'context': 'a', 'answer': 'b', 'chain_of_thought': 'c'},
                                              {'context': 'd', 'answer': 'e'}])
    with pytest.raises(UserError, match="mixed.jsonl line 2: no 'chain_of_thought'"):
        load_examples(task_from_cfg({**base, 'dataset_uri': mixed, 'cot_delimiter': ' #### '}))


GAUNTLET = {'weighting': 'EQUAL', 'subtract_random_baseline': True, 'rescale_accuracy': True,
            'categories': [{'name': 'a', 'benchmarks': [{'name': 'x', 'num_fewshot': 0, 'random_baseline': 0.5},
                                                       {'name': 'y', 'num_fewshot': 1, 'random_baseline': 0.0}]},
                           {'name': 'b', 'benchmarks': [{'name': 'z', 'num_fewshot': 0, 'random_baseline': 0.25}]}]}


def test_composite_weightings_match_llmfoundry_formula():
    acc = {'x/0-shot': 0.75, 'y/1-shot': 0.2, 'z/0-shot': 0.4}
    sizes = {'x/0-shot': 100, 'y/1-shot': 1000, 'z/0-shot': 10}
    g = comp.parse_gauntlet(GAUNTLET)
    r = comp.composite(g, acc, sizes)
    assert r['categories']['a'] == pytest.approx((0.5 + 0.2) / 2)
    assert r['categories']['b'] == pytest.approx(0.15 / 0.75)
    assert r['averages']['default_average'] == pytest.approx(((0.5 + 0.2) / 2 + 0.2) / 2)
    r = comp.composite(comp.parse_gauntlet({**GAUNTLET, 'weighting': 'SAMPLE_SZ'}), acc, sizes)
    assert r['categories']['a'] == pytest.approx((0.5 * 100 + 0.2 * 1000) / 1100)
    r = comp.composite(comp.parse_gauntlet({**GAUNTLET, 'weighting': 'LOG_SAMPLE_SZ'}), acc, sizes)
    wx, wy = np.log2(100), np.log2(1000)
    assert r['categories']['a'] == pytest.approx((0.5 * wx + 0.2 * wy) / (wx + wy))
    r = comp.composite(comp.parse_gauntlet({**GAUNTLET, 'subtract_random_baseline': False,
                                            'rescale_accuracy': False, 'averages': {'avg': ['b']}}), acc, sizes)
    assert r['categories']['a'] == pytest.approx((0.75 + 0.2) / 2) and r['averages'] == {'avg': pytest.approx(0.4)}
    with pytest.raises(UserError, match='rescale_accuracy'):
        comp.parse_gauntlet({**GAUNTLET, 'subtract_random_baseline': False})
    with pytest.raises(UserError, match='weighting'):
        comp.parse_gauntlet({**GAUNTLET, 'weighting': 'LINEAR'})


def test_bootstrap_intervals_deterministic_and_paired():
    g = comp.parse_gauntlet(GAUNTLET)
    rng = np.random.default_rng(0)
    c = {'x/0-shot': rng.integers(0, 2, 200), 'y/1-shot': rng.integers(0, 2, 50), 'z/0-shot': rng.integers(0, 2, 80)}
    a1 = comp.bootstrap(g, c, 300, seed=5)
    a2 = comp.bootstrap(g, c, 300, seed=5)
    assert a1 == a2
    lo, hi = a1['benchmarks']['x/0-shot']
    assert lo < c['x/0-shot'].mean() < hi and hi - lo < 0.2
    assert set(a1['categories']) == {'a', 'b'} and 'default_average' in a1['averages']
    same = comp.bootstrap(g, c, 300, seed=5, other=c)
    assert same['averages']['default_average'] == (0.0, 0.0)


def _results(files, lm, tmp_path, extra=(), gauntlet=None, cache=None):
    raw = [{'label': 'mc', 'dataset_uri': files['mc'], 'icl_task_type': 'multiple_choice', 'num_fewshot': [0, 2]},
           {'label': 'lm', 'dataset_uri': files['lm'], 'icl_task_type': 'language_modeling', 'num_fewshot': [0]},
           *extra]
    tasks, errors = parse_tasks(raw)
    return run_gauntlet(lm, tasks, gauntlet, RunOptions(cache_dir=cache, bootstrap_samples=200), errors=errors,
                        log=lambda s: None)


def test_bad_inputs_one_line_each_others_still_run(files, gpt2, tmp_path):
    d = files['dir']
    bad_json = d / 'bad.jsonl'
    bad_json.write_text('{"context": "a", "continuation": "b"}\n{"context": "a", "continuation": \n')
    gold = _write(d / 'gold.jsonl', [{'query': 'q', 'choices': ['a', 'b'], 'gold': 2}])
    extra = [{'label': 'missing', 'dataset_uri': str(d / 'nope.jsonl'), 'icl_task_type': 'language_modeling',
              'num_fewshot': [0]},
             {'label': 'malformed', 'dataset_uri': str(bad_json), 'icl_task_type': 'language_modeling',
              'num_fewshot': [0]},
             {'label': 'gold', 'dataset_uri': gold, 'icl_task_type': 'multiple_choice', 'num_fewshot': [0]},
             {'label': 'weird', 'dataset_uri': files['lm'], 'icl_task_type': 'summarization', 'num_fewshot': [0]},
             {'label': 'many', 'dataset_uri': files['lm'], 'icl_task_type': 'language_modeling', 'num_fewshot': [0, 40]}]
    g = comp.parse_gauntlet({'categories': [{'name': 'ok', 'benchmarks': [{'name': 'mc', 'num_fewshot': 0}]},
                                            {'name': 'broken', 'benchmarks': [{'name': 'nosuch', 'num_fewshot': 0}]}]})
    r = _results(files, gpt2, tmp_path, extra, g)
    errs = r.errors
    assert len(errs) == 6 and all('\n' not in e for e in errs)
    joined = ' | '.join(errs)
    assert 'nope.jsonl not found' in joined
    assert 'line 2: malformed JSON' in joined
    assert 'gold 2 is out of range for 2 options' in joined
    assert "unknown icl_task_type 'summarization'" in joined
    assert 'num_fewshot 40 is larger than the 29 other examples' in joined
    assert "category 'broken' names benchmark(s) nosuch/0-shot" in joined
    assert set(r.benchmarks) == {'mc/0-shot', 'mc/2-shot', 'lm/0-shot', 'many/0-shot'}
    assert r.categories['ok'].score is not None and r.categories['broken'].score is None
    assert r.categories['broken'].reason == 'no score: nosuch/0-shot is not provided by any icl task'
    assert r.averages['default_average'].score == r.categories['ok'].score
    assert r.averages['default_average'].reason == 'mean of 1 of 2 categories; left out: broken'


def test_cache_and_compare(files, gpt2, mpt, tmp_path):
    cache = tmp_path / 'cache'
    r1 = _results(files, gpt2, tmp_path, cache=cache)
    r2 = _results(files, gpt2, tmp_path, cache=cache)
    assert not any(b.cached for b in r1.benchmarks.values())
    assert all(b.cached for b in r2.benchmarks.values())
    assert {k: b.accuracy for k, b in r1.benchmarks.items()} == {k: b.accuracy for k, b in r2.benchmarks.items()}
    r3 = _results(files, mpt, tmp_path, cache=cache)
    c = compare(r1, r3, None, samples=200)
    row = {x.name: x for x in c.rows}['mc/0-shot']
    assert row.diff == pytest.approx(r1.benchmarks['mc/0-shot'].accuracy - r3.benchmarks['mc/0-shot'].accuracy)
    assert row.ci[0] <= row.diff <= row.ci[1]


def test_outputs_written(files, gpt2, tmp_path):
    from foundry_ext.gauntlet.report import table, write_outputs
    g = comp.parse_gauntlet({'categories': [{'name': 'c', 'benchmarks': [{'name': 'mc', 'num_fewshot': 0,
                                                                         'random_baseline': 1 / 3}]}]})
    r = _results(files, gpt2, tmp_path, gauntlet=g)
    out = write_outputs(r, tmp_path / 'out')
    assert {p.name for p in out.iterdir()} == {'results.json', 'results.csv', 'report.md', 'categories.png'}
    assert '| mc/0-shot |' in (out / 'report.md').read_text() and 'mc/2-shot' in table(r)
    assert json.loads((out / 'results.json').read_text())['categories']['c']['ci'] is not None
    from foundry_ext.gauntlet.results import GauntletResults
    assert GauntletResults.from_json(json.loads((out / 'results.json').read_text())) == r


def test_starter_generation_is_deterministic(tiny_corpus, tmp_path):
    from foundry_ext.gauntlet.starter import TASKS, generate
    a = generate(tiny_corpus, tmp_path / 'a', seed=3, n=40)
    generate(tiny_corpus, tmp_path / 'b', seed=3, n=40)
    assert set(a) == set(TASKS) and all(v >= 10 for v in a.values())
    for t in TASKS:
        assert (tmp_path / 'a' / f'{t}.jsonl').read_bytes() == (tmp_path / 'b' / f'{t}.jsonl').read_bytes()
    types = {'records_field_schema': 'schema', 'arithmetic_gen': 'generation_task_with_answers'}
    tasks, errs = parse_tasks([{'label': t, 'dataset_uri': str(tmp_path / 'a' / f'{t}.jsonl'), 'num_fewshot': [0],
                                'icl_task_type': types.get(t, 'multiple_choice' if t.endswith('_mc')
                                                           else 'language_modeling')}
                               for t in TASKS])
    assert not errs
    for t in tasks:
        assert len(load_examples(t)) >= 10
    gen = [json.loads(x) for x in (tmp_path / 'a' / 'arithmetic_gen.jsonl').read_text().splitlines()]
    assert len({g['context'] for g in gen}) == len(gen)  # each question once: few-shot never shows the answer
    for g in gen:
        a, b = g['context'].rstrip(' =').split(' + ')
        assert g['answer'] == str(int(a) + int(b)) and g['answer'] in g['aliases']


def test_callback_registered_and_logs_metrics(files, gpt2, tok):
    from types import SimpleNamespace

    from llmfoundry import registry

    from foundry_ext.gauntlet.callback import GauntletCallback
    assert registry.callbacks.get('gauntlet') is GauntletCallback
    cb = GauntletCallback(icl_tasks=[{'label': 'mc', 'dataset_uri': files['mc'], 'icl_task_type': 'multiple_choice',
                                      'num_fewshot': [0]}],
                          eval_gauntlet={'categories': [{'name': 'c', 'benchmarks': [{'name': 'mc', 'num_fewshot': 0,
                                                                                     'random_baseline': 1 / 3}]}]},
                          interval='5ba', limit=10)
    logged = {}
    state = SimpleNamespace(model=SimpleNamespace(model=gpt2.model, tokenizer=tok),
                            timestamp=SimpleNamespace(batch=10))
    gpt2.model.train()
    cb.batch_end(state, SimpleNamespace(log_metrics=logged.update))
    assert set(logged) == {'gauntlet/mc/0-shot', 'gauntlet/category/c', 'gauntlet/average/default_average'}
    assert gpt2.model.training  # restored
    gpt2.model.eval()


def test_eval_command_bad_config_one_line(tmp_path, capsys):
    from foundry_ext.commands.eval import main
    y = tmp_path / 'e.yaml'
    y.write_text('model: {hf_path: x}\nicl_task: []\n')
    assert main([str(y)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and "unknown eval config key 'icl_task'; did you mean 'icl_tasks'?" in err
    y.write_text('model: {hf_path: nowhere}\nicl_tasks: [{label: a, dataset_uri: a.jsonl, icl_task_type: '
                 'language_modeling, num_fewshot: [0]}]\n')
    assert main([str(y)]) == 2
    assert 'not an HF model folder' in capsys.readouterr().err


@pytest.mark.slow
def test_eval_script_end_to_end_hf_dir(files, gpt2, tok, tmp_path, capsys):
    """The eval command in this process, and `scripts/eval.py` under a 2-process launcher (examples split
    over 2 gloo ranks): same per-example results. Few examples: the subject is the command (yaml, overrides,
    launcher, outputs, compare, cache), not scoring; the one subprocess is mostly imports."""
    import subprocess
    import sys

    from foundry_ext.commands.eval import main

    from conftest import ROOT
    hf = tmp_path / 'hf'
    gpt2.model.save_pretrained(hf)
    tok.save_pretrained(hf)
    tasks = tmp_path / 'tasks.yaml'
    tasks.write_text(f"icl_tasks:\n- {{label: mc, dataset_uri: {files['mc']}, icl_task_type: multiple_choice, "
                     f"num_fewshot: [0, 1], limit: 6}}\n- {{label: lm, dataset_uri: {files['lm']}, "
                     "icl_task_type: language_modeling, num_fewshot: [0], limit: 6}\n")
    gauntlet = tmp_path / 'g.yaml'
    gauntlet.write_text('eval_gauntlet:\n  categories:\n  - {name: a, benchmarks: [{name: mc, num_fewshot: 0, '
                        'random_baseline: 0.33}, {name: lm, num_fewshot: 0}]}\n')
    results = {}
    # torchrun sets the same RANK/WORLD_SIZE/MASTER_* as `composer -n 2` and imports less (the launcher is
    # not under test: tests/e2e/test_train_e2e.py runs `composer -n 2`)
    for launcher in (None, [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']):
        out = tmp_path / f'out{launcher is None}'
        args = [str(ROOT / 'yamls' / 'eval' / 'starter.yaml'), f'model={{hf_path: {hf}}}', f'icl_tasks={tasks}',
                f'eval_gauntlet={gauntlet}', f'output_dir={out}', f'cache_dir={out}-cache', 'bootstrap_samples=50',
                f'compare={{hf_path: {hf}}}']
        if launcher is None:
            assert main(args) == 0
            stdout = capsys.readouterr().out
        else:
            r = subprocess.run([*launcher, 'scripts/eval.py', *args], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            stdout = r.stdout
        res = json.loads((out / 'results.json').read_text())
        assert set(res['benchmarks']) == {'mc/0-shot', 'mc/1-shot', 'lm/0-shot'} and res['categories']['a']['score'] is not None
        assert all(b['n'] == 6 for b in res['benchmarks'].values())
        assert all(row['diff'] == 0 for row in res['compare']['rows'])  # same model: zero difference
        assert (out / 'categories.png').stat().st_size > 5000 and 'core_average' not in stdout
        assert stdout.count('gauntlet report:') == 1  # rank 0 alone reports
        results[res['world_size']] = {k: b['correct'] for k, b in res['benchmarks'].items()}
    assert results[2] == results[1]


def test_shard_assignment_balanced_and_complete():
    from foundry_ext.gauntlet.shard import Shard
    rng = random.Random(4)
    sizes = [rng.randrange(5, 300) for _ in range(200)]
    parts = [Shard(r, 3).assign(sizes) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    tokens = [sum(sizes[i] for i in p) for p in parts]
    assert max(tokens) - min(tokens) <= max(sizes)  # largest first to the least loaded rank
    # equal keys stay on one rank unless the group is larger than an even share
    keys = [i % 7 for i in range(60)]
    parts = [Shard(r, 2).assign([10] * 60, keys) for r in range(2)]
    assert all(len({keys[i] for i in p} & {keys[i] for i in q}) == 0 for p, q in [parts])
    big = [Shard(r, 2).assign([10] * 60, [0] * 60) for r in range(2)]
    assert [len(p) for p in big] == [30, 30]
    assert Shard().assign(sizes) == list(range(len(sizes))) and Shard().gather([0, 1], ['a', 'b'], 2) == ['a', 'b']
    with pytest.raises(ValueError):
        Shard(2, 2)


def test_task_max_seq_len_overrides_the_global_one(files, gpt2):
    from foundry_ext.gauntlet.runner import score_task
    raw = {'label': 'lm', 'dataset_uri': files['lm'], 'icl_task_type': 'language_modeling', 'num_fewshot': [5]}
    short = {**raw, 'max_seq_len': 32}
    tasks, _ = parse_tasks([short])
    r = run_gauntlet(gpt2, tasks, None, RunOptions(max_seq_len=128, bootstrap_samples=0), log=lambda s: None)
    ex = load_examples(tasks[0])
    want, _ = score_task(gpt2, tasks[0], ex, 5, 32)
    assert [int(c) for c in r.benchmarks['lm/5-shot'].correct] == want
    assert r.benchmarks['lm/5-shot'].max_seq_len == 32 and r.max_seq_len == 128
    assert all(sum(map(len, it.contexts[0:1] + it.continuations[0:1])) <= 32
               for it in build_items(tasks[0], ex, gpt2.tokenizer, 5, 32))
    assert max(len(it.contexts[0]) for it in build_items(task_from_cfg(raw), ex, gpt2.tokenizer, 5, 128)) > 32
