"""Reading windows for training: ``python bench/bench_reader.py [--clips N] [--out DIR] [--only blosc]``.

Builds N (default 480, 8 shards) replicated demo clips with the ``luigi`` CLI, then for each
compression setting re-writes the same shards (every group and attribute read with
``features.store.read_group`` / ``read_attrs``, written with ``features.store.write`` after setting
``features.store.COMPRESSION``) and reads every 64x64x3 window through ``features.store.ShardReader``
with a ``torch.utils.data.DataLoader`` (2 persistent workers, shuffle, batch size 256), a few
epochs each. Reports bytes per window, windows/s over the epoch (target >= 10,000), time to the
first batch (warm-up) and the rate after it (steady state), and a one-process breakdown of the
cost of one window. The first epoch is also timed with a parent that never imported the feature
code (the warm-up a user sees). Prints one JSON object.

Issue 19 item 3: Blosc is written twice, with and without the fletcher32 checksums, so their
cost shows side by side (``fletcher32_cost``: the DataLoader medians; ``fletcher32_cost_one_process``:
microseconds per window in one process, the two alternated five times, cold and warm chunk cache).
``--only blosc`` runs just those two settings.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_audio_chain import build  # noqa: E402
from corpus import DATASET, replicate  # noqa: E402

TARGET = 10_000.0
BATCH = 256
WORKERS = 2
BLOSC = {"f": "blosc-zstd", "i": "blosc-zstd", "u": "blosc-zstd", "O": None, "S": None}
DEFAULT = "blosc_zstd1_shuffle_all + fletcher32 (current default)"
SETTINGS = {  # name -> (dtype kind -> compressor (features.store.COMPRESSORS), fletcher32 checksums)
    "none + fletcher32": ({"f": None, "i": None, "u": None, "O": None, "S": None}, True),
    "lzf_all + fletcher32": ({"f": "lzf", "i": "lzf", "u": "lzf", "O": None, "S": None}, True),
    "gzip4_shuffle_all + fletcher32": ({"f": "gzip", "i": "gzip", "u": "gzip", "O": None, "S": None}, True),
    "blosc_zstd1_shuffle_all, no checksums (format 1)": (BLOSC, False),
    DEFAULT: (BLOSC, True),
}


class Windows:
    """A map-style dataset over the windows of several shards: global index -> (shard, local index)."""

    def __init__(self, paths):
        from features.store import ShardReader

        self.shards = [ShardReader(p) for p in paths]
        counts = [s.n_windows for s in self.shards]
        for s in self.shards:  # workers are forked: do not hand them an open HDF5 file
            s.close()
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        import torch

        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return torch.from_numpy(self.shards[k].window(int(i - self.starts[k])))

    def __getitems__(self, indices):
        """A whole batch at once (torch's fetcher calls this when it exists): one Δ computation
        per shard instead of one per window; returns the batch in the order asked."""
        import torch

        indices = np.asarray(indices, dtype=np.int64)
        k = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), 64, 64, 3), np.float32)
        for shard in np.unique(k):
            sel = np.flatnonzero(k == shard)
            out[sel] = self.shards[shard].window_batch(indices[sel] - self.starts[shard])
        return torch.from_numpy(out)


def rewrite(src_paths, dst_dir, compression, checksums=True) -> list[str]:
    from features import store

    saved = dict(store.COMPRESSION)
    store.COMPRESSION.clear()
    store.COMPRESSION.update(compression)
    out = []
    try:
        for p in src_paths:
            with store.open_file(p) as f:
                names = list(f.keys())
            attrs = store.read_attrs(p)
            attrs.pop("format_version", None)  # write() sets it
            groups = {g: store.read_group(p, g) for g in names}
            dst = os.path.join(dst_dir, os.path.basename(os.path.dirname(p)) + "-" + os.path.basename(p))
            store.write(dst, attrs=attrs, groups=groups, checksums=checksums)
            out.append(dst)
    finally:
        store.COMPRESSION.clear()
        store.COMPRESSION.update(saved)
    return out


def as_is(batch):
    """``__getitems__`` already returns the batch tensor."""
    return batch


def check_same(a_paths, b_paths, n=50, atol=0.0) -> bool:
    from features.store import ShardReader

    for a, b in zip(a_paths, b_paths):
        sa, sb = ShardReader(a), ShardReader(b)
        for i in range(0, sa.n_windows, max(1, sa.n_windows // n)):
            if not np.allclose(sa.window(i), sb.window(i), rtol=0.0, atol=atol):
                return False
        sa.close(), sb.close()
    return True


def run_epochs(ds, n_epochs: int) -> list[dict]:
    """Epochs through one DataLoader with persistent workers (as a trainer runs it): the first
    epoch carries the workers' start-up, the later ones are the steady state."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator()
    g.manual_seed(0)
    dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, generator=g, collate_fn=as_is,
                    persistent_workers=True)
    out = []
    for _ in range(n_epochs):
        t0 = time.perf_counter()
        n, first = 0, None
        for x in dl:
            assert x.shape[1:] == (64, 64, 3) and x.dtype == torch.float32
            n += len(x)
            first = first if first is not None else time.perf_counter() - t0
        total = time.perf_counter() - t0
        out.append({"windows": n, "s": round(total, 3), "windows_per_s": round(n / total, 1),
                    "first_batch_s": round(first, 3)})
    return out


