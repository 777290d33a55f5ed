"""SFT rows -> checked examples -> tokenized turns; shared by prep time (MDS) and train time (jsonl).

A row is one JSON object per line, either ``{"prompt": str, "response": str}`` (field names
configurable) or ``{"messages": [{"role": ..., "content": ...}, ...]}`` with at least one assistant
message and the assistant speaking last. :func:`read_rows` checks every row and reports all bad ones
at once, with their line numbers.

Tokenized, an example is LLM Foundry's ``turns``: one ``(prompt ids, response ids)`` pair per
assistant message, so the same data trains through LLM Foundry's own ``finetuning`` loader.
Chat rows are rendered with a chat template (:func:`resolve_template`: the tokenizer's own, else
ChatML) turn by turn; the boundaries are exact:

* a turn's *response* is the assistant's content plus the end-of-turn marker the template writes
  after it (``<|im_end|>``, ``<|eot_id|>``, ``</s>`` ...): the model must learn to stop;
* whitespace the template writes after that marker, the next role header, system and user text,
  are the next turn's *prompt*: template boilerplate is never a target.

Prompt/response rows are concatenated as they are (LLM Foundry's semantics): the tokenizer's
BOS (if it adds one) before the prompt, no template. :func:`stitch` turns an example into
``(input_ids, labels)`` for a ``train_on`` choice (``-100`` = not trained) and, as LLM Foundry's
collator does, appends the EOS token to the last response when it does not end with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from foundry_ext.errors import UserError

IGNORE = -100
# What is trained: the last assistant turn only (LLM Foundry's default), every assistant turn
# (the default here, as in torchtune / axolotl / TRL), or every token including prompts.
TRAIN_ON = ('last_assistant', 'all_assistant', 'everything')
DEFAULT_TRAIN_ON = 'all_assistant'

CHATML = ('{% for message in messages %}'
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          '{% endfor %}'
          '{% if add_generation_prompt %}'
          "{{ '<|im_start|>assistant\n' }}"
          '{% endif %}')

Turns = list[tuple[list[int], list[int]]]


@dataclass(frozen=True)
class Fields:
    """Names of the fields of a row."""
    prompt: str = 'prompt'
    response: str = 'response'
    messages: str = 'messages'

    @property
    def hint(self) -> str:
        return (f'each row needs "{self.prompt}" and "{self.response}" strings, or a "{self.messages}" list of '
                '{"role", "content"} ending with an assistant message')


DEFAULT_FIELDS = Fields()


@dataclass
class Row:
    """One checked row; ``where`` is ``file:line``."""
    where: str
    messages: Optional[list[dict[str, str]]] = None
    prompt: Optional[str] = None
    response: Optional[str] = None

    @property
    def kind(self) -> str:
        return 'chat' if self.messages is not None else 'prompt_response'


def parse_row(obj: Any, fields: Fields = DEFAULT_FIELDS, where: str = '', exact_keys: bool = False) -> Row:
    """A decoded JSON value -> :class:`Row`; ValueError (what is wrong, one clause) otherwise.
    ``exact_keys``: no other keys (LLM Foundry's ``finetuning`` loader rejects rows that have more)."""
    if not isinstance(obj, dict):
        raise ValueError(f'a JSON {type(obj).__name__}, not an object')
    if exact_keys:
        want = {fields.messages} if fields.messages in obj else {fields.prompt, fields.response}
        extra = sorted(set(obj) - want)
        if extra and want <= set(obj):
            raise ValueError(f"extra key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}: LLM Foundry's "
                             'finetuning loader takes rows with exactly these keys (the sft loader ignores others)')
    if fields.messages in obj:
        msgs = obj[fields.messages]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f'"{fields.messages}" must be a non-empty list')
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get('role'), str) or not m['role'] \
                    or not isinstance(m.get('content'), str):
                raise ValueError(f'message {i} must be {{"role": str, "content": str}}, got {json.dumps(m)[:80]}')
        if not any(m['role'] == 'assistant' for m in msgs):
            raise ValueError('no assistant message: nothing to train on')
        if msgs[-1]['role'] != 'assistant':
            raise ValueError(f'the last message is from {msgs[-1]["role"]!r}, not the assistant '
                             '(nothing after the last assistant message is trained)')
        return Row(where, messages=[{'role': m['role'], 'content': m['content']} for m in msgs])
    missing = [f for f in (fields.prompt, fields.response) if f not in obj]
    if missing:
        raise ValueError(f'missing field{"s" if len(missing) > 1 else ""} {", ".join(repr(m) for m in missing)} '
                         f'(has {", ".join(repr(k) for k in list(obj)[:6]) or "no fields"})')
    p, r = obj[fields.prompt], obj[fields.response]
    for name, v in ((fields.prompt, p), (fields.response, r)):
        if not isinstance(v, str):
            raise ValueError(f'"{name}" must be a string, got {type(v).__name__}')
    return Row(where, prompt=p, response=r)


