"""Benchmark: our text -> MDS converter vs LLM Foundry's ``convert_text_to_mds``, same run.

    python bench/data_prep.py [--size_mb 100] [--num_proc 2] [--concat_tokens 2048]

1. builds a corpus of about ``--size_mb`` MB with ``python -m foundry_ext corpus`` and writes
   every document to its own ``.txt`` file (LLM Foundry's converter reads a folder of .txt
   files, one document each, EOS between them: exactly our packing);
2. converts that folder with LLM Foundry's ``convert_text_to_mds`` and with ours
   (``data_prep/convert_text_to_mds.py``), same tokenizer (the local one from ``make data``,
   trained if missing), same ``--concat_tokens``, same number of processes;
3. times raw ``tokenizers`` ``encode_batch`` on the same documents with as many threads
   (the practical limit: tokenization alone, text already in memory).

Each converter runs in a child process; its imports are not timed (LLM Foundry's take tens of
seconds), only the conversion call. Peak memory is the largest sum of RSS over the child's
process tree (sampled every 50 ms). Prints a table, then

    BENCH data_prep encode_batch_ratio=<ours/encode_batch> goal>=0.7 PASS|MISS   (informative)
    BENCH data_prep speedup_vs_foundry=<ours/foundry> goal>=2.0 PASS|MISS

and exits 0 unless something crashed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

FOUNDRY_CHILD = textwrap.dedent('''
    import json, logging, os, sys, time
    os.environ['WORLD_SIZE'] = '1'
    logging.disable(logging.INFO)
    from llmfoundry.command_utils.data_prep.convert_text_to_mds import convert_text_to_mds
    from transformers import AutoTokenizer
    tok_dir, out, inp, L, procs = sys.argv[1:6]
    eos = AutoTokenizer.from_pretrained(tok_dir).eos_token
    import tqdm, functools
    tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
    print('READY', flush=True)
    t = time.perf_counter()
    convert_text_to_mds(tokenizer_name=tok_dir, output_folder=out, input_folder=inp, concat_tokens=int(L),
                        eos_text=eos, bos_text='', no_wrap=False, compression=None, processes=int(procs),
                        args_str='bench', reprocess=True, trust_remote_code=False)
    dt = time.perf_counter() - t
    samples = json.load(open(os.path.join(out, 'index.json')))
    n = sum(s['samples'] for s in samples['shards'])
    print('RESULT ' + json.dumps({'seconds': dt, 'tokens': n * int(L)}), flush=True)
''')

OURS_CHILD = textwrap.dedent('''
    import json, sys, time
    sys.path.insert(0, sys.argv[6])
    from foundry_ext.prep.text import convert_to_mds
    import tokenizers, numpy  # noqa: F401
    tok_dir, out, inp, L, procs = sys.argv[1:6]
    print('READY', flush=True)
    t = time.perf_counter()
    stats = convert_to_mds(inp, tok_dir, out, concat_tokens=int(L), num_proc=int(procs), overwrite=True)
    dt = time.perf_counter() - t
    n = sum(s['tokens'] for d in stats['domains'].values() for s in d.values())
    print('RESULT ' + json.dumps({'seconds': dt, 'tokens': n}), flush=True)
''')

ENCODE_CHILD = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from tokenizers import Tokenizer
    tok_dir, inp, fn = sys.argv[1:4]
    tok = Tokenizer.from_file(os.path.join(tok_dir, 'tokenizer.json'))
    files = sorted(Path(inp).rglob('*.txt'))
    texts = [f.read_text(encoding='utf-8') for f in files]
    print('READY', flush=True)
    enc = getattr(tok, fn)
    n, t = 0, time.perf_counter()
    for i in range(0, len(texts), 2000):
        out = enc(texts[i:i + 2000], add_special_tokens=False)
        n += sum(len(e) for e in out)
        del out
    dt = time.perf_counter() - t
    print('RESULT ' + json.dumps({'seconds': dt, 'tokens': n + len(texts)}), flush=True)
''')


def run_child(code: str, args: list[str], env: dict) -> dict:
    """Run a child; time only what it times; peak RSS summed over its process tree."""
    import psutil
    proc = subprocess.Popen([PY, '-c', code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(ROOT))
    peak = [0]
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                break
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    res = None
    for line in out.splitlines():
        if line.startswith('RESULT '):
            res = json.loads(line[7:])
    if proc.returncode != 0 or res is None:
        raise RuntimeError(f'child failed (rc={proc.returncode}):\n{err[-3000:]}')
    res['peak_rss_mb'] = peak[0] / 2**20
    return res


def build_inputs(work: Path, size_mb: float, tokenizer: Path | None) -> tuple[Path, Path, float]:
    corpus = work / 'corpus'
    # code and prose sources run out near 31 MB and 4 MB: give the procedural domains the rest.
    mix = None
    if size_mb >= 60:
        code, prose = 30 / size_mb, 3.5 / size_mb
        rest = (1 - code - prose) / 2
        mix = f'code={code:.4f},prose={prose:.4f},arithmetic={rest:.4f},records={rest:.4f}'
    cmd = [PY, '-m', 'foundry_ext', 'corpus', '--out', str(corpus), '--size_mb', str(size_mb), '--overwrite']
    if mix:
        cmd += ['--mix', mix]
    subprocess.run(cmd, check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    if tokenizer is None or not (tokenizer / 'tokenizer.json').is_file():
        tokenizer = work / 'tokenizer'
        subprocess.run([PY, '-m', 'foundry_ext', 'tokenizer', '--corpus', str(corpus), '--out', str(tokenizer),
                        '--vocab_size', '4096', '--overwrite'], check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    txt = work / 'txt'
    nbytes = 0
    for jl in sorted(corpus.glob('*/*.jsonl')):
        d = txt / jl.parent.name / jl.stem
        d.mkdir(parents=True, exist_ok=True)
        with open(jl, encoding='utf-8') as f:
            for i, line in enumerate(f):
                text = json.loads(line)['text']
                (d / f'{i:07d}.txt').write_text(text, encoding='utf-8')
                nbytes += len(text.encode('utf-8'))
    return txt, tokenizer, nbytes / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size_mb', type=float, default=100, help='corpus size (default 100)')
    p.add_argument('--num_proc', type=int, default=min(4, os.cpu_count() or 1), help='processes for both')
    p.add_argument('--concat_tokens', type=int, default=2048)
    p.add_argument('--tokenizer', default=str(ROOT / 'data' / 'tokenizer'))
    p.add_argument('--work', default=None, help='scratch folder (default: a temporary one, removed)')
    a = p.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='bench_data_prep_'))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM='false', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               PYTHONPATH=str(ROOT))
    try:
        t = time.perf_counter()
        txt, tok, mb = build_inputs(work, a.size_mb, Path(a.tokenizer))
        print(f'corpus: {mb:.1f} MB of text in {sum(1 for _ in txt.rglob("*.txt"))} .txt files '
              f'(built in {time.perf_counter() - t:.0f}s); tokenizer {tok}; concat_tokens {a.concat_tokens}; '
              f'{a.num_proc} process(es); {os.cpu_count()} CPUs', flush=True)
        args = [str(tok), None, str(txt), str(a.concat_tokens), str(a.num_proc)]
        res = {}
        for name, code, extra in [('llm-foundry convert_text_to_mds', FOUNDRY_CHILD, []),
                                  ('foundry_ext convert_to_mds', OURS_CHILD, [str(ROOT)])]:
            out = work / name.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            args[1] = str(out)
            res[name] = run_child(code, args + extra, env)
            print(f'  done: {name}', flush=True)
            shutil.rmtree(out, ignore_errors=True)
        enc_env = dict(env, TOKENIZERS_PARALLELISM='true', RAYON_NUM_THREADS=str(a.num_proc),
                       RAYON_RS_NUM_CPUS=str(a.num_proc))
        for fn in ('encode_batch', 'encode_batch_fast'):
            res[f'tokenizers {fn} ({a.num_proc} threads)'] = run_child(ENCODE_CHILD, [str(tok), str(txt), fn], enc_env)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'':<40}{'tokens':>12}{'seconds':>10}{'tokens/s':>14}{'peak RSS MB':>13}")
    for name, r in res.items():
        r['tps'] = r['tokens'] / r['seconds']
        print(f"{name:<40}{r['tokens']:>12}{r['seconds']:>10.2f}{r['tps']:>14,.0f}{r['peak_rss_mb']:>13.0f}")
    ours = res['foundry_ext convert_to_mds']['tps']
    foundry = res['llm-foundry convert_text_to_mds']['tps']
    enc = res[f'tokenizers encode_batch ({a.num_proc} threads)']['tps']
    speedup, ratio = ours / foundry, ours / enc
    print(f'(same token count within packing tails: ours {res["foundry_ext convert_to_mds"]["tokens"]}, '
          f'foundry {res["llm-foundry convert_text_to_mds"]["tokens"]})')
    print(f'BENCH data_prep encode_batch_ratio={ratio:.2f} goal>=0.7 {"PASS" if ratio >= 0.7 else "MISS"}')
    print(f'BENCH data_prep speedup_vs_foundry={speedup:.2f} goal>=2.0 {"PASS" if speedup >= 2.0 else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
