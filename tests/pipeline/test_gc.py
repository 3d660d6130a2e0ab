"""Issue 20 item 3: ``avstore gc`` on a store holding three configurations of one corpus (three clips,
audio only, one clip per batch; ``--Segment-hop-frames`` 34, 30, 26): what no kept build references
goes, shared upstream stages stay, a dry run removes nothing, dropped intermediates make a rebuild
run nothing, and a running build (its lock, or a live temporary file) makes gc refuse."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import luigi
import pytest

from pipeline import catalog, cli
from pipeline.files import TMP_MARK
from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import build, make_corpus

CLIPS = ["s1_anger_01", "s1_anger_02", "s2_anger_02"]  # crc32 puts them in batches 0, 1 and 2 of 3
HOPS = ("34", "30", "26")
UPSTREAM = ("decode", "vad", "prosody", "logmel", "waveform")  # shared by the three configurations


def build_mini(store, manifest, hop):
    luigi.task_register.Register.clear_instance_cache()  # a task caches its chain: one store, several configs
    return build(store, "--batch-size", "1", "--video", "false", "--Segment-hop-frames", hop,
                 dataset="mini", manifest=manifest)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """The store with the three builds, oldest first; copy it before changing it."""
    tmp = tmp_path_factory.mktemp("gc")
    manifest = make_corpus(tmp / "corpus", good=CLIPS, bad=False)
    store = tmp / "store"
    keys = []
    for hop in HOPS:
        build_mini(store, manifest, hop)
        keys.append(newest_key(store, keys))
    return store, manifest, keys


def newest_key(store, known):
    (key,) = [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(store, "mini", "builds", "*.json"))
              if os.path.basename(p)[:-5] not in known]
    return key


@pytest.fixture
def gstore(three, tmp_path):
    store, manifest, keys = three
    dst = tmp_path / "store"
    shutil.copytree(store, dst)
    return dst, manifest, keys


def files(store):
    return sorted(os.path.relpath(os.path.join(d, f), store).replace(os.sep, "/")
                  for d, _, fs in os.walk(store) for f in fs)


def record(store, key):
    with open(os.path.join(store, "mini", "builds", f"{key}.json")) as f:
        return json.load(f)


def avstore(store, *args, capsys):
    rc = cli.main(["--store", str(store), "gc", "--dataset", "mini", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def listed(out):
    """The paths a gc run printed (its removal list)."""
    return [line.split()[0] for line in out.splitlines() if line.startswith("  mini/")]


def test_records_name_every_stage_output_their_shards_were_built_from(three):
    store, _, keys = three
    on_disk = set(catalog.stage_outputs(str(store), "mini"))
    for key in keys:
        rec = record(store, key)
        outs = rec["stage_outputs"]
        assert {o.split("/")[1] for o in outs} == set(UPSTREAM) | {"segment"}
        assert len(outs) == 6 * 3 and set(outs) <= on_disk  # six stages, three batches
        assert not set(outs) & set(rec["files"])  # shards are in "files"
    shared = set.intersection(*(set(record(store, k)["stage_outputs"]) for k in keys))
    assert {o.split("/")[1] for o in shared} == set(UPSTREAM)


def test_keep_newest_removes_the_other_builds_unique_files_and_a_dry_run_nothing(gstore, capsys):
    store, manifest, keys = gstore
    before = files(store)
    sizes = {rel: os.path.getsize(os.path.join(store, rel)) for rel in before}
    recs = {k: record(store, k) for k in keys}
    rc, dry, _ = avstore(store, "--keep-newest", "1", "--dry-run", capsys=capsys)
    assert rc == 0 and files(store) == before  # nothing removed
    rc, out, _ = avstore(store, "--keep-newest", "1", capsys=capsys)
    assert rc == 0 and listed(out) == listed(dry) and listed(out)
    gone = set(before) - set(files(store))
    assert gone == set(listed(out))
    unique = {f"mini/builds/{k}.json" for k in keys[:2]}
    for rec in (recs[k] for k in keys[:2]):
        for rel in rec["files"]:
            unique |= {rel, rel.rsplit("/", 1)[0] + "/stage.json"}
        for rel in rec["stage_outputs"]:
            if rel.split("/")[1] == "segment":
                unique |= {rel, rel.rsplit("/", 1)[0] + "/stage.json"}
    assert gone == unique  # the other two builds' records, shards, segmentations: nothing else
    kept = record(store, keys[2])
    assert set(kept["files"]) | set(kept["stage_outputs"]) <= set(files(store))
    shared = {rel for k in keys[:2] for rel in recs[k]["stage_outputs"] if rel.split("/")[1] in UPSTREAM}
    assert len(shared) == 5 * 3 and shared <= set(files(store))  # the other builds' upstream stages stay
    freed = sum(sizes[rel] for rel in gone)
    assert f"removed {len(gone)} file(s), {freed:,} bytes" in out
    assert f"would remove {len(gone)} file(s), {freed:,} bytes" in dry
    assert catalog.verify(str(store), "mini") == []
    assert build_mini(store, manifest, HOPS[2]) == []  # the kept build is whole


def test_drop_intermediates_then_a_rebuild_runs_nothing_and_another_hop_recomputes_upstream(gstore, capsys):
    store, manifest, keys = gstore
    rc, out, _ = avstore(store, "--keep-newest", "1", "--drop-intermediates", capsys=capsys)
    assert rc == 0
    rec = record(store, keys[2])
    assert rec["intermediates_dropped"]["by"].startswith("avstore gc")
    left = files(store)
    assert left == sorted([f"mini/builds/{keys[2]}.json"] + list(rec["files"])
                          + [rel.rsplit("/", 1)[0] + "/stage.json" for rel in rec["files"]])
    assert catalog.verify(str(store), "mini") == []
    assert build_mini(store, manifest, HOPS[2]) == []  # runs no task: the shards are self-contained
    assert files(store) == left
    # a segmentation that gc removed: the dropped upstream stages are computed again (the trade-off)
    ran = build_mini(store, manifest, "30")
    assert ran == sorted(["BuildShards"] + [t for t in ("Decode", "LogMel", "Prosody", "Segment", "Shard", "VAD",
                                                         "Waveform") for _ in range(3)])
    assert build_mini(store, manifest, HOPS[2]) == []  # and the kept build still runs nothing


def test_a_damaged_shard_keeps_its_builds_intermediates(gstore, capsys):
    store, _, keys = gstore
    shard = sorted(record(store, keys[2])["files"])[0]
    with open(os.path.join(store, shard), "r+b") as f:
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))
    rc, out, _ = avstore(store, "--keep-newest", "1", "--drop-intermediates", capsys=capsys)
    assert rc == 0 and f"its stage outputs are kept: {shard}: sha256" in out
    assert set(record(store, keys[2])["stage_outputs"]) <= set(files(store))
    assert "intermediates_dropped" not in record(store, keys[2])


def test_an_old_record_without_stage_outputs_keeps_every_stage_output(gstore, capsys):
    store, manifest, keys = gstore
    path = os.path.join(store, "mini", "builds", f"{keys[2]}.json")
    rec = record(store, keys[2])
    del rec["stage_outputs"]
    json.dump(rec, open(path, "w"), indent=1)
    stages = [rel for rel in files(store) if rel.split("/")[1] not in ("builds", "shards")]
    rc, out, _ = avstore(store, "--keep-newest", "1", "--drop-intermediates", capsys=capsys)
    assert rc == 0 and "does not list its stage outputs" in out and "every stage output of mini is kept" in out
    assert set(stages) <= set(files(store))  # none went, not even the other builds' segmentations
    assert not [rel for rel in files(store) if rel.split("/")[1] == "shards" and rel.endswith(".h5")
                and rel not in rec["files"]]  # the other builds' shards and records did
    assert build_mini(store, manifest, HOPS[2]) == []  # runs no task, and adds the list to the record
    assert record(store, keys[2])["stage_outputs"]


def test_a_live_temporary_file_makes_gc_refuse_and_a_dead_ones_is_removed(gstore, capsys):
    store, _, keys = gstore
    folder = os.path.dirname(os.path.join(store, record(store, keys[0])["stage_outputs"][0]))
    live = os.path.join(folder, f".batch-0000.h5{TMP_MARK}{socket.gethostname()}-{os.getpid()}-abcd1234")
    open(live, "wb").write(b"half written")
    before = files(store)
    for args in ([], ["--dry-run"], ["--keep-newest", "1"]):
        rc, out, err = avstore(store, *args, capsys=capsys)
        assert rc == 1 and out == "" and f"is being written by process {os.getpid()} of this machine" in err
        assert len(err.strip().splitlines()) == 1
        assert files(store) == before
    other = live.replace(socket.gethostname(), "elsewhere")
    os.rename(live, other)
    before = files(store)
    rc, _, err = avstore(store, capsys=capsys)
    assert rc == 1 and "is a temporary file of elsewhere" in err and files(store) == before
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.rename(other, live.replace(str(os.getpid()), dead.stdout.strip()))
    rc, out, _ = avstore(store, capsys=capsys)  # every build kept: only the dead process's file goes
    assert rc == 0 and listed(out) == [os.path.relpath(live.replace(str(os.getpid()), dead.stdout.strip()), store)]


HOLDER = ("import sys, time\nfrom pipeline.files import hold_build_lock\nhold_build_lock(sys.argv[1], 'mini')\n"
          "print('held', flush=True)\ntime.sleep(60)\n")


def test_a_running_build_makes_gc_refuse(gstore, capsys):
    store, _, _ = gstore
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files(store)
        rc, out, err = avstore(store, "--keep-newest", "1", capsys=capsys)
        assert rc == 1 and "a build of mini is running on this machine" in err and files(store) == before
    finally:
        holder.kill()
        holder.wait()
    rc, out, _ = avstore(store, "--keep-newest", "1", capsys=capsys)  # the kernel released a killed build's lock
    assert rc == 0 and listed(out)


GC_DURING = []  # (rc, err) of a gc run while a Shard task of a build runs in this process


@luigi.Task.event_handler(luigi.Event.START)
def _gc_while_building(task):
    if task.task_family == "Shard" and GC_DURING == [None]:
        rc = cli.main(["--store", str(task.store), "gc", "--dataset", "mini", "--keep-newest", "1"])
        GC_DURING[:] = [rc]


def test_buildshards_holds_the_lock_until_the_build_ends(gstore, capsys):
    store, manifest, _ = gstore
    GC_DURING[:] = [None]
    try:
        assert "Shard" in build_mini(store, manifest, "22")  # a fourth configuration
    finally:
        rc, GC_DURING[:] = GC_DURING[0], []
    assert rc == 1 and "a build of mini is running on this machine" in capsys.readouterr().err
    rc, out, _ = avstore(store, "--keep-newest", "1", capsys=capsys)  # the build has ended: gc runs
    assert rc == 0 and len(catalog.records(str(store), "mini")) == 1


@pytest.mark.parametrize("args, error", [
    (["--keep-newest", "0"], "--keep-newest must be at least 1"),
    (["--keep-builds", "ffff"], "0 builds of mini match 'ffff'"),
])
def test_bad_arguments_are_one_line_errors(gstore, capsys, args, error):
    store, _, _ = gstore
    before = files(store)
    rc, out, err = avstore(store, *args, capsys=capsys)
    assert rc == 1 and error in err and len(err.strip().splitlines()) == 1 and files(store) == before


def test_keep_builds_keeps_the_named_builds(gstore, capsys):
    store, manifest, keys = gstore
    rc, out, _ = avstore(store, "--keep-builds", keys[0][:6], keys[1], capsys=capsys)
    assert rc == 0 and sorted(catalog.records(str(store), "mini")) == sorted(keys[:2])
    assert build_mini(store, manifest, HOPS[0]) == [] and build_mini(store, manifest, HOPS[1]) == []
