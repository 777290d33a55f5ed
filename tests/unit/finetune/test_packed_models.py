"""Packed rows never mix examples: logits of a packed row equal each example's alone (our MPT, HF
Llama-family); GPT-2 refuses; loss over trained tokens across gradient accumulation (Composer)."""
import pytest
import torch

from foundry_ext.errors import UserError
from foundry_ext.finetune.collate import SFTCollator
from foundry_ext.finetune.packing import is_packed

from conftest import TINY_VOCAB, write_jsonl

LENS = [(5, 3), (9, 4), (3, 6), (12, 2), (4, 4)]


def _examples(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{'turns': [{'input_ids': torch.randint(3, TINY_VOCAB, (p,), generator=g).tolist(),
                        'labels': torch.randint(3, TINY_VOCAB, (r,), generator=g).tolist()}]} for p, r in LENS]


def _check_packed_equals_alone(forward, eos=1):
    exs = _examples()
    packed = SFTCollator(pad_id=0, eos_id=eos, max_seq_len=64, train_on='all_assistant', batch_size=1,
                         packing_ratio=len(exs))(exs)
    assert packed['input_ids'].shape[0] == 1 and int(packed['sequence_id'].max()) == len(exs) - 1
    with torch.no_grad():
        logits = forward(packed)[0]
        seq = packed['sequence_id'][0]
        worst = 0.0
        for k in range(len(exs)):
            idx = (seq == k).nonzero().flatten()
            ids = packed['input_ids'][0, idx][None]
            alone = forward({'input_ids': ids, 'attention_mask': torch.ones_like(ids)})[0]
            worst = max(worst, float((logits[idx] - alone).abs().max()))
    return worst


@pytest.mark.parametrize('pos', ['rope', 'learned', 'alibi'])
def test_mpt_packed_row_equals_examples_alone(pos):
    from foundry_ext.models.mpt import FoundryMPTCausalLM
    torch.manual_seed(0)
    attn = {'attn_impl': 'auto', 'attn_uses_sequence_id': True, 'rope': pos == 'rope', 'alibi': pos == 'alibi'}
    m = FoundryMPTCausalLM(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64,
                           vocab_size=TINY_VOCAB, attn_config=attn, init_device='cpu').eval()
    assert _check_packed_equals_alone(lambda b: m(b).logits) < 1e-4


def _hf_folder(tmp_path, tiny_tokenizer, kind):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg = {'llama': lambda: transformers.LlamaConfig(**common),
           'mistral': lambda: transformers.MistralConfig(**common, sliding_window=6),
           'qwen2': lambda: transformers.Qwen2Config(**common),
           'gpt2': lambda: transformers.GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_layer=2, n_head=4)}[kind]()
    d = tmp_path / kind
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer)).save_pretrained(d)
    return d


def _hf(cls, folder):
    from transformers import AutoTokenizer
    return cls(tokenizer=AutoTokenizer.from_pretrained(str(folder)), pretrained_model_name_or_path=str(folder),
               pretrained=True, trust_remote_code=False, use_train_metrics=False).eval()


@pytest.mark.parametrize('kind', ['llama', 'mistral', 'qwen2'])
def test_hf_packed_row_equals_examples_alone(tmp_path, tiny_tokenizer, kind):
    from llmfoundry.models.hf.hf_causal_lm import ComposerHFCausalLM

    from foundry_ext.finetune.hf_model import FoundryHFCausalLM
    folder = _hf_folder(tmp_path, tiny_tokenizer, kind)
    ours = _hf(FoundryHFCausalLM, folder)
    assert _check_packed_equals_alone(lambda b: ours(b).logits) < 1e-4
    if kind == 'llama':  # plain hf_causal_lm drops sequence_id: its packed examples see each other
        plain = _hf(ComposerHFCausalLM, folder)
        assert _check_packed_equals_alone(lambda b: plain(b).logits) > 1e-2


