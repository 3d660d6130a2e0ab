"""Security (issue 6): nothing unpickled, YAML safe-loaded, no path out of the dataset or store root."""
import csv
import json
import logging
import os
import re

import h5py
import pytest

from pipeline import cli
from pipeline import remote
from pipeline.manifest import ManifestError, get_dataset
from tests.conftest import ROOT, build
from tests.pipeline.share_helpers import REL, all_files, corpus, fake_shard, folder_remote


def _manifest(tmp_path, **fields):
    body = {"root": str(tmp_path / "corpus"), "clips": "clips/*", "labels": "labels.csv",
            "label_set": "[anger, happiness, sadness]", "protocol": "loso", **fields}
    path = tmp_path / "m.yaml"
    path.write_text("datasets:\n  mini:\n" + "".join(f"    {k}: {v}\n" for k, v in body.items()))
    return path


@pytest.mark.parametrize("clip_id", ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", ".hidden", "a\\b"])
def test_clip_id_that_could_leave_the_root_is_rejected(tmp_path, clip_id):
    manifest = corpus(tmp_path / "corpus")
    with open(tmp_path / "corpus" / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow([clip_id, "anger", "s1", ""])
    with pytest.raises(ManifestError, match=r"clip_id .* must be letters, digits.*no path separators"):
        get_dataset(manifest, "mini").list_clips()


@pytest.mark.parametrize("field,value", [("clips", "../*"), ("clips", "/etc/*"), ("labels", "../labels.csv"),
                                         ("labels", "/etc/passwd"), ("clips", "a/../../*")])
def test_manifest_paths_outside_the_root_are_rejected(tmp_path, field, value):
    corpus(tmp_path / "corpus")
    with pytest.raises(ManifestError, match=rf"field '{field}': must be a path inside the root"):
        get_dataset(_manifest(tmp_path, **{field: value}), "mini")


def test_symbolic_link_out_of_the_root_is_rejected_with_its_name(tmp_path):
    manifest = corpus(tmp_path / "corpus")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    os.symlink(outside, tmp_path / "corpus" / "clips" / "s1_anger_01.mp4.lnk.mp4")
    with pytest.raises(ManifestError, match=r"s1_anger_01\.mp4\.lnk\.mp4 leads to .*secret\.mp4, outside the root"):
        get_dataset(manifest, "mini").list_clips()
    os.remove(tmp_path / "corpus" / "clips" / "s1_anger_01.mp4.lnk.mp4")
    os.replace(tmp_path / "corpus" / "labels.csv", tmp_path / "labels.csv")
    os.symlink(tmp_path / "labels.csv", tmp_path / "corpus" / "labels.csv")
    with pytest.raises(ManifestError, match=r"field 'labels'.*outside the root"):
        get_dataset(manifest, "mini").list_clips()


def test_yaml_is_safe_loaded_no_python_object_is_built(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "m.yaml"
    path.write_text(f"datasets: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        get_dataset(path, "mini")
    assert not marker.exists()


@pytest.mark.parametrize("rel", ["../../home/x/.ssh/authorized_keys", "/etc/passwd", "mini/shards/../../x.h5",
                                 "mini/shards/0123456789abcdef/../../../x.h5", "mini/shards/xyz/shard-0000.h5",
                                 "mini/shards/0123456789abcdef/shard-0000.sh", "mini//0123456789abcdef/a.h5"])
def test_remote_names_that_are_not_hash_chain_paths_are_refused(rel):
    with pytest.raises(remote.RemoteError, match="refusing the remote path"):
        remote.check_rel(rel)
    assert remote.check_rel("mini/shards/0123456789abcdef/shard-0000.h5")


def test_pull_refuses_a_record_that_points_out_of_the_store(tmp_path):
    rem = tmp_path / "remote"
    evil = {"files": {"mini/shards/0123456789abcdef/../../../../evil.h5": {"sha256": "0" * 64, "bytes": 1}}}
    (rem / "mini" / "builds").mkdir(parents=True)
    (rem / "mini" / "builds" / "0123456789abcdef.json").write_text(json.dumps(evil))
    with pytest.raises(remote.RemoteError, match="refusing the remote path"):
        remote.pull(str(tmp_path / "store"), remote.Remote(str(rem)), "mini")
    assert not (tmp_path / "evil.h5").exists() and not (tmp_path / "store").exists()


def test_a_pickle_in_place_of_a_record_is_an_error_not_code(tmp_path, caplog):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    rem = tmp_path / "remote"
    (rem / "mini" / "builds").mkdir(parents=True)
    (rem / "mini" / "builds" / "0123456789abcdef.json").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(remote.RemoteError, match="no feature set"):  # the record is skipped (issue 19 item 6c)
        remote.pull(str(tmp_path / "store"), remote.Remote(str(rem)), "mini")
    assert "skipping mini/builds/0123456789abcdef.json" in caplog.text and "not valid JSON" in caplog.text
    assert not (tmp_path / "pwned").exists()


def test_a_url_with_credentials_is_refused():
    with pytest.raises(remote.RemoteError, match="carries credentials"):
        remote.Remote("s3://AKIAXXXX:secret@bucket/prefix")


# -- issue 19 item 6b: a shard is a closed world ----------------------------------------------------
def _external_storage(f):
    f.create_dataset("clips/leak", shape=(64,), dtype="u1", external=[("/etc/passwd", 0, 64)])


def _external_link(f):
    f["clips/leak"] = h5py.ExternalLink("/etc/passwd.h5", "/")


def _virtual_dataset(f):
    layout = h5py.VirtualLayout(shape=(16,), dtype="i4")
    layout[:] = h5py.VirtualSource("/tmp/elsewhere.h5", "x", shape=(16,))
    f.create_virtual_dataset("clips/leak", layout)


@pytest.mark.parametrize("poison", [_external_storage, _external_link, _virtual_dataset])
def test_a_pulled_shard_that_points_outside_itself_is_refused_and_not_published(tmp_path, poison):
    """Issue 19 item 6b: right sha256, right dataset and digest, but a dataset reads another file."""
    data = fake_shard(tmp_path / "poisoned.h5", extra=poison).read_bytes()
    url = folder_remote(tmp_path / "remote", {REL: data})
    with pytest.raises(remote.RemoteError, match=rf"{REL}: refusing the shard") as err:
        remote.pull(str(tmp_path / "store"), remote.Remote(url), "mini")
    assert "clips/leak" in str(err.value)
    assert not [f for f in all_files(tmp_path / "store") if f.endswith(".h5") or ".tmp-" in f]
    clean = fake_shard(tmp_path / "clean.h5").read_bytes()  # the same remote with a closed shard: pulled
    assert remote.pull(str(tmp_path / "store2"), remote.Remote(folder_remote(tmp_path / "r2", {REL: clean})),
                       "mini")["files"] == 1


# -- issue 19 item 7: secrets in URLs ------------------------------------------------------------------
@pytest.mark.parametrize("url,shown", [
    ("s3://AKIAKEY:SeCrEt@bucket/p", "s3://***@bucket/p"),
    ("s3://AKIAKEY:abc/SeCrEt+x@bucket/p", "s3://***@bucket/p"),  # AWS secrets may hold '/'
    ("s3://AKIAKEY@bucket/p", "s3://***@bucket/p"),
    ("https://user:pw@minio.lab:9000/b", "https://***@minio.lab:9000/b"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("/mnt/team/av-store", "/mnt/team/av-store"),
    ("remote s3://K:SeCrEt@b/p: not using x (err)", "remote s3://***@b/p: not using x (err)"),
])
def test_redact_hides_the_userinfo_of_a_url(url, shown):
    assert remote.redact(url) == shown


CREDENTIAL_URL = "s3://AKIAQLEAKTEST00001:LeAkEd/Secret+Key0000@bucket/p"


def test_a_url_with_credentials_is_never_printed(tmp_path, caplog, capsys):
    """Issue 19 item 7: the URL was refused, but the warning printed it whole, secret included."""
    with pytest.raises(remote.RemoteError) as err:
        remote.Remote(CREDENTIAL_URL)
    assert "AKIAQ" not in str(err.value) and "LeAkEd" not in str(err.value)
    with caplog.at_level(logging.DEBUG):
        manifest = corpus(tmp_path / "corpus", clips=("s1_anger_01",))
        build(tmp_path / "store", "--remote-url", CREDENTIAL_URL, dataset="mini", manifest=manifest)
        assert cli.main(["--store", str(tmp_path / "store"), "pull", "--dataset", "mini",
                             "--remote", CREDENTIAL_URL]) == 1
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err
    assert "remote s3://***@bucket/p: not using mini/shards/" in caplog.text and "carries credentials" in out.err
    for secret in ("AKIAQLEAKTEST00001", "LeAkEd", "Secret+Key"):
        assert secret not in text
        for rel in all_files(tmp_path / "store"):
            assert secret.encode() not in open(tmp_path / "store" / rel, "rb").read(), rel


def test_no_module_of_the_store_can_unpickle():
    """Shards, records and remotes are read with h5py (numeric / UTF-8 datasets, JSON attributes)
    and json: no pickle, numpy object loading or yaml.load in features/ or pipeline/; weight files
    only through torch's restricted loader (``torch.load(..., weights_only=True)``: tensors only)."""
    forbidden = re.compile(r"\bimport pickle\b|\bpickle\.load|allow_pickle\s*=\s*True|yaml\.load\(|"
                           r"yaml\.unsafe_load|\bdill\b|\bjoblib\.load")
    for package in ("features", "pipeline", "models"):
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith(".py"):
                text = open(os.path.join(ROOT, package, name), encoding="utf-8").read()
                assert not forbidden.search(text), f"{package}/{name}: {forbidden.search(text).group(0)}"
                for line in text.splitlines():  # each call on one line, as written here
                    assert "torch.load(" not in line or "weights_only=True" in line, f"{package}/{name}: {line}"


def test_shard_holds_no_opaque_or_object_data(tmp_path):
    from tests.pipeline.conftest import build
    from tests.pipeline.share_helpers import shard_paths

    manifest = corpus(tmp_path / "corpus", clips=("s1_anger_01",))
    build(tmp_path / "store", dataset="mini", manifest=manifest)
    kinds = set()
    with h5py.File(shard_paths(tmp_path / "store")[0], "r") as f:
        f.visititems(lambda n, o: kinds.add(o.dtype.kind if o.dtype.kind != "O" else str(h5py.check_string_dtype(o.dtype)))
                     if isinstance(o, h5py.Dataset) else None)
        attrs = dict(f.attrs)
    assert int(attrs.pop("format_version")) >= 1
    for key, value in attrs.items():  # every other attribute is a JSON string
        assert isinstance(value, str), key
        json.loads(value)
    assert kinds <= {"f", "i", "u", "b", "string_info(encoding='utf-8', length=None)"}, kinds
