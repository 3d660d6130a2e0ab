"""Many machines on one store (issue 21 item 4): a luigid and three worker processes, each with a
host name of its own (a UTS namespace: ``unshare --uts``, the stand-in for three hosts on loopback
sharing the store's file system). Every task runs once, on some host; every host takes work; the
shards equal a single-worker build's; no temporary file of any host is left (their names carry the
host: docs/sharing.md)."""
import collections
import subprocess
import sys

from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import running_luigid
from tests.pipeline.share_helpers import corpus, luigi_argv
from tests.pipeline.test_concurrent import CLIPS, assert_like_reference, reference

RUNNER = ("import socket, sys, luigi, pipeline\n"
          "log = sys.argv[1]\n"
          "@luigi.Task.event_handler(luigi.Event.START)\n"
          "def _started(task):\n"
          "    with open(log, 'a') as f: f.write(f'{socket.gethostname()} {task.task_family} {task.task_id}\\n')\n"
          "sys.exit(0 if luigi.run(sys.argv[2:]) else 1)\n")
HOSTS = ("host-a", "host-b", "host-c")


def as_host(host: str, argv: list) -> list:
    """``argv`` run under the host name ``host`` (a new UTS namespace; the network is shared)."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *argv]


def test_three_hosts_share_a_luigid_and_a_store(tmp_path):
    manifest = corpus(tmp_path / "corpus", CLIPS)
    store, log = tmp_path / "store", tmp_path / "started.log"
    with running_luigid(tmp_path / "luigid") as port:
        args = ("--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--workers", "1",
                "--worker-keep-alive", "--no-lock")
        procs = [subprocess.Popen(as_host(h, [sys.executable, "-c", RUNNER, str(log),
                                              *luigi_argv(manifest, store, *args)]),
                                  cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for h in HOSTS]
        for p in procs:
            _, err = p.communicate(timeout=400)
            assert p.returncode == 0, err[-3000:]
    started = [line.split(" ") for line in log.read_text().splitlines()]   # host, family, task id
    runs = collections.Counter(task for _, _, task in started)
    assert max(runs.values()) == 1, [t for t, n in runs.items() if n > 1]   # each task once, over all hosts
    assert len(runs) == 3 * 10 + 2                                         # 3 batches × 10 stages + PCA + build
    hosts = collections.Counter(h for h, _, _ in started)
    assert set(hosts) <= set(HOSTS) and len(hosts) >= 2, hosts              # the work was spread
    assert_like_reference(store, reference(tmp_path, manifest))
