"""`foundry-ext sft-data`: deterministic, held-out questions kept out of training, and the gauntlet tasks it
writes prompt the model with exactly the text `sft-eval` uses (so the two exact-match numbers agree)."""
import json

import yaml

from foundry_ext.finetune.instructions import write


def _rows(p):
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_sft_data_is_deterministic_and_held_out(tiny_corpus, tiny_tokenizer, tmp_path):
    m1 = write(tiny_corpus, tmp_path / 'a', str(tiny_tokenizer), n_train=60, n_heldout=12)
    m2 = write(tiny_corpus, tmp_path / 'b', str(tiny_tokenizer), n_train=60, n_heldout=12)
    assert m1['sha256'].pop('gauntlet/tasks.yaml') != m2['sha256'].pop('gauntlet/tasks.yaml')  # names its folder
    assert m1['sha256'] == m2['sha256']
    held = _rows(tmp_path / 'a' / 'heldout.jsonl')
    train_users = {m['content'] for r in _rows(tmp_path / 'a' / 'train.jsonl') for m in r['messages']
                   if m['role'] == 'user'}
    assert len(held) == 12 and not {h['messages'][-1]['content'] for h in held} & train_users


def test_gauntlet_prompts_equal_the_sft_eval_prompts(tiny_corpus, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from foundry_ext.gauntlet.prompts import build_task_items
    from foundry_ext.gauntlet.runner import parse_tasks
    out = tmp_path / 'sft'
    write(tiny_corpus, out, str(tiny_tokenizer), n_train=20, n_heldout=8)
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tasks, _ = parse_tasks(yaml.safe_load((out / 'gauntlet' / 'tasks.yaml').read_text())['icl_tasks'], None)
    held = _rows(out / 'heldout.jsonl')
    for t in tasks:
        rows = _rows(out / 'gauntlet' / f'{t.label}.jsonl')
        items, _ = build_task_items(t, rows, tok, 0, 4096)
        mine = [tok(h['context'], add_special_tokens=False)['input_ids'] for h in held
                if f"sft_{h['task']}" == t.label]
        assert [it.contexts[0] for it in items] == mine, t.label   # no delimiter after the generation prompt
        assert all(it.aliases == [h['answer']] for it, h in zip(items, [h for h in held if f"sft_{h['task']}" == t.label]))