def iter_rows(path: str | Path, fields: Fields = DEFAULT_FIELDS, exact_keys: bool = False) -> Iterator[Row | str]:
    """The rows of one jsonl file (.gz/.zst too): a :class:`Row`, or a ``file:line: problem`` string."""
    from foundry_ext.prep.sources import open_bytes
    path = Path(path)
    if not path.is_file():
        raise UserError(f'SFT data file {path} does not exist; give jsonl files of prompt/response or '
                        'messages rows (`foundry-ext sft-data` writes a demo set)')
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f'{path}:{lineno}'
            try:
                yield parse_row(json.loads(raw.decode('utf-8')), fields, where, exact_keys)
            except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
                yield f'{where}: {_first_line(e)}'


def read_rows(paths: Sequence[str | Path], fields: Fields = DEFAULT_FIELDS, skip_bad: bool = False,
              limit: Optional[int] = None, exact_keys: bool = False) -> tuple[list[Row], list[str]]:
    """Every row of the jsonl files -> (rows, bad-row messages).

    Unless ``skip_bad``, any bad row raises one :class:`UserError` naming the first bad line and
    how many others there are (with their line numbers)."""
    rows: list[Row] = []
    bad: list[str] = []
    for path in paths:
        for r in iter_rows(path, fields, exact_keys):
            if isinstance(r, str):
                bad.append(r)
            else:
                rows.append(r)
            if limit is not None and len(rows) >= limit:
                break
    if bad and not skip_bad:
        raise bad_rows_error(bad, len(rows) + len(bad), fields)
    return rows, bad


def bad_rows_error(bad: list[str], total: int, fields: Fields = DEFAULT_FIELDS) -> UserError:
    more = ''
    if len(bad) > 1:
        lines = [b.split(': ', 1)[0].rsplit(':', 1)[-1] for b in bad[1:9]]
        etc = ' ...' if len(bad) > 9 else ''
        more = f' (and {len(bad) - 1} more bad rows of {total}: lines {", ".join(lines)}{etc})'
    return UserError(f'{bad[0]}{more}; {fields.hint}')


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:240]


