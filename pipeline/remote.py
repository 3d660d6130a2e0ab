"""Share shards through a remote: a shared folder or S3-compatible object storage (fsspec / s3fs).

The remote mirrors the store's hash-chain paths, so it is content-addressed: a shard lies at
``<dataset>/shards/<digest>/shard-NNNN.h5`` where ``digest`` covers the configuration of every
stage and the content (sha256) of every clip (``pipeline.base``, ``Clip.identity``). Beside each
file, ``<name>.sha256`` (JSON: sha256 and size) is written *after* the file, so a half-pushed
shard is never offered; build records go to ``<dataset>/builds/<key>.json`` last of all.

Pulling (``avstore pull``, or ``Shard.complete()`` during a build when ``[remote] url`` is set)
streams the file into a hidden temporary name in the destination folder while hashing it,
compares sha256 and size with the remote's record, checks that the HDF5 file carries the
expected dataset and hash-chain digest and points nowhere outside itself
(``features.store.check_closed``), and only then gives it its name (``pipeline.files.publish``): a reader
never sees a half-written or unverified shard. A recorded size above ``[remote] max_file_bytes``
or the free disk is refused before a byte is read, and no more bytes than recorded are ever
written. A shard that fails verification is left out with a warning naming it, and the build
computes it instead; a build record that cannot be read is skipped with a warning.

Credentials are never part of a URL or of the configuration: s3fs reads them from the usual
chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``~/.aws/credentials``, ``AWS_PROFILE``, instance roles); a non-AWS server is named by
``[remote] endpoint_url`` (or ``AWS_ENDPOINT_URL``). Remote names are checked against strict
patterns before they become local paths, and everything read is JSON or HDF5, never a pickle.
Every URL that is logged or put in a message goes through ``redact`` (``s3://***@bucket/p``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse

import luigi

from pipeline.files import atomic_path, publish, remove_stale_temps, temp_name

logger = logging.getLogger("luigi-interface")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
FILE_REL = re.compile(rf"^({_NAME})/([a-z0-9_]+)/([0-9a-f]{{16}})/({_NAME}\.h5)$")
RECORD_REL = re.compile(rf"^({_NAME})/builds/([0-9a-f]{{16}})\.json$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"]*@")


class RemoteError(RuntimeError):
    """A remote file is missing, does not verify, or a name from the remote is not allowed."""


class remote(luigi.Config):
    """``[remote]`` in workflows.cfg: ``url`` empty = no remote."""

    url = luigi.Parameter(default="", description="a folder, file:///path or s3://bucket/prefix; empty = none")
    endpoint_url = luigi.Parameter(default="", description="S3-compatible server (MinIO, Ceph, ...); "
                                   "empty = AWS or AWS_ENDPOINT_URL")
    max_file_bytes = luigi.IntParameter(default=16 << 30, description="a remote file recorded as larger "
                                        "than this (bytes) is refused before downloading (issue 19 item 6a)")


def redact(url: str) -> str:
    """``url`` (or a text holding URLs) with the user information of each URL replaced by ``***``:
    ``s3://KEY:SECRET@bucket/p`` -> ``s3://***@bucket/p`` (issue 19 item 7). Everything between
    ``://`` and the last ``@`` goes, since an AWS secret key may hold ``/``."""
    return _USERINFO.sub(r"\1***@", str(url))


def check_rel(rel: str, pattern: re.Pattern = FILE_REL) -> str:
    """``rel`` when it is a hash-chain path of the expected form, else RemoteError (a name such as
    ``../../.ssh/x`` or ``/etc/passwd`` from a remote record never becomes a local path)."""
    if not isinstance(rel, str) or not pattern.match(rel) or ".." in rel.split("/"):
        raise RemoteError(f"refusing the remote path {rel!r}: not of the form {pattern.pattern}")
    return rel


def quiet_sdk_debug_logs():
    """Keep the AWS SDK's loggers at INFO or above: botocore's DEBUG records print the signed
    request headers, whose ``Credential=`` field is the access key id (luigi's default log level is
    DEBUG, so a build with an S3 remote would otherwise print it)."""
    for name in ("botocore", "aiobotocore", "s3fs", "urllib3"):
        log = logging.getLogger(name)
        if log.getEffectiveLevel() < logging.INFO:
            log.setLevel(logging.INFO)


