"""Security (issue 6): nothing unpickled, YAML safe-loaded, no path out of the dataset or store root."""
import csv
import json
import os
import re

import h5py
import pytest

from pipeline import remote
from pipeline.manifest import ManifestError, get_dataset
from tests.conftest import ROOT
from tests.pipeline.share_helpers import corpus


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


def test_a_pickle_in_place_of_a_record_is_an_error_not_code(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    rem = tmp_path / "remote"
    (rem / "mini" / "builds").mkdir(parents=True)
    (rem / "mini" / "builds" / "0123456789abcdef.json").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(remote.RemoteError, match="not valid JSON"):
        remote.pull(str(tmp_path / "store"), remote.Remote(str(rem)), "mini")
    assert not (tmp_path / "pwned").exists()


def test_a_url_with_credentials_is_refused():
    with pytest.raises(remote.RemoteError, match="carries credentials"):
        remote.Remote("s3://AKIAXXXX:secret@bucket/prefix")


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
