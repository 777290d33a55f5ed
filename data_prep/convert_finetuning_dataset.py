"""Convert prompt/response or chat-messages jsonl to MDS for LLM Foundry's `finetuning` loader.

The same as `foundry-ext prep sft`; --help lists the options.
"""
import sys

from foundry_ext.commands.prep import sft

if __name__ == '__main__':
    sys.exit(sft())