class Remote:
    """A remote store at ``url`` (a folder, ``file://``, ``s3://bucket/prefix``, any fsspec URL)."""

    def __init__(self, url: str, **storage_options):
        import fsspec

        parts = urllib.parse.urlsplit(url)
        if parts.password or (parts.scheme not in ("", "file") and redact(url) != url):  # a secret may hold "/"
            raise RemoteError(f"the remote URL {redact(url)} carries credentials; remove them from the URL and "
                              "use the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws/credentials")
        endpoint = storage_options.pop("endpoint_url", None) or remote().endpoint_url
        if parts.scheme in ("s3", "s3a") and endpoint:
            storage_options.setdefault("endpoint_url", endpoint)
        self.url = redact(url)  # for messages
        storage_options.setdefault("skip_instance_cache", True)  # endpoints / credentials may change
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        quiet_sdk_debug_logs()
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def __repr__(self):
        return f"Remote({self.url!r})"

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))
        return self.fs.exists(self.path(rel))

    def read_json(self, rel: str, limit: int = 16 << 20):
        with self.fs.open(self.path(rel), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise RemoteError(f"{self.url}/{rel}: larger than {limit} bytes, not a record")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as err:
            raise RemoteError(f"{self.url}/{rel}: not valid JSON: {err}") from None

    def _put_local(self, write, rel: str) -> None:
        """A shared folder: ``write(tmp)`` to a hidden temporary name beside ``rel``, then rename
        (atomic on one file system). A push killed meanwhile leaves only the hidden
        ``.<name>.tmp-<host>-<pid>-<random>``, which the next push from this host removes (issue 19
        item 6d)."""
        dest = self.path(rel)
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        remove_stale_temps(dest)
        tmp = temp_name(dest)
        try:
            write(tmp)
            self.fs.mv(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _put_bytes(self, data: bytes, rel: str) -> None:
        if self.local:
            self._put_local(lambda tmp: self.fs.pipe_file(tmp, data), rel)
        else:  # an object store: a PUT is visible whole or not at all
            self.fs.pipe_file(self.path(rel), data)

    def put_json(self, obj, rel: str) -> None:
        self._put_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), rel)

    def put_file(self, local: str, rel: str, sha256: str) -> None:
        """Upload ``local`` to ``rel``, then its ``.sha256`` record (the file counts once that exists)."""
        if self.local:
            self._put_local(lambda tmp: self.fs.put_file(local, tmp), rel)
        else:
            self.fs.put_file(local, self.path(rel))
        self.put_json({"sha256": sha256, "bytes": os.path.getsize(local)}, f"{rel}.sha256")

    def checksum(self, rel: str) -> dict | None:
        """The remote's {"sha256", "bytes"} of ``rel``, or None when the file is not (fully) there."""
        if not self.exists(f"{rel}.sha256"):
            return None
        meta = self.read_json(f"{rel}.sha256")
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and SHA256.match(meta["sha256"])
                and type(meta.get("bytes")) is int and meta["bytes"] >= 0):
            raise RemoteError(f"{self.url}/{rel}.sha256: not a checksum record")
        return meta

    def check_size(self, rel: str, size, dest: str) -> None:
        """Refuse, before a byte is read, a recorded ``size`` that is no byte count, above ``[remote]
        max_file_bytes``, above the free disk at ``dest``, or not the remote file's size (issue 19
        item 6a: a record claiming 3 GiB made the client stream 3.2 GB before failing)."""
        what, limit = f"{self.url}/{rel}", remote().max_file_bytes
        if type(size) is not int or size < 0:
            raise RemoteError(f"{what}: the recorded size {str(size)[:40]!r} is not a byte count")
        if size > limit:
            raise RemoteError(f"{what}: the remote records {size} bytes, more than [remote] max_file_bytes = "
                              f"{limit}; not downloaded (raise max_file_bytes in workflows.cfg if it is expected)")
        free = shutil.disk_usage(os.path.dirname(dest)).free
        if size > free:
            raise RemoteError(f"{what}: the remote records {size} bytes, more than the {free} bytes free at "
                              f"{os.path.dirname(dest)}; not downloaded (free some space)")
        actual = self.fs.size(self.path(rel))
        if actual != size:
            raise RemoteError(f"{what}: the remote file is {actual} bytes, its record says {size} bytes; "
                              "not downloaded (push it again)")

    def get_file(self, rel: str, dest: str, *, sha256: str, size: int, check=None) -> bool:
        """Download ``rel`` to ``dest``: sizes checked first (``check_size``), then streamed into a
        hidden temporary name beside ``dest`` while hashing, never past ``size`` bytes, verified
        (sha256, size, then ``check(tmp)``), then published. RemoteError when it does not verify
        (nothing is left behind). Returns False when ``dest`` appeared meanwhile."""
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        remove_stale_temps(dest)
        self.check_size(rel, size, dest)
        tmp = temp_name(dest)
        try:
            with self.fs.open(self.path(rel), "rb") as src, open(tmp, "wb") as out:
                n, digest = copy_bounded(src, out, size, what=f"{self.url}/{rel}")
            if n != size or digest != sha256:
                raise RemoteError(f"{self.url}/{rel}: downloaded {n} bytes with sha256 {digest}, "
                                  f"the remote records {size} bytes with sha256 {sha256}")
            if check is not None:
                try:
                    check(tmp)
                except RemoteError as err:
                    raise RemoteError(f"{self.url}/{rel}: {err}") from None
            return publish(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def copy_bounded(src, out, size: int, *, what: str, block: int = 1 << 22) -> tuple[int, str]:
    """Copy ``src`` to ``out`` while hashing: (bytes, sha256). Reads at most ``size + 1`` bytes and
    writes at most ``size``: RemoteError as soon as the stream is longer than its recorded ``size``
    (issue 19 item 6a; a file that grows while it is read)."""
    h, n = hashlib.sha256(), 0
    while data := src.read(min(block, size + 1 - n)):
        if n + len(data) > size:
            raise RemoteError(f"{what}: longer than its recorded {size} bytes; stopped there")
        h.update(data)
        out.write(data)
        n += len(data)
    return n, h.hexdigest()


def open_remote(url: str) -> Remote:
    """One ``Remote`` per URL and endpoint in a process (the build checks every shard)."""
    return _open_remote(url, remote().endpoint_url, os.environ.get("AWS_ENDPOINT_URL", ""))


@functools.lru_cache(maxsize=4)
def _open_remote(url: str, *endpoints) -> Remote:
    return Remote(url)


def check_shard(path: str, *, dataset: str, digest: str) -> None:
    """The HDF5 file is a shard of ``dataset`` with hash-chain ``digest`` (attributes are JSON) and
    a closed world: no external storage, external or dangling links, virtual datasets (issue 19
    item 6b; ``features.store.check_closed``)."""
    from features.errors import UnsafeShard
    from features.store import check_closed, read_attrs

    try:
        check_closed(path)
        attrs = read_attrs(path)
    except UnsafeShard as err:
        raise RemoteError(f"refusing the shard: {err}") from None
    except Exception as err:  # not HDF5, or attributes that are not JSON
        raise RemoteError(f"not a readable shard: {type(err).__name__}: {err}") from None
    if attrs.get("dataset") != dataset or attrs.get("digest") != digest:
        raise RemoteError(f"the file is a shard of {attrs.get('dataset')!r} with digest {attrs.get('digest')!r}, "
                          f"expected {dataset!r} with digest {digest!r}")


def _pull_stage_json(r: Remote, rel_dir: str, local_dir: str, digest: str) -> None:
    rel, dest = f"{rel_dir}/stage.json", os.path.join(local_dir, "stage.json")
    if os.path.exists(dest) or not r.exists(rel):
        return
    doc = r.read_json(rel)
    if isinstance(doc, dict) and doc.get("digest") == digest:
        with atomic_path(dest) as tmp, open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)


