"""Local paths and object-store URIs (``s3://``, ``gs://``) behind one small API.

Every stage takes a local path or a URI that pyarrow understands. Credentials are never part of
the configuration: pyarrow, boto3 and Ray read them from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible stores such as MinIO) or from the
machine's role. :func:`redact_uri` strips anything secret from a URI before it is logged.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

# query parameters of pyarrow / fsspec URIs that carry secrets
SECRET_PARAMS = frozenset(
    {"access_key", "secret_key", "session_token", "password", "token", "key", "secret"}
)


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://…`` locations other than ``file://``."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def redact_uri(uri: str) -> str:
    """``uri`` without user info (``user:pass@``) and without secret query parameters.

    >>> redact_uri("s3://AKIA:secret@bucket/corpus?region=eu-west-1&secret_key=x")
    's3://bucket/corpus?region=eu-west-1'
    >>> redact_uri("postgresql://mlflow:pw@db:5432/mlflow")
    'postgresql://db:5432/mlflow'
    """
    text = str(uri)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def absolute_uri(uri: str | os.PathLike) -> str:
    """``uri`` with a local (possibly relative) path made absolute, as the driver sees it.

    Ray workers run in their own working directory: a relative path would land (or be looked
    for) under each worker's, so the driver resolves it once and passes the absolute form on.
    An explicit ``file://`` stays one (``file:///abs/path``): it declares a mount every node
    shares, which a multi-node corpus build requires.
    """
    if is_uri(uri):
        return str(uri).rstrip("/")
    path = resolve(uri)[1]  # file://, ~ and relative paths as resolve() reads them
    return f"file://{path}" if str(uri).startswith("file://") else path


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)`` for a local path or a pyarrow filesystem URI."""
    text = str(uri)
    if is_uri(text):
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def join_uri(base: str, *parts: str) -> str:
    """``base/part/…`` for a URI (``file://`` included) or a local path."""
    if "://" in str(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str) -> list[str]:
    """Full URIs (or paths) of every file under ``uri``, sorted."""
    fs, root = resolve(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    rels = sorted(i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File)
    return [join_uri(str(uri), r) for r in rels]


def download_dir(uri: str, dst: str | None = None) -> Path:
    """Copy a folder from an object store to a local directory (``dst`` or a new temp dir)."""
    fs, path = resolve(uri)
    local = Path(dst or tempfile.mkdtemp(prefix="scfm-download-"))
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local


def move_dir(src: str, dst: str) -> None:
    """Move the files of folder ``src`` to ``dst`` (object stores: copy + delete per file).

    On a local filesystem this is one rename. Object stores have no folder rename, so files
    appear one by one; readers that need all-or-nothing check a count or a marker.
    """
    fs, s = resolve(src)
    _, d = resolve(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(s, d)
        return
    infos = fs.get_file_info(pafs.FileSelector(s, recursive=True))
    for info in infos:
        if info.type == pafs.FileType.File:
            target = d + info.path[len(s) :]
            fs.copy_file(info.path, target)
    fs.delete_dir(s)


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def redact_values(obj):
    """``obj`` (nested dicts / lists / strings) with :func:`redact_uri` applied to every URI."""
    if isinstance(obj, str):
        return redact_uri(obj) if "://" in obj else obj
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_values(v) for v in obj)
    return obj


def redact_uri_text(text: str) -> str:
    """Free text (YAML, logs) with user info removed from every ``scheme://user:pass@`` URI."""
    import re

    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@", r"\1", text)
