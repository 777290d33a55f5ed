"""Convert prompt/response or chat-messages jsonl to MDS for LLM Foundry's `finetuning` loader.

    python data_prep/convert_finetuning_dataset.py --input train=sft/train.jsonl val=sft/val.jsonl \
        --tokenizer data/tokenizer --out data/sft_mds --max_seq_len 512 [--chat_template chatml]

Train with:  train_loader: {name: finetuning, dataset: {remote: data/sft_mds, local: /tmp/sft_cache,
             split: train, max_seq_len: 512, decoder_only_format: true, shuffle: true}}
The loss is on response tokens only (the loader masks prompts). Examples longer than
--max_seq_len are counted and truncated by the loader (or dropped with --on_too_long drop);
records that are not JSON or lack the fields are skipped with their line number (--strict stops).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.data.prep_cli import split_spec  # noqa: E402
from foundry_ext.errors import UserError, exit_with  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+', help='[split=]path.jsonl (.gz/.zst too); default split train')
    p.add_argument('--tokenizer', required=True, help='local Hugging Face tokenizer folder')
    p.add_argument('--out', required=True, help='output root: <out>/<split>/ MDS + stats.json')
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--max_seq_len', type=int, default=2048)
    p.add_argument('--chat_template', default=None,
                   help="Jinja file or string, or 'chatml'; default: the tokenizer's, else LLM Foundry's ChatML")
    p.add_argument('--prompt_field', default='prompt')
    p.add_argument('--response_field', default='response')
    p.add_argument('--messages_field', default='messages')
    p.add_argument('--on_too_long', default='truncate', choices=['truncate', 'drop'])
    p.add_argument('--strict', action='store_true', help='stop at the first bad record instead of skipping it')
    p.add_argument('--compression', default=None)
    a = p.parse_args(argv)
    from foundry_ext.data.finetuning import convert_finetuning, finetuning_table
    t0 = time.time()
    try:
        stats = convert_finetuning([split_spec(s, 'train') for s in a.input], a.tokenizer, a.out,
                                   max_seq_len=a.max_seq_len, chat_template=a.chat_template,
                                   prompt_field=a.prompt_field, response_field=a.response_field,
                                   messages_field=a.messages_field, on_too_long=a.on_too_long,
                                   strict=a.strict, overwrite=a.overwrite, compression=a.compression)
    except UserError as e:
        return exit_with(e)
    print(finetuning_table(stats))
    print(f'wrote {a.out} in {time.time() - t0:.1f}s (chat template: {stats["chat_template"]}); '
          f'counts in {Path(a.out) / "stats.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