def pull_output(task) -> bool:
    """``BatchTask.complete()``'s hook: download ``task``'s output from ``[remote] url`` when the
    remote has it. True when the output is now here; False (with a warning when something was
    wrong) when the task must compute it."""
    url = remote().url
    if not url:
        return False
    dest = task.output().path
    rel = "/".join([task.dataset, task.STAGE, task.chain_digest(), os.path.basename(dest)])
    try:
        check_rel(rel)
        r = open_remote(url)
        meta = r.checksum(rel)
        if meta is None:
            return False
        r.get_file(rel, dest, sha256=meta["sha256"], size=meta["bytes"],
                   check=lambda p: check_shard(p, dataset=task.dataset, digest=task.chain_digest()))
        _pull_stage_json(r, rel.rsplit("/", 1)[0], os.path.dirname(dest), task.chain_digest())
    except Exception as err:  # a remote that fails never stops a build: compute instead
        logger.warning("remote %s: not using %s (%s: %s); computing it", redact(url), rel, type(err).__name__,
                       redact(err))
        return False
    logger.info("remote %s: pulled %s (%d bytes, sha256 verified)", redact(url), rel, meta["bytes"])
    return True


# -- whole feature sets ------------------------------------------------------------------------------
def _select(recs: dict, build: str | None, where: str) -> dict:
    chosen = {k: v for k, v in recs.items() if build is None or k.startswith(build)}
    if not chosen:
        raise RemoteError(f"no feature set {build or ''!r} in {where}")
    return chosen


