"""Issue 19: a rebuild repairs damaged shards and stage outputs (item 4), a full disk ends the build
with exit 30 and a message naming the file (item 2), dead processes' temporary files are swept
(item 9). Every test works on a copy of the demo store (``store_copy``)."""
import errno
import glob
import json
import os
import shutil
import socket
import subprocess

import luigi.retcodes
import pytest

from features.hashing import sha256_file
from pipeline import cli
from pipeline import base, catalog, files
from pipeline.base import DamagedInput
from pipeline.shards import Shard
from tests.conftest import ROOT
from tests.pipeline.conftest import build


def shards(store):
    return sorted(glob.glob(os.path.join(store, "demo", "shards", "*", "shard-*.h5")))


def outputs(store, stage):
    return sorted(glob.glob(os.path.join(store, "demo", stage, "*", "batch-*.h5")))


def flip_byte(path, at=None):
    """Change one byte in the middle of the file (its size stays)."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2 if at is None else at)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))


def damage(path, how, other):
    if how == "flip":
        flip_byte(path)
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "delete":
        os.remove(path)
    elif how == "replace":  # another shard copied over it
        shutil.copy(other, path)


def same_as_reference(store, reference):
    """Every shard holds the data of the uninterrupted build's (times and builder aside)."""
    got, want = shards(store), shards(reference)
    assert [os.path.relpath(p, store) for p in got] == [os.path.relpath(p, reference) for p in want]
    for p, q in zip(got, want):
        assert catalog.same_data(p, q) == [], p


def build_fails(store, *args):
    """Run the build the way the ``luigi`` command does; returns its exit status."""
    with pytest.raises(SystemExit) as exit_:
        luigi.retcodes.run_with_retcodes(["BuildShards", "--dataset", "demo", "--store", str(store), "--batch-size",
                                          "8", "--local-scheduler", "--no-lock", "--workers", "1", *args])
    return exit_.value.code


# -- item 4: rebuild repairs ---------------------------------------------------------------------
def test_every_stage_output_has_its_sha256_and_size_in_stage_json(demo_store):
    found = glob.glob(os.path.join(demo_store, "demo", "*", "*", "*.h5"))
    assert len(found) > 30
    for path in found:
        with open(os.path.join(os.path.dirname(path), "stage.json")) as f:
            meta = json.load(f)["files"][os.path.basename(path)]
        assert meta["sha256"] == sha256_file(path) and meta["bytes"] == os.path.getsize(path)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "replace"])
def test_a_damaged_shard_is_built_again_and_nothing_else(store_copy, demo_store, how):
    victim, other = shards(store_copy)[1], shards(store_copy)[0]
    damage(victim, how, other)
    assert catalog.verify(str(store_copy)) != []
    assert build(store_copy) == ["BuildShards", "Shard"]
    assert catalog.verify(str(store_copy)) == []
    same_as_reference(store_copy, demo_store)
    assert build(store_copy) == []


def test_a_touched_shard_is_checked_by_its_sha256_not_rebuilt_and_its_new_mtime_recorded(store_copy):
    """As after ``avstore pull``: the record holds another machine's mtimes, the bytes are the same."""
    for path in shards(store_copy):
        os.utime(path, ns=(10**18, 10**18))
    assert build(store_copy) == []
    (record,) = glob.glob(os.path.join(store_copy, "demo", "builds", "*.json"))
    files = json.load(open(record))["files"]
    assert {meta["mtime_ns"] for meta in files.values()} == {10**18}


def test_a_damaged_stage_output_is_computed_again_before_its_shard(store_copy, demo_store):
    segment = outputs(store_copy, "segment")[0]
    flip_byte(segment)
    for shard in shards(store_copy):  # the shard that holds the batch, found by its Segment digest
        with open(os.path.join(os.path.dirname(shard), "stage.json")) as f:
            if os.path.basename(os.path.dirname(segment)) in json.dumps(json.load(f)["chain"]):
                os.remove(shard)
    assert build(store_copy) == ["BuildShards", "Segment", "Shard"]
    assert catalog.verify(str(store_copy)) == []
    same_as_reference(store_copy, demo_store)


