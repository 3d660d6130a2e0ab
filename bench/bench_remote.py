"""Pulling a feature set from a remote vs. rebuilding it, and the time ``verify`` takes per GB.

    python bench/bench_remote.py [--clips s1_anger_01,s2_sadness_01,s3_happiness_01] [--s3]

Builds a small corpus once (timed: the rebuild), pushes it to a folder remote (and, with
``--s3``, to a moto S3 server on loopback), then times a teammate's ``BuildShards`` with
``--remote-url`` into an empty store (schedule + pull + verify + summary: what replaces the
rebuild) and ``avstore verify`` over the store; then how fast a lying remote is refused
(issue 19 item 6a): a record claiming 3 GiB, and a 4 GiB (sparse) file whose record claims its
first shard's bytes; the bytes read and written before the refusal. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline import catalog, cli, remote  # noqa: E402
from tests.pipeline.conftest import make_corpus  # noqa: E402
from tests.pipeline.share_helpers import REL, all_files, fake_shard, folder_remote  # noqa: E402


def luigi_build(manifest, store, *extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "mini", "--manifest", str(manifest),
                    "--store", str(store), "--batch-size", "1", "--local-scheduler", "--no-lock", *extra],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def lying_remotes(work: pathlib.Path) -> dict:
    """Seconds until ``pull`` refuses a record claiming 3 GiB and a 4 GiB file recorded as small,
    and the bytes it read from the remote file / left in the store meanwhile."""
    head = fake_shard(work / "small.h5").read_bytes()
    out = {}
    for case in ("claims_3_GiB", "file_4_GiB_record_small"):
        url = folder_remote(work / case, {REL: head}, claims={REL: 3 << 30} if case == "claims_3_GiB" else None)
        if case != "claims_3_GiB":
            os.truncate(os.path.join(url, REL), 4 << 30)
        r, read = remote.Remote(url), []
        real_open = r.fs.open

        def counting_open(path, mode="rb", **kw):
            f = real_open(path, mode, **kw)
            if path.endswith(".h5"):
                real_read = f.read

                def counted(n=-1):
                    read.append(len(data := real_read(n)))
                    return data
                f.read = counted
            return f
        r.fs.open = counting_open
        t0 = time.perf_counter()
        try:
            remote.pull(str(work / f"store-{case}"), r, "mini")
            why = "accepted!"
        except remote.RemoteError as err:
            why = str(err).rsplit(": ", 1)[-1][:120]
        left = sum(os.path.getsize(os.path.join(work, f"store-{case}", f)) for f in all_files(work / f"store-{case}")
                   if f.endswith(".h5") or ".tmp-" in f) if (work / f"store-{case}").exists() else 0
        out[case] = {"refused_s": round(time.perf_counter() - t0, 4), "bytes_read": sum(read),
                     "bytes_left_in_store": left, "why": why}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", default="s1_anger_01,s2_sadness_01,s3_happiness_01")
    ap.add_argument("--s3", action="store_true", help="also through a moto S3 server on loopback")
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_remote-"))
    manifest = make_corpus(work / "corpus", good=args.clips.split(","), bad=False)
    rebuild_s = luigi_build(manifest, work / "store")
    nbytes = sum(m["bytes"] for r in catalog.records(str(work / "store"), "mini").values() for m in r["files"].values())
    out = {"clips": len(args.clips.split(",")), "shard_bytes": nbytes, "rebuild_s": round(rebuild_s, 2)}
    remotes = {"folder": str(work / "remote")}
    server = None
    if args.s3:
        from moto.server import ThreadedMotoServer
        import s3fs

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://{host}:{port}")
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
        remotes["s3_moto_loopback"] = "s3://bench/store"
    try:
        for name, url in remotes.items():
            t0 = time.perf_counter()
            cli.main(["--store", str(work / "store"), "push", "--dataset", "mini", "--remote", url])
            push_s = time.perf_counter() - t0
            other = make_corpus(work / f"corpus-{name}", good=args.clips.split(","), bad=False)
            pull_s = luigi_build(other, work / f"store-{name}", "--remote-url", url)
            out[name] = {"push_s": round(push_s, 2), "build_with_pull_s": round(pull_s, 2),
                         "rebuild_over_pull": round(rebuild_s / pull_s, 1)}
    finally:
        if server:
            server.stop()
    reps, t0 = 5, time.perf_counter()
    for _ in range(reps):
        assert catalog.verify(str(work / "store")) == []
    verify_s = (time.perf_counter() - t0) / reps
    out["verify_s"] = round(verify_s, 3)
    out["verify_s_per_gb"] = round(verify_s / (nbytes / 1e9), 2)
    out["lying_remote"] = lying_remotes(work)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
