"""Remotes (issue 6): push to a folder and to a real S3-compatible server (moto, on loopback),
then a teammate with their own copy of the corpus builds and downloads instead of computing."""
import logging
import os

import pytest

from pipeline import catalog, remote
from tests.pipeline.conftest import build
from tests.pipeline.share_helpers import all_files, corpus, record, shard_paths

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
        assert catalog.sha256_file(x) == catalog.sha256_file(y)  # the very bytes: downloaded, not rebuilt


def test_directory_remote_push_then_build_downloads_every_shard_and_runs_no_stage(built, tmp_path):
    url = str(tmp_path / "shared")
    assert catalog.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0
    _, rec = record(built)
    for rel, meta in rec["files"].items():  # content-addressed: the hash-chain path plus its sha256
        assert catalog.sha256_file(os.path.join(url, rel)) == meta["sha256"]
    assert catalog.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0  # idempotent
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
    assert catalog.main(["--store", str(other), "pull", "--dataset", "mini", "--remote", url]) == 1
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
    assert catalog.main(["--store", str(built), "push", "--dataset", "mini", "--remote", url]) == 0
    _, rec = record(built)
    for rel, meta in rec["files"].items():
        assert s3.info(f"team-shards/av-store/{rel}")["size"] == meta["bytes"]
    store, ran = teammate_build(tmp_path, url)
    assert ran == ["BuildShards"]
    assert_same_shards(built, store)
    other = tmp_path / "pulled"
    assert catalog.main(["--store", str(other), "pull", "--dataset", "mini", "--remote", url]) == 0
    assert_same_shards(built, other)
    assert catalog.main(["--store", str(other), "catalog", "--json"]) == 0
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