@pytest.mark.parametrize("stage", ["logmel", "segment"])
def test_a_damaged_stage_output_under_an_intact_shard_is_computed_again(store_copy, demo_store, stage):
    """verify names it; the next build recomputes it (and reassembles its shard, equal as before)."""
    path = outputs(store_copy, stage)[0]
    flip_byte(path)
    assert any(path in rel or rel in path for rel, _ in catalog.verify(str(store_copy)))
    assert build(store_copy) == sorted(["BuildShards", "Shard", {"logmel": "LogMel", "segment": "Segment"}[stage]])
    assert catalog.verify(str(store_copy)) == []
    same_as_reference(store_copy, demo_store)
    assert build(store_copy) == []   # and then nothing to do


def test_a_shard_never_copies_an_input_whose_sha256_changed(store_copy, demo_store):
    """A byte changed with the mtime put back: complete() trusts size + mtime, Shard.run does not."""
    logmel = outputs(store_copy, "logmel")[0]
    st = os.stat(logmel)
    flip_byte(logmel)
    os.utime(logmel, ns=(st.st_atime_ns, st.st_mtime_ns))
    task = next(t for t in (Shard(dataset="demo", batch=k, batch_size=8, store=str(store_copy)) for k in range(3))
                if t.requires()["logmel"].output().path == logmel)
    with pytest.raises(DamagedInput, match=f"{logmel}: sha256 .* does not match .* not copied into"):
        task.check_inputs()
    assert not os.path.exists(logmel)  # removed, so that the next build computes it again
    os.remove(task.output().path)
    assert build(store_copy) == ["BuildShards", "LogMel", "Shard"]
    assert catalog.verify(str(store_copy)) == []
    same_as_reference(store_copy, demo_store)


def test_other_build_records_naming_a_rebuilt_shard_get_its_new_sha256(store_copy):
    (record,) = glob.glob(os.path.join(store_copy, "demo", "builds", "*.json"))
    shutil.copy(record, os.path.join(os.path.dirname(record), "0123456789abcdef.json"))  # an older build
    os.remove(shards(store_copy)[0])
    assert build(store_copy) == ["BuildShards", "Shard"]
    assert catalog.verify(str(store_copy)) == []


# -- item 4: avstore verify --------------------------------------------------------------------
def test_verify_checks_stage_outputs_against_stage_json(store_copy, capsys):
    victim = outputs(store_copy, "vad")[1]
    flip_byte(victim)
    rel = os.path.relpath(victim, store_copy)
    problems = catalog.verify(str(store_copy))
    assert [p for p, _ in problems] == [rel] and "sha256" in problems[0][1]
    assert cli.main(["--store", str(store_copy), "verify"]) == 1
    assert f"FAILED {rel}: sha256" in capsys.readouterr().out


def test_verify_names_shards_without_a_build_record(store_copy):
    src = shards(store_copy)[0]
    stray = os.path.join(store_copy, "demo", "shards", "00000000deadbeef", os.path.basename(src))
    os.makedirs(os.path.dirname(stray))
    shutil.copy(src, stray)
    why = "no build record names this shard (an unfinished build?): run BuildShards to record it, or delete it"
    assert catalog.verify(str(store_copy)) == [(os.path.relpath(stray, store_copy), why)]


def test_verify_is_not_clean_when_the_build_records_are_missing(store_copy, capsys):
    for record in glob.glob(os.path.join(store_copy, "demo", "builds", "*.json")):
        os.remove(record)
    problems = catalog.verify(str(store_copy))
    assert problems == [("demo/builds", "no build record for the 3 shard(s) of demo: "
                                        "run BuildShards --dataset demo to record them")]
    assert cli.main(["--store", str(store_copy), "verify"]) == 1
    assert "0 problem(s)" not in capsys.readouterr().out