def test_gpt2_refuses_packed_batches(tmp_path, tiny_tokenizer):
    from foundry_ext.finetune.config import packing_problems
    from foundry_ext.finetune.hf_model import FoundryHFCausalLM
    folder = _hf_folder(tmp_path, tiny_tokenizer, 'gpt2')
    m = _hf(FoundryHFCausalLM, folder)
    batch = SFTCollator(0, 1, 64, 'all_assistant', 1, packing_ratio=5)(_examples())
    assert is_packed(batch['sequence_id'])
    with pytest.raises(UserError, match="model_type 'gpt2' cannot keep packed examples apart"):
        m(batch)
    cfg = {'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(folder)},
           'train_loader': {'name': 'sft', 'dataset': {'data': 'x.jsonl', 'max_seq_len': 64, 'packing_ratio': 'auto'}}}
    [p] = packing_problems(cfg)
    assert p.startswith("train_loader.dataset.packing_ratio: hf_causal_lm model_type 'gpt2' cannot keep packed")
    assert p.endswith('set packing_ratio: null (padding, no packing)')
    cfg['train_loader']['dataset']['packing_ratio'] = None
    assert packing_problems(cfg) == []


# ------------------------------------------------------------------ gradient accumulation over trained tokens

def _grads(model, spec, microbatch, on_tokens):
    from composer import Trainer
    from composer.core import Callback

    class Grab(Callback):
        def after_train_batch(self, state, logger):
            self.g = {n: p.grad.detach().clone() for n, p in state.model.named_parameters() if p.grad is not None}

    grab = Grab()
    Trainer(model=model, train_dataloader=spec, max_duration='1ba', device='cpu', precision='fp32',
            optimizers=torch.optim.SGD(model.parameters(), lr=0.0), device_train_microbatch_size=microbatch,
            accumulate_train_batch_on_tokens=on_tokens, callbacks=[grab], progress_bar=False, log_to_console=False,
            loggers=[], seed=1).fit()
    return grab.g


@pytest.mark.parametrize('kind', ['mpt', 'llama'])
def test_microbatch_1x8_equals_microbatch_8(tmp_path, tiny_tokenizer, kind):
    """Variable-length examples, very different trained-token counts per example: 8 microbatches of 1
    give the gradients of one microbatch of 8 (and would not if microbatches were weighted by samples)."""
    from transformers import AutoTokenizer

    from foundry_ext.finetune.loader import build_sft_dataloader
    rows = [{'messages': [{'role': 'user', 'content': 'word ' * (3 + 7 * i % 11)},
                          {'role': 'assistant', 'content': 'answer ' * (1 + 5 * i % 9)}]} for i in range(8)]
    data = write_jsonl(tmp_path / 'sft.jsonl', rows)
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))

    def model():
        torch.manual_seed(0)
        if kind == 'mpt':
            from foundry_ext.models.mpt import FoundryMPTCausalLM
            return FoundryMPTCausalLM(tokenizer=tok, d_model=64, n_heads=4, n_layers=2, expansion_ratio=2,
                                      max_seq_len=128, vocab_size=TINY_VOCAB, init_device='cpu',
                                      attn_config={'attn_impl': 'auto', 'rope': True}, use_train_metrics=False)
        from foundry_ext.finetune.hf_model import FoundryHFCausalLM
        return _hf(FoundryHFCausalLM, _hf_folder(tmp_path, tiny_tokenizer, 'llama')).train()

    def spec():
        return build_sft_dataloader(tok, 8, dataset={'data': data, 'max_seq_len': 128, 'shuffle': False},
                                    drop_last=True)
    g8 = _grads(model(), spec(), 8, True)
    g1 = _grads(model(), spec(), 1, True)
    assert g8.keys() == g1.keys() and g8
    worst = max(float((g8[k] - g1[k]).abs().max() / (g8[k].abs().max() + 1e-12)) for k in g8)
    assert worst < 1e-4
    by_samples = _grads(model(), spec(), 1, False)
    assert max(float((g8[k] - by_samples[k]).abs().max() / (g8[k].abs().max() + 1e-12)) for k in g8) > 1e-2
