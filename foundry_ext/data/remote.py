"""Remote MDS streams: where a ``remote:`` points, and fetching its ``index.json`` before the build.

A remote is a local folder (a path or ``file://``) or an object-store URL (``s3://`` through
boto3, honouring ``S3_ENDPOINT_URL`` as streaming does; other schemes through streaming's own
downloader). Validation fetches each remote's ``index.json`` into the local cache (a temporary
name, then a rename, as streaming does, so a kill leaves nothing half-written), so an unreachable
endpoint, missing or wrong credentials and a wrong path are one line before the build instead of
a traceback from inside the first batch.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from foundry_ext.errors import UserError

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
CREDENTIALS_HINT = ('set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); S3_ENDPOINT_URL for an '
                    'S3-compatible server')


def local_folder(remote: Optional[str]) -> Optional[Path]:
    """The folder a local remote names (``/data/mds``, ``./x``, ``file:///x``), else None."""
    if not remote:
        return None
    if remote.startswith('file://'):
        return Path(urlparse(remote).path)
    if '://' in remote or remote.startswith(('dbfs:', 'hf:')):
        return None
    return Path(remote).expanduser()


def join(remote: str, *parts: Optional[str]) -> str:
    out = remote.rstrip('/')
    for p in parts:
        if p:
            out = f'{out}/{p.strip("/")}'
    return out


def fetch_index(remote: str, split: Optional[str], local: str | os.PathLike, name: str) -> Path:
    """``<remote>/<split>/index.json`` -> ``<local>/<split>/index.json`` unless already there."""
    dest = Path(local) / (split or '') / 'index.json'
    if dest.is_file():
        return dest
    src = join(remote, split, 'index.json')
    folder = local_folder(remote)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f'index.json.{os.getpid()}.tmp')
    try:
        if folder is not None:
            path = folder / (split or '') / 'index.json'
            if not path.is_file():
                raise UserError(f'{name}: remote {path} does not exist; is remote (and split) right?')
            shutil.copyfile(path, tmp)
        elif src.startswith('s3://'):
            _s3_download(src, tmp, name)
        else:
            _streaming_download(src, tmp, name)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _s3_download(url: str, to: Path, name: str) -> None:
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
    except ImportError:
        raise UserError(f'{name}: reading {url} needs boto3 (pip install boto3)') from None
    endpoint = os.environ.get('S3_ENDPOINT_URL') or None
    where = f'the S3 endpoint {endpoint}' if endpoint else 'S3'
    u = urlparse(url)
    session = boto3.session.Session()
    creds = session.get_credentials()
    cfg = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, retries={'max_attempts': 1},
                 **({} if creds is not None else {'signature_version': UNSIGNED}))
    try:
        client = session.client('s3', endpoint_url=endpoint, config=cfg)
        client.download_file(u.netloc, u.path.lstrip('/'), str(to))
    except NoCredentialsError:
        raise UserError(f'{name}: no credentials to read {url}; {CREDENTIALS_HINT}') from None
    except EndpointConnectionError:
        raise UserError(f'{name}: cannot reach {where} to read {url}; is the server up and '
                        'S3_ENDPOINT_URL right?') from None
    except ClientError as e:
        code = str(e.response.get('Error', {}).get('Code', ''))
        if code in ('404', 'NoSuchKey'):
            raise UserError(f'{name}: {url} does not exist; is remote (and split) right?') from None
        if code == 'NoSuchBucket':
            raise UserError(f'{name}: bucket {u.netloc!r} does not exist on {where}') from None
        if code in ('403', 'AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken'):
            why = 'no credentials are set' if creds is None else f'the credentials were refused ({code})'
            raise UserError(f'{name}: access to {url} denied: {why}; {CREDENTIALS_HINT}') from None
        raise UserError(f'{name}: cannot read {url} from {where} ({code or e})') from None
    except (BotoCoreError, OSError) as e:
        msg = ' '.join(str(e).split())[:200]
        raise UserError(f'{name}: cannot read {url} from {where} ({type(e).__name__}: {msg})') from None


def _streaming_download(url: str, to: Path, name: str) -> None:
    from streaming.base.storage import download_file
    try:
        download_file(url, str(to), READ_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - each cloud's client raises its own types
        msg = ' '.join(str(e).split())[:200]
        raise UserError(f'{name}: cannot fetch {url} ({type(e).__name__}: {msg}); check the remote, '
                        'the network and the credentials') from None
