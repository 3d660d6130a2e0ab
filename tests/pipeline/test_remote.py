"""Remotes (issue 6): push to a folder and to a real S3-compatible server (moto, on loopback),
then a teammate with their own copy of the corpus builds and downloads instead of computing."""
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys

import pytest

from features.hashing import sha256_file
from pipeline import cli
from pipeline import catalog, remote
from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import build
from tests.pipeline.share_helpers import REL, all_files, config, corpus, fake_shard, folder_remote, record, shard_paths

KEY_ID, SECRET = "AKIAQSHARETEST0001", "s3cr3t/Credential+ForTheTest0000000000000"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    manifest = corpus(tmp / "corpus")
    store = tmp / "store"
    build(store, "--batch-size", "1", dataset="mini", manifest=manifest)
    return store


def teammate_build(tmp_path, url):
    """Another copy of the corpus (new path, new mtimes) built into an empty store with a remote."""
    manifest = corpus(tmp_path / "their_corpus")
    store = tmp_path / "their_store"
    return store, build(store, "--batch-size", "1", "--remote-url", url, dataset="mini", manifest=manifest)


def assert_same_shards(a, b):
    pa, pb = shard_paths(a), shard_paths(b)
    assert [os.path.relpath(p, a) for p in pa] == [os.path.relpath(p, b) for p in pb] and len(pa) == 2
    for x, y in zip(pa, pb):
        assert catalog.same_data(x, y) == []
        assert sha256_file(x) == sha256_file(y)  # the very bytes: downloaded, not rebuilt


def test_directory_remote_push_then_build_downloads_every_shard_and_runs_no_stage(built, tmp_path):
    url = str(tmp_path / "shared")
    assert cli.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0
    _, rec = record(built)
    for rel, meta in rec["files"].items():  # content-addressed: the hash-chain path plus its sha256
        assert sha256_file(os.path.join(url, rel)) == meta["sha256"]
    assert cli.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0  # idempotent
    store, ran = teammate_build(tmp_path, url)
    assert ran == ["BuildShards"]  # no Decode, Faces, ... : the upstream stages never ran
    assert_same_shards(built, store)
    assert catalog.verify(str(store)) == []
    assert not any(".tmp-" in f or "luigi-tmp" in f for f in all_files(store))


def test_a_corrupt_remote_shard_is_named_not_used_and_computed_instead(built, tmp_path, caplog):
    url = str(tmp_path / "shared")
    remote.push(str(built), remote.Remote(url), "mini")
    _, rec = record(built)
    bad = sorted(rec["files"])[0]
    with open(os.path.join(url, bad), "r+b") as f:
        f.seek(5000)
        f.write(b"\x00\x01\x02")
    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        store, ran = teammate_build(tmp_path, url)
    assert f"not using {bad}" in caplog.text and "sha256" in caplog.text
    assert ran.count("Shard") == 1 and "Decode" in ran  # only the corrupt one was computed
    for p in shard_paths(store):
        assert catalog.same_data(p, os.path.join(built, os.path.relpath(p, store))) == []
    assert not any(".tmp-" in f for f in all_files(store))  # the failed download left nothing
    # the explicit pull refuses it with the shard's name, and leaves no file behind
    other = tmp_path / "pulled"
    assert cli.main(["--store", str(other), "pull", "--dataset", "mini", "--remote", url]) == 1
    assert not any(f.endswith(bad.rsplit("/", 1)[1]) or ".tmp-" in f for f in all_files(other))


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API (moto in server mode) on a free loopback port; credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("team-shards")
    yield fs
    server.stop()


def test_s3_push_and_build_pull_with_credentials_only_in_the_environment(built, tmp_path, s3, capsys, caplog):
    url = "s3://team-shards/av-store"
    caplog.set_level(logging.DEBUG)
    assert cli.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0
    _, rec = record(built)
    for rel, meta in rec["files"].items():
        assert s3.info(f"team-shards/av-store/{rel}")["size"] == meta["bytes"]
    store, ran = teammate_build(tmp_path, url)
    assert ran == ["BuildShards"]
    assert_same_shards(built, store)
    other = tmp_path / "pulled"
    assert cli.main(["--store", str(other), "pull", "--dataset", "mini", "--remote", url]) == 0
    assert_same_shards(built, other)
    assert cli.main(["--store", str(other), "catalog", "--json"]) == 0
    # the credentials are nowhere: not in shards, records, stage.json, the remote's objects, logs
    # (at DEBUG, where botocore would print the access key id in the signed headers it sends).
    out = capsys.readouterr().out
    logs = out + caplog.text
    assert "pulled mini/shards/" in caplog.text and "push: 2 file(s)" in out
    for secret in (KEY_ID, SECRET):
        assert secret not in logs
        for where in (built, store, other):
            for rel in all_files(where):
                assert secret.encode() not in open(os.path.join(where, rel), "rb").read(), rel
        for key in s3.find("team-shards"):
            assert secret.encode() not in s3.cat(key), key


