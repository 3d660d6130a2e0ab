"""Many builds at once (issue 6): two builds into one store without luigid, and two worker
processes sharing a luigid on loopback (each batch computed exactly once)."""
import collections
import os
import socket
import subprocess
import time

import luigi

from pipeline import catalog
from pipeline.files import atomic_path
from tests.pipeline.conftest import build, running_luigid
from tests.pipeline.share_helpers import all_files, corpus, popen_luigi, record, shard_paths

CLIPS = ("s1_anger_01", "s2_sadness_01", "s3_happiness_01")


def reference(tmp_path, manifest):
    store = tmp_path / "reference"
    build(store, "--batch-size", "1", dataset="mini", manifest=manifest)
    return store


def assert_like_reference(store, ref):
    """Same shard paths, same data (timestamps and builder aside), record sha256 verified, no temp."""
    got, want = shard_paths(store), shard_paths(ref)
    assert [os.path.relpath(p, store) for p in got] == [os.path.relpath(p, ref) for p in want] and len(got) == 3
    for p, q in zip(got, want):
        assert catalog.same_data(p, q) == []
    assert catalog.verify(str(store)) == []
    assert record(store)[1]["files"].keys() == record(ref)[1]["files"].keys()
    assert not [f for f in all_files(store) if ".tmp-" in f or "luigi-tmp" in f]


def test_two_builds_into_one_store_at_once_without_luigid(tmp_path):
    manifest = corpus(tmp_path / "corpus", CLIPS)
    store = tmp_path / "store"
    procs = [popen_luigi(manifest, store, "--local-scheduler", "--no-lock") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "BuildShards mini: 3 clips ok, 0 failed" in out
    assert_like_reference(store, reference(tmp_path, manifest))


def test_publish_keeps_the_first_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "d" / "shard-0000.h5")
    with atomic_path(path) as tmp:
        open(tmp, "w").write("first")
        assert not os.path.exists(path) and os.path.basename(tmp).startswith(".shard-0000.h5.tmp-")
    with atomic_path(path) as tmp:  # a concurrent build that finished second
        open(tmp, "w").write("second")
    assert open(path).read() == "first" and os.listdir(tmp_path / "d") == ["shard-0000.h5"]
    try:
        with atomic_path(str(tmp_path / "d" / "shard-0001.h5")) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed half-way")
    except RuntimeError:
        pass
    assert os.listdir(tmp_path / "d") == ["shard-0000.h5"]


def test_luigid_with_two_worker_processes_computes_every_batch_once(tmp_path):
    manifest = corpus(tmp_path / "corpus", CLIPS)
    store, log = tmp_path / "store", tmp_path / "started.log"
    with running_luigid(tmp_path / "luigid") as port:
        # --worker-keep-alive: a worker waits for the tasks the other one runs instead of leaving;
        args = ("--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--workers", "1",
                "--worker-keep-alive", "--no-lock")  # --no-lock: two processes on one machine
        procs = [popen_luigi(manifest, store, *args, log=log) for _ in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
    started = [line.split(" ") for line in log.read_text().splitlines()]  # pid, family, task id
    runs = collections.Counter(task for _, _, task in started)
    assert max(runs.values()) == 1, [t for t, n in runs.items() if n > 1]
    families = collections.Counter(family for _, family, _ in started)
    # 3 batches x (Decode VAD Prosody LogMel Segment Faces Align FaceDescriptor Waveform Shard)
    # + LandmarkPCA + BuildShards
    assert families == {**{f: 3 for f in ("Decode", "VAD", "Prosody", "LogMel", "Segment", "Faces", "Align",
                                          "FaceDescriptor", "Waveform", "Shard")}, "LandmarkPCA": 1, "BuildShards": 1}
    assert len({pid for pid, _, _ in started}) == 2  # both processes took work
    assert_like_reference(store, reference(tmp_path, manifest))


class GpuProbe(luigi.Task):
    """A stand-in for a GPU stage: declares one unit of the ``gpu`` resource."""

    n = luigi.IntParameter()
    log = luigi.Parameter()
    resources = {"gpu": 1}

    def output(self):
        return luigi.LocalTarget(f"{self.log}.{self.n}")

    def run(self):
        t0 = time.time()
        time.sleep(0.4)
        with open(self.output().path, "w") as f:
            f.write(f"{t0} {time.time()}")


class GpuProbes(luigi.WrapperTask):
    log = luigi.Parameter()

    def requires(self):
        return [GpuProbe(n=k, log=self.log) for k in range(4)]


def test_workflows_cfg_resources_keep_gpu_tasks_one_at_a_time(tmp_path):
    """``[resources] gpu = 1`` in workflows.cfg: with 4 workers, tasks needing a GPU never overlap."""
    assert luigi.configuration.get_config().getint("resources", "gpu") == 1
    log = str(tmp_path / "gpu")
    assert luigi.build([GpuProbes(log=log)], workers=4, local_scheduler=True)
    spans = sorted(tuple(map(float, open(f"{log}.{k}").read().split())) for k in range(4))
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans


def test_a_killed_writers_temporary_file_is_removed_by_the_next_attempt(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    folder = tmp_path / "d"
    folder.mkdir()
    stale = folder / f".shard-0000.h5.tmp-{host}-{dead.pid}-0badf00d"
    alive = folder / f".shard-0000.h5.tmp-{host}-{os.getpid()}-0badf00d"  # a writer still at work
    other = folder / ".shard-0000.h5.tmp-otherhost-1-0badf00d"  # another machine's: not ours to judge
    for p in (stale, alive, other):
        p.write_bytes(b"half")
    with atomic_path(str(folder / "shard-0000.h5")) as tmp:
        open(tmp, "w").write("whole")
    assert sorted(os.listdir(folder)) == sorted([alive.name, other.name, "shard-0000.h5"])