def read_all_windows(paths) -> tuple[float, float]:
    """One process, fresh readers: microseconds per window reading every window's frames once in
    a random order (each chunk decompressed and checksummed once: cold), then again (chunk cache
    warm)."""
    from features.store import ShardReader

    rates = []
    shards = [ShardReader(p) for p in paths]
    order = [(k, int(i)) for k, s in enumerate(shards) for i in range(s.n_windows)]
    np.random.default_rng(0).shuffle(order)
    for _ in range(2):
        t = time.perf_counter()
        for k, i in order:
            shards[k].window_frames(i)
        rates.append((time.perf_counter() - t) / len(order) * 1e6)
    for s in shards:
        s.close()
    return rates[0], rates[1]


def checksum_cost(with_paths, without_paths, rounds=5) -> dict:
    """Issue 19 item 3: the cost of fletcher32 in one process, the two settings alternated
    ``rounds`` times (the machine's load hits both alike); medians in microseconds per window."""
    cold = {"with": [], "without": []}
    warm = {"with": [], "without": []}
    for _ in range(rounds):
        for name, paths in (("without", without_paths), ("with", with_paths)):
            c, w = read_all_windows(paths)
            cold[name].append(c)
            warm[name].append(w)
    out = {f"{kind}_us_per_window_{name}": round(statistics.median(d[name]), 2)
           for kind, d in (("cold", cold), ("warm", warm)) for name in ("without", "with")}
    ratio = out["cold_us_per_window_with"] / out["cold_us_per_window_without"]
    out["cold_change_percent"] = round(100 * (ratio - 1), 1)
    out["rounds"] = rounds
    return out