# -- issue 19 item 6: sizes, bad records, temporary names ---------------------------------------------
def spy_on_reads(r, monkeypatch):
    """Count the bytes ``r`` reads from its remote .h5 files: {"opened": [...], "read": n}."""
    seen, real_open = {"opened": [], "read": 0}, r.fs.open

    def counting_open(path, mode="rb", **kw):
        f = real_open(path, mode, **kw)
        if not path.endswith(".h5"):
            return f
        seen["opened"].append(path)
        real_read = f.read

        def read(n=-1):
            data = real_read(n)
            seen["read"] += len(data)
            return data
        f.read = read
        return f
    monkeypatch.setattr(r.fs, "open", counting_open)
    return seen


@pytest.mark.parametrize("over", ["max_file_bytes", "free disk"])
def test_a_record_claiming_too_many_bytes_is_refused_before_any_byte_is_read(tmp_path, monkeypatch, over):
    """Issue 19 item 6a: a record claiming 3 GiB made the client stream 3.2 GB before failing."""
    store = tmp_path / "store"
    os.makedirs(store)
    free = shutil.disk_usage(store).free
    claim, limit = (3 << 30, 1 << 20) if over == "max_file_bytes" else (free + (1 << 30), 1 << 60)
    url = folder_remote(tmp_path / "remote", {REL: fake_shard(tmp_path / "s.h5").read_bytes()}, claims={REL: claim})
    r = remote.Remote(url)
    seen = spy_on_reads(r, monkeypatch)
    with config("remote", max_file_bytes=limit), pytest.raises(remote.RemoteError) as err:
        remote.pull(str(store), r, "mini")
    why = "more than [remote] max_file_bytes = 1048576" if over == "max_file_bytes" else "bytes free at"
    assert REL in str(err.value) and f"records {claim} bytes" in str(err.value) and why in str(err.value)
    assert seen == {"opened": [], "read": 0}
    assert not [f for f in all_files(store) if f.endswith(".h5") or ".tmp-" in f]


def test_a_remote_file_longer_than_its_record_is_refused_without_reading_past_the_record(tmp_path, monkeypatch):
    """Issue 19 item 6a: the file is 4 GiB (sparse), its records claim the first 100 kB."""
    head = fake_shard(tmp_path / "s.h5").read_bytes()
    url = folder_remote(tmp_path / "remote", {REL: head})
    os.truncate(os.path.join(url, REL), 4 << 30)
    r = remote.Remote(url)
    seen = spy_on_reads(r, monkeypatch)
    with pytest.raises(remote.RemoteError, match=rf"{REL}: .*{len(head)} bytes"):
        remote.pull(str(tmp_path / "store"), r, "mini")
    assert seen["read"] <= len(head) + 1
    assert not [f for f in all_files(tmp_path / "store") if f.endswith(".h5") or ".tmp-" in f]


@pytest.mark.parametrize("extra", [0, 1, 5 << 20])
def test_the_stream_stops_at_the_recorded_size(extra):
    """Issue 19 item 6a, for a file that grows while it is read: nothing past ``size`` is written,
    at most one byte past it is read."""
    data = os.urandom((9 << 20) + 3)
    src, out, size = io.BytesIO(data + b"x" * extra), io.BytesIO(), len(data)
    if extra:
        with pytest.raises(remote.RemoteError, match=f"longer than its recorded {size} bytes"):
            remote.copy_bounded(src, out, size, what="x.h5")
        assert out.getvalue() == data[:len(out.getvalue())] and src.tell() <= size + 1
    else:
        assert remote.copy_bounded(src, out, size, what="x.h5") == (size, hashlib.sha256(data).hexdigest())
        assert out.getvalue() == data


def test_a_record_that_is_not_json_is_skipped_with_a_warning_and_the_others_pulled(built, tmp_path, caplog):
    """Issue 19 item 6c: one non-JSON record under builds/ made every pull fail."""
    url = tmp_path / "shared"
    remote.push(str(built), remote.Remote(str(url)), "mini")
    bad = {"ffffffffffffffff.json": b"\x80\x04not json", "0000000000000000.json": b"[1, 2]",
           "notes.json": b"{}"}
    for name, data in bad.items():
        (url / "mini" / "builds" / name).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        assert cli.main(["--store", str(tmp_path / "pulled"), "pull", "--dataset", "mini",
                             "--remote", str(url)]) == 0
    for name in bad:
        assert f"skipping mini/builds/{name}" in caplog.text
    assert "not valid JSON" in caplog.text and "not a build record" in caplog.text
    assert_same_shards(built, tmp_path / "pulled")


KILLED_AT_RENAME = """
import os, signal, sys
from pipeline import remote
r = remote.Remote(sys.argv[1])
r.fs.mv = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
r.put_file(sys.argv[2], sys.argv[3], "0" * 64)
"""


def test_a_push_killed_at_the_rename_leaves_only_a_hidden_temporary_removed_by_the_next_push(tmp_path):
    """Issue 19 item 6d: a visible ``shard-0000.h5.tmp-*`` stayed on the folder remote."""
    local, url = fake_shard(tmp_path / "s.h5"), tmp_path / "shared"
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME, str(url), str(local), REL],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    left = all_files(url)
    assert len(left) == 1 and os.path.basename(left[0]).startswith(".shard-0000.h5.tmp-"), left
    remote.Remote(str(url)).put_file(str(local), REL, "0" * 64)  # this host, dead pid: swept
    assert all_files(url) == [REL, REL + ".sha256"]