# -- item 2: disk full -------------------------------------------------------------------------
def test_a_full_disk_fails_the_build_with_exit_30_naming_the_file_and_resume_works(
        store_copy, demo_store, monkeypatch, caplog):
    for path in shards(store_copy) + glob.glob(os.path.join(store_copy, "demo", "builds", "*.json")):
        os.remove(path)
    real = shutil.disk_usage

    def full_for_shards(path):  # the disk fills when the shards are written
        usage = real(path)
        return usage._replace(free=100_000) if f"{os.sep}shards{os.sep}" in f"{path}{os.sep}" else usage

    monkeypatch.setattr(base.shutil, "disk_usage", full_for_shards)
    assert build_fails(store_copy) == 30  # [retcode] task_failed
    assert f"[Errno {errno.ENOSPC}] no space left on device for {store_copy}/demo/shards/" in caplog.text
    assert "MiB free" in caplog.text and "run the build again" in caplog.text
    left = [f for _, _, fs in os.walk(os.path.join(store_copy, "demo", "shards")) for f in fs if f != "stage.json"]
    assert left == []  # nothing published, no temporary file left
    monkeypatch.setattr(base.shutil, "disk_usage", real)
    assert build(store_copy) == ["BuildShards"] + ["Shard"] * 3
    same_as_reference(store_copy, demo_store)


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("Can't close dataset (file write failed: errno = 28, "
                                              "error message = 'No space left on device')")])
def test_enospc_met_while_writing_names_the_file(err):
    with pytest.raises(OSError, match="no space left on device for /s/x.h5 .*run the build again") as caught:
        with base.enospc_named("/s/x.h5"):
            raise err
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(ValueError):  # anything else passes unchanged
        with base.enospc_named("/s/x.h5"):
            raise ValueError("other")


# -- item 9: temporary files of dead processes -------------------------------------------------
def test_a_build_sweeps_dead_processes_temporary_files_over_the_store(store_copy):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host, shard = socket.gethostname(), shards(store_copy)[0]
    decode = outputs(store_copy, "decode")[0]
    linked = os.path.join(os.path.dirname(shard), f".{os.path.basename(shard)}.tmp-{host}-{dead.pid}-0badf00d")
    os.link(shard, linked)  # killed between os.link() and os.remove() in publish()
    stale = os.path.join(os.path.dirname(decode), f".stage.json.tmp-{host}-{dead.pid}-12345678")
    alive = os.path.join(os.path.dirname(decode), f".{os.path.basename(decode)}.tmp-{host}-{os.getpid()}-0badf00d")
    other = os.path.join(os.path.dirname(decode), f".{os.path.basename(decode)}.tmp-otherhost-1-0badf00d")
    for path in (stale, alive, other):
        open(path, "w").write("half")
    assert build(store_copy) == []  # nothing to build: the sweep runs all the same
    assert not os.path.exists(linked) and not os.path.exists(stale)
    assert os.path.exists(alive) and os.path.exists(other) and os.path.exists(shard)


def test_sweep_looks_only_at_temporary_names(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    keep = [tmp_path / "a" / "shard-0000.h5", tmp_path / "a" / "b" / ".hidden", tmp_path / "a" / "b" / "x.tmp-1"]
    for p in keep:
        p.write_text("x")
    assert files.sweep_stale_temps(str(tmp_path)) == []
    assert all(p.exists() for p in keep)


def test_the_cli_rebuilds_a_truncated_shard_with_exit_0(store_copy):
    victim = shards(store_copy)[2]
    damage(victim, "truncate", None)
    out = subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "demo", "--store",
                          str(store_copy), "--batch-size", "8", "--local-scheduler"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BuildShards demo: 18 clips ok" in out.stdout
    assert f"{victim}: size" in out.stderr
    assert catalog.verify(str(store_copy)) == []