# ------------------------------------------------------------------------------ chat templates


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and how messages name it."""
    text: str
    name: str


def resolve_template(tokenizer: Any, spec: Optional[str] = None, tokenizer_name: str = '') -> ChatTemplate:
    """``spec``: None (the tokenizer's own template, else ChatML), ``tokenizer`` (its own, required),
    ``chatml``, a template file, or an inline Jinja string."""
    own = getattr(tokenizer, 'chat_template', None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get('default') or next(iter(own.values()), None)
    tname = f"the tokenizer's chat template ({tokenizer_name})" if tokenizer_name else "the tokenizer's chat template"
    if spec is None:
        return ChatTemplate(own, tname) if own else ChatTemplate(CHATML, 'chatml (the tokenizer has none)')
    if spec == 'tokenizer':
        if not own:
            raise UserError(f"chat_template: tokenizer the tokenizer {tokenizer_name} has no chat template; "
                            'set chat_template to chatml, a template file or a Jinja string')
        return ChatTemplate(own, tname)
    if spec == 'chatml':
        return ChatTemplate(CHATML, 'chatml')
    if '{%' in spec or '{{' in spec:
        return ChatTemplate(spec, 'the inline chat_template')
    if Path(spec).is_file():
        return ChatTemplate(Path(spec).read_text(encoding='utf-8'), f'chat template file {spec}')
    raise UserError(f'chat_template {spec!r} is not a file, a Jinja template, "chatml" or "tokenizer"')


def check_template_spec(spec: Optional[str]) -> None:
    """The part of :func:`resolve_template` that needs no tokenizer (config validation)."""
    if spec is None or spec in ('tokenizer', 'chatml') or '{%' in spec or '{{' in spec:
        return
    if not Path(spec).is_file():
        raise UserError(f'chat_template {spec!r} is not a file, a Jinja template, "chatml" or "tokenizer"')


def render(tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]], generation_prompt: bool,
           where: str = '') -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template.text, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError, raise_exception(), TypeError in a template
        raise UserError(f'{where}: {template.name} rejects this conversation ({_first_line(e)}); fix the row '
                        'or set chat_template (e.g. chatml)') from None


def _split_trailing(response: str, content: str) -> tuple[str, str]:
    """(content + end-of-turn marker, the whitespace the template writes after the marker)."""
    trained = response.rstrip()
    if response.startswith(content) and len(trained) < len(content):
        trained = response[:len(content)]          # never cut into the content's own trailing whitespace
    return trained, response[len(trained):]


def chat_turn_texts(messages: list[dict[str, str]], tokenizer: Any, template: ChatTemplate,
                    where: str = '') -> list[tuple[str, str]]:
    """(prompt text, response text) per assistant message; their concatenation is the rendered
    conversation (less the whitespace after the last end-of-turn marker)."""
    out: list[tuple[str, str]] = []
    prev, carry = '', ''
    for i, m in enumerate(messages):
        if m['role'] != 'assistant':
            continue
        prompt = render(tokenizer, template, messages[:i], True, where)
        full = render(tokenizer, template, messages[:i + 1], False, where)
        if not prompt.startswith(prev):
            raise UserError(f'{where}: {template.name} does not render this conversation turn by turn (the text '
                            f'before assistant message {i} changes when the conversation grows, e.g. it drops '
                            'earlier turns); use a template that only appends, e.g. chat_template: chatml')
        if not full.startswith(prompt):
            raise UserError(f'{where}: {template.name} renders assistant message {i} differently from its '
                            'generation prompt (add_generation_prompt), so the prompt/response boundary is '
                            'undefined; fix the template or set chat_template: chatml')
        trained, trailing = _split_trailing(full[len(prompt):], m['content'])
        out.append((carry + prompt[len(prev):], trained))
        prev, carry = full, trailing
    return out


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text by itself (BOS), if any."""
    with_special = tokenizer('a', add_special_tokens=True)['input_ids']
    plain = tokenizer('a', add_special_tokens=False)['input_ids']
    k = len(with_special) - len(plain)
    return list(with_special[:k]) if k > 0 and with_special[k:k + len(plain)] == plain else []


def tokenize_rows(rows: Sequence[Row], tokenizer: Any, template: Optional[ChatTemplate]) -> list[Turns]:
    """Rows -> turns, rendered turn by turn and tokenized in one batch call (no special tokens
    added to chat text: the template writes them; BOS before a raw prompt if the tokenizer adds one)."""
    texts: list[str] = []
    shape: list[list[bool]] = []                    # per row, per turn: is the prompt raw?
    for row in rows:
        if row.messages is not None:
            if template is None:
                raise UserError(f'{row.where}: a chat row but no chat template was resolved')
            pairs = chat_turn_texts(row.messages, tokenizer, template, row.where)
            shape.append([False] * len(pairs))
        else:
            pairs = [(row.prompt or '', row.response or '')]
            shape.append([True])
        for p, r in pairs:
            texts += [p, r]
    ids = tokenizer(texts, add_special_tokens=False)['input_ids'] if texts else []
    bos = _special_prefix(tokenizer)
    out: list[Turns] = []
    k = 0
    for raw_flags in shape:
        turns: Turns = []
        for raw in raw_flags:
            turns.append(((bos if raw else []) + list(ids[k]), list(ids[k + 1])))
            k += 2
        out.append(turns)
    return out


def as_turns(example: Any) -> Turns:
    """LLM Foundry's ``{'turns': [{'input_ids', 'labels'}, ...]}`` (or our list of pairs) -> pairs."""
    turns = example['turns'] if isinstance(example, dict) else example
    return [(list(t['input_ids']), list(t['labels'])) if isinstance(t, dict) else (list(t[0]), list(t[1]))
            for t in turns]


def stitch(turns: Turns, train_on: str, eos_id: Optional[int]) -> tuple[list[int], list[int]]:
    """One example -> (input_ids, labels) for ``train_on``; EOS appended to the last response."""
    ids: list[int] = []
    labels: list[int] = []
    for k, (p, r) in enumerate(turns):
        last = k == len(turns) - 1
        if last and eos_id is not None and (not r or r[-1] != eos_id):
            r = list(r) + [eos_id]
        ids += p
        ids += r
        labels += list(p) if train_on == 'everything' else [IGNORE] * len(p)
        labels += list(r) if (train_on != 'last_assistant' or last) else [IGNORE] * len(r)
    return ids, labels


def trained_count(labels: Iterable[int]) -> int:
    """Tokens that are loss targets: labels != -100 after the first position (the model shifts)."""
    return sum(1 for i, v in enumerate(labels) if i > 0 and v != IGNORE)


def to_llmfoundry(turns: Turns) -> list[dict[str, list[int]]]:
    return [{'input_ids': list(p), 'labels': list(r)} for p, r in turns]