def push(store: str, r: Remote, dataset: str, build: str | None = None) -> dict:
    """Upload the shards, stage.json files and build records of ``dataset``'s feature sets.
    A local shard whose sha256 no longer matches its record is refused (run ``avstore verify``)."""
    from features.hashing import sha256_file
    from pipeline.catalog import records

    n = {"files": 0, "bytes": 0, "skipped": 0, "builds": 0}
    for key, rec in _select(records(store, dataset), build, f"{store}/{dataset}/builds").items():
        if "files" not in rec:
            raise RemoteError(f"{store}/{dataset}/builds/{key}.json has no sha256 of its shards; rebuild it")
        for rel, meta in sorted(rec["files"].items()):
            check_rel(rel)
            local = os.path.join(store, rel)
            if sha256_file(local) != meta["sha256"]:
                raise RemoteError(f"{rel}: its sha256 no longer matches the build record; not pushed")
            if (r.checksum(rel) or {}).get("sha256") == meta["sha256"]:
                n["skipped"] += 1
                continue
            stage_json = os.path.join(os.path.dirname(local), "stage.json")
            if os.path.exists(stage_json):
                with open(stage_json, encoding="utf-8") as f:
                    r.put_json(json.load(f), rel.rsplit("/", 1)[0] + "/stage.json")
            r.put_file(local, rel, meta["sha256"])
            n["files"] += 1
            n["bytes"] += meta["bytes"]
        r.put_json(rec, check_rel(f"{dataset}/builds/{key}.json", RECORD_REL))
        n["builds"] += 1
    return n


def remote_records(r: Remote, dataset: str) -> dict[str, dict]:
    """{key: build record} of ``dataset`` on the remote. A record that cannot be read (not JSON,
    too large, not a build record with files, not named ``<16 hex>.json``) is skipped with a
    warning naming it: one bad file never makes every pull fail (issue 19 item 6c)."""
    out = {}
    for rel in sorted(p[len(r.root.rstrip("/")) + 1:] for p in r.fs.glob(r.path(f"{dataset}/builds/*.json"))):
        try:
            key = RECORD_REL.match(check_rel(rel, RECORD_REL)).group(2)
            rec = r.read_json(rel)
            if not (isinstance(rec, dict) and isinstance(rec.get("files"), dict)):
                raise RemoteError(f"{r.url}/{rel}: not a build record with files")
        except RemoteError as err:
            logger.warning("remote %s: skipping %s (%s)", r.url, rel, err)
            continue
        out[key] = rec
    return out


def pull(store: str, r: Remote, dataset: str, build: str | None = None) -> dict:
    """Download ``dataset``'s feature sets (or the one named ``build``) into ``store``, verified."""
    n = {"files": 0, "bytes": 0, "skipped": 0, "builds": 0}
    r.fs.invalidate_cache()
    for key, rec in _select(remote_records(r, dataset), build, f"{r.url}/{dataset}/builds").items():
        files = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(files, dict):
            raise RemoteError(f"{r.url}/{dataset}/builds/{key}.json: not a build record with files")
        local_paths = []
        for rel, meta in sorted(files.items()):
            m = FILE_REL.match(check_rel(rel))
            if m.group(1) != dataset:
                raise RemoteError(f"{r.url}/{dataset}/builds/{key}.json names {rel!r} of another dataset")
            remote_meta = r.checksum(rel)
            same = isinstance(meta, dict) and remote_meta is not None and \
                (remote_meta["sha256"], remote_meta["bytes"]) == (meta.get("sha256"), meta.get("bytes"))
            if not same:
                raise RemoteError(f"{r.url}/{rel}: missing, or its checksum differs from the build record")
            dest = os.path.join(store, *rel.split("/"))
            local_paths.append(dest)
            if os.path.exists(dest):
                n["skipped"] += 1
                continue
            r.get_file(rel, dest, sha256=meta["sha256"], size=meta["bytes"],
                       check=lambda p, m=m: check_shard(p, dataset=dataset, digest=m.group(3)))
            _pull_stage_json(r, rel.rsplit("/", 1)[0], os.path.dirname(dest), m.group(3))
            n["files"] += 1
            n["bytes"] += meta["bytes"]
        rec = dict(rec, shards=local_paths)
        with atomic_path(os.path.join(store, dataset, "builds", f"{key}.json")) as tmp, open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
        n["builds"] += 1
    return n
