"""Subprocess of test_remote_streams: iterate a mixture over remote streams, saving the loader state
every few batches; with KILL_AT_DOWNLOAD=n, SIGKILL itself half-way through writing its n-th shard."""
import hashlib
import json
import os
import signal
import sys

from foundry_ext.data.mixing.config import MixtureConfig
from foundry_ext.data.mixing.loader import build_mixture
from foundry_ext.validation import parse


def main(cfg_path, out_dir, batches, kill_at=None):
    cfg = parse(MixtureConfig, json.loads(open(cfg_path).read()), 'train_loader')
    kill_at = int(os.environ.get('KILL_AT_DOWNLOAD', '0')) if kill_at is None else kill_at
    if kill_at:
        from streaming.base.storage import download as dl
        real = dl.S3Downloader._download_file_impl
        seen = [0]

        def impl(self, remote, local, timeout):
            if remote.endswith('.mds'):
                seen[0] += 1
                if seen[0] == kill_at:
                    tmp = local + '.5f3a9c1e'         # where boto3 writes before its rename
                    real(self, remote, tmp, timeout)
                    with open(tmp, 'r+b') as f:
                        f.truncate(os.path.getsize(tmp) // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(self, remote, local, timeout)
        dl.S3Downloader._download_file_impl = impl
    ds = build_mixture(cfg, 4, 0, 1)
    state_path = os.path.join(out_dir, 'state.json')
    start = 0
    if os.path.exists(state_path):
        state = json.load(open(state_path))
        ds.load_state_dict(state['loader'])
        start = state['batch']
    with open(os.path.join(out_dir, f'batches-{os.getpid()}.jsonl'), 'w') as log:
        it = iter(ds.sampler)
        for b in range(start, batches):
            x = ds.__getitems__(next(it))
            digest = hashlib.sha256(x['input_ids'].numpy().tobytes()).hexdigest()
            log.write(json.dumps({'batch': b, 'digest': digest}) + '\n')
            log.flush()
            if (b + 1) % 3 == 0:
                tmp = state_path + '.tmp'
                with open(tmp, 'w') as f:
                    in_epoch = (b + 1 - ds.sampler.epoch * ds.sampler.batches_per_epoch) * 4
                    json.dump({'batch': b + 1, 'loader': ds.state_dict(in_epoch)}, f)
                os.replace(tmp, state_path)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