def per_window_cost(paths, n=600) -> dict:
    """One process, no DataLoader: microseconds per window for each part of ShardReader.window."""
    from features.audio import window_image
    from features.store import ShardReader

    s = ShardReader(paths[0])
    t = time.perf_counter()
    s.window(0)
    first = time.perf_counter() - t
    idx = np.random.default_rng(0).permutation(s.n_windows)[:n]
    for i in idx:  # chunk cache and page cache warm
        s.window_frames(int(i))
    t = time.perf_counter()
    frames = [s.window_frames(int(i)) for i in idx]
    t_frames = (time.perf_counter() - t) / len(idx)
    t = time.perf_counter()
    for fr in frames:
        window_image(fr)
    t_image = (time.perf_counter() - t) / len(idx)
    s.close()
    return {"first_window_in_fresh_process_s": round(first, 3),
            "window_frames_us": round(t_frames * 1e6, 1), "window_image_us": round(t_image * 1e6, 1),
            "bound_2_workers_windows_per_s": round(2 / (t_frames + t_image), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=480)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", help="work folder (kept); default a temporary folder, removed")
    ap.add_argument("--only", default="", help="run only the settings whose name holds this text (e.g. blosc)")
    args = ap.parse_args()

    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="bench_reader_")
    os.makedirs(work, exist_ok=True)
    try:
        from features.store import open_file

        manifest, audio_s = replicate(os.path.join(work, "corpus"), args.clips)
        store_dir = os.path.join(work, "store")
        built = build([shutil.which("luigi") or "luigi"], manifest, store_dir, batch_size=64,
                      extra=("--video", "false"))  # log-mel windows: the visual chain is not read here
        src = sorted(glob.glob(os.path.join(store_dir, DATASET, "shards", "*", "shard-*.h5")))
        default = DEFAULT
        settings = {k: v for k, v in SETTINGS.items() if args.only in k}
        out = {"benchmark": "reader", "clips": args.clips, "shards": len(src), "windows": built["windows"],
               "dataloader": {"workers": WORKERS, "batch_size": BATCH, "shuffle": True,
                              "persistent_workers": True},
               "target_windows_per_s": TARGET}
        # 1. the first epoch as a user meets it: this process never imported the feature code
        out["cold_parent_no_librosa"] = {"setting": default, "epochs": run_epochs(Windows(src), 1)}
        # 2. the settings
        results, paths_of = {}, {}
        for i, (name, (comp, checksums)) in enumerate(settings.items()):
            dst_dir = os.path.join(work, f"setting{i}")
            os.makedirs(dst_dir)
            t = time.perf_counter()
            paths = paths_of[name] = rewrite(src, dst_dir, comp, checksums)
            write_s = time.perf_counter() - t
            ds = Windows(paths)
            nbytes = sum(os.path.getsize(p) for p in paths)
            logmel = 0
            for p in paths:
                with open_file(p) as f:
                    logmel += f["frames/logmel"].id.get_storage_size()
            epochs = run_epochs(ds, args.epochs + 1)
            rate = round(statistics.median(e["windows_per_s"] for e in epochs[1:]), 1)
            results[name] = {"compression": {k: v for k, v in comp.items() if k in "fiu"}, "fletcher32": checksums,
                             "rewrite_s": round(write_s, 3), "file_bytes": nbytes,
                             "bytes_per_window": round(nbytes / len(ds), 1),
                             "logmel_bytes_per_window": round(logmel / len(ds), 1),
                             "windows_per_s_median": rate, "target_met": rate >= TARGET, "epochs": epochs,
                             "same_windows_as_built": check_same(src, paths)}
        out["settings"] = results
        out["target_met"] = results[default]["target_met"] if default in results else None
        plain = "blosc_zstd1_shuffle_all, no checksums (format 1)"
        if default in results and plain in results:  # issue 19 item 3: what the checksums cost
            out["fletcher32_cost_one_process"] = checksum_cost(paths_of[default], paths_of[plain])
            with_, without = results[default]["windows_per_s_median"], results[plain]["windows_per_s_median"]
            out["fletcher32_cost"] = {"windows_per_s_without": without, "windows_per_s_with": with_,
                                      "change_percent": round(100 * (with_ - without) / without, 1),
                                      "bytes_per_window_without": results[plain]["bytes_per_window"],
                                      "bytes_per_window_with": results[default]["bytes_per_window"]}
        for i in range(len(settings)):
            shutil.rmtree(os.path.join(work, f"setting{i}"), ignore_errors=True)
        cost = subprocess_json([sys.executable, os.path.abspath(__file__), "--_cost", src[0]])
        out["per_window_one_process"] = cost
        out["work_dir"] = work if args.out else None
        print(json.dumps(out, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


def subprocess_json(cmd) -> dict:
    import subprocess

    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_cost":  # child: a fresh process for the first-window cost
        print(json.dumps(per_window_cost([sys.argv[2]])))
    else:
        main()
