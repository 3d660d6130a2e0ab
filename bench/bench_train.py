"""Training throughput per model: ``python bench/bench_train.py [--store DIR] [--paper] [--steps N]``.

For every model of ``models.MODELS`` whose module imports here, on the demo shards: samples/s of the loader alone
(the trainers' streaming loader, ``models.stream.PackedLoader``, with ``--workers`` workers, beside a
plain ``DataLoader`` in the same run; the model's mode and features, batch = the config's
``batch_size``) and of full training steps (loader + forward + loss + backward + optimizer step; bf16
autocast on a GPU), and what one step asks of the host (``ops_per_step``: operators dispatched, each
a kernel launch on a GPU; ``reads_per_step``: device values read back, each a wait for the GPU;
``models.syncs``). A model whose features are not in the shards is reported with the reason.
AVEF (and ACLSTM's and DLSTM's face CNNs) run at small widths on a CPU and at the published sizes
on a GPU (``--paper`` forces them; ``--set MODEL.FIELD=VALUE`` overrides one field). On a GPU the
mean utilisation during the timed steps (NVML) is reported beside the rates. DLSTM is benchmarked
with ``task="classification"`` on a corpus without valence/arousal. Prints one JSON object.

The shards: ``--store DIR`` names a store holding a build of the demo whose newest build record
has every feature the models read (``logmel``, ``crop(_small)``, ``pca``, ``descriptor``,
``waveform``, ``vggish``/``vggish_window``, ``glove``); e.g. one built with
``luigi --module pipeline BuildShards --dataset demo --VGGish-weights W.pth --GloVe-path G.txt``.
Without it the demo is built into a temporary folder with random VGGish weights in the published
format and a GloVe file covering the demo transcripts (:func:`embedding_files`; about 2 minutes);
``--build-store DIR`` builds that store into DIR and exits (``bench/gpu_check.sh`` takes a portable
copy of it). ``--processes N`` times N copies of each model's steps started together and prints each
one's samples/s and their sum (the rate of ``models.train --folds-parallel N`` on one device).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from models.data import ShardDataset, clip_table, collate, find_shards  # noqa: E402
from models.resident import DATA_MODES, feed  # noqa: E402
from models.stream import PackedLoader  # noqa: E402
from models.syncs import StepCounter  # noqa: E402
from models.train import autocast, classes_of, features_of, make_config  # noqa: E402

SMALL = {"avef": dict(small_crops=True, audio_size=67, audio_channels=(16, 32, 32, 32, 32), visual_size=32,
                      visual_channels=(4, 8, 8, 8, 16, 16, 16, 16), fc=64, dbn_hidden=(32, 16)),
         "aclstm": dict(vgg_cfg=(16, "M", 32, "M", 64, "M", 64, "M"), visual_hidden=256),
         "dlstm": dict(video_cnn=(16, "M", 32, "M", 64, "M", 64, "M"))}


def embedding_files(folder: str) -> list[str]:
    """Random VGGish weights in the published format (torchvggish state_dict) and a GloVe text file
    (random 300-d vectors) holding every token of the demo transcripts; the BuildShards arguments
    that use them. Throughput does not depend on the weights' values."""
    import csv

    import numpy as np

    from features import text, vggish

    torch.manual_seed(0)
    weights, glove = os.path.join(folder, "vggish.pth"), os.path.join(folder, "glove.txt")
    torch.save({k: torch.randn_like(v) * 0.02 for k, v in vggish.VGGish().state_dict().items()}, weights)
    with open(os.path.join(ROOT, "tests", "data", "demo", "labels.csv"), newline="") as f:
        words = sorted({w for r in csv.DictReader(f) for w in text.tokenize(r["transcript"])})
    rng = np.random.default_rng(0)
    with open(glove, "w") as f:
        for w in words:
            f.write(w + " " + " ".join(f"{x:.5f}" for x in rng.normal(size=300)) + "\n")
    return ["--VGGish-weights", weights, "--GloVe-path", glove]


def demo_store(store: str | None = None) -> str:
    """The demo shards with every feature a model reads (VGGish and GloVe from :func:`embedding_files`),
    built into ``store`` (default: a new temporary folder)."""
    store = store or tempfile.mkdtemp(prefix="bench_train_")
    os.makedirs(store, exist_ok=True)
    subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "demo", "--store", store,
                    "--local-scheduler", "--batch-size", "8", *embedding_files(store)], cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
    return store


class GPUUtilisation:
    """Mean GPU utilisation (NVML, sampled every 0.1 s) while the block runs; None without a GPU."""

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # no NVML (a CPU run): nothing to sample
            return self

        def sample():
            while not self._stop.wait(0.1):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()

    @property
    def mean(self):
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def bench(name, table, *, device, paper, steps, workers, data="auto", overrides=None, barrier=None) -> dict:
    module = models.load(name)
    cfg = make_config(module, {**({} if paper else SMALL.get(name, {})), **(overrides or {})})
    if getattr(cfg, "task", None) == "regression" and not np.isfinite(table.valence).any():
        cfg.task = "classification"   # DLSTM on a corpus without valence/arousal (the demo)
    classes, label_map = classes_of(module, cfg, table.manifest["label_set"])
    if hasattr(cfg, "n_classes"):
        cfg.n_classes = len(classes)
    feats = features_of(module, cfg)
    try:
        ds = ShardDataset(table, range(len(table)), features=feats, mode=module.MODE, label_map=label_map)
    except ValueError as err:  # ParameterError: a feature is not in the shards
        return {"skipped": str(err)}
    bs = getattr(cfg, "batch_size", 16)

    def batches(dl, n):
        k = 0
        while True:
            for b in dl:
                yield b
                k += 1
                if k >= n:
                    return

    def rate(dl, fresh=False):
        it = iter(dl) if fresh else None
        if fresh:
            next(it)   # warm-up: workers started, files opened
        else:
            next(iter(dl))
        t0, n = time.perf_counter(), 0
        for b in (it if fresh else batches(dl, steps)):
            n += len(b["label"])
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return round(n / (time.perf_counter() - t0), 1)

    by_workers, plain_by_workers = {}, {}   # the streaming loader's scaling with its worker processes: one
    for w in workers:   # iterator of `steps` batches drawn with replacement, so the demo's short epochs do not cut it
        pin = str(device).startswith("cuda")
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(steps + 1) * bs)
        dl = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=w, collate_fn=collate,
                                         pin_memory=pin)
        plain_by_workers[w] = rate(dl, fresh=True)   # a DataLoader: every tensor crosses on its own
        del dl
        if w:   # the trainers' loader (models.stream): several batches per transfer, in one buffer
            sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(steps + 1) * bs)
            dl = PackedLoader(ds, batch_size=bs, shuffle=False, num_workers=w, collate=collate, pin_memory=pin,
                              generator=torch.Generator().manual_seed(0), sampler=sampler)
            by_workers[w] = rate(dl, fresh=True)
            del dl
        else:
            by_workers[w] = plain_by_workers[w]
    t0 = time.perf_counter()
    dls, data_mode = feed({"train": ds}, batch_size=bs, num_workers=max(workers), device=device, data=data)
    dl = dls["train"]
    ready_s = time.perf_counter() - t0
    loader_rate = rate(dl)
    model = module.MODEL(cfg).to(device)
    opt = model.configure_optimizer() if hasattr(model, "configure_optimizer") else torch.optim.Adam(model.parameters())
    model.train()

    def step(b):
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with autocast(device):
            out = model(b)
        loss = model.loss(out, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(b["label"])

    first = next(iter(dl))
    step(first)  # warm-up (allocations, cudnn autotuning)
    with StepCounter() as counted:   # what one step asks of the host: launches and reads (models/syncs.py)
        step(first)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    if barrier:   # one of --processes N: the timed steps of all N start together
        open(os.path.join(barrier, f"ready.{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(barrier, "go")):
            time.sleep(0.01)
    t0, n = time.perf_counter(), 0
    with GPUUtilisation() as util:
        for b in batches(dl, steps):
            n += step(b)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
    step_rate = n / (time.perf_counter() - t0)
    return {"mode": module.MODE, "features": list(feats), "batch_size": bs, "items": len(ds),
            "params": sum(p.numel() for p in model.parameters()), "sizes": "paper" if paper or name not in SMALL else "small",
            "stream_loader_samples_per_s_by_workers": by_workers,
            "stream_loader_plain_dataloader_by_workers": plain_by_workers, "data": data_mode,
            "data_ready_s": round(ready_s, 2), "loader_samples_per_s": loader_rate,
            "train_samples_per_s": round(step_rate, 1), "loader_to_step": round(loader_rate / step_rate, 1),
            "ops_per_step": counted.ops, "reads_per_step": dict(counted.reads),
            "gpu_utilisation_percent": util.mean,
            "overrides": overrides or {}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", help="a store holding the demo shards (default: build them in a temporary folder)")
    p.add_argument("--build-store", metavar="DIR", help="only build the demo shards with every feature into DIR "
                                                         "and exit (for --store, or avstore export to a GPU host)")
    p.add_argument("--paper", action="store_true", help="the published sizes also on a CPU")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", default="2", help="DataLoader workers of the streaming loader; a list (1,2,4,8) "
                                                  "measures its scaling, the largest feeds the steps when streaming")
    p.add_argument("--data", choices=DATA_MODES, default="auto",
                   help="the data path of the timed steps (models.train --data): auto = resident on a GPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--set", action="append", default=[], metavar="MODEL.FIELD=VALUE",
                   help="a config override for one model, VALUE as JSON (e.g. avef.small_crops=true)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="N processes time their steps at once, as --folds-parallel N trains N folds on one "
                        "GPU: their samples/s and the sum")
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_store:
        print(demo_store(args.build_store))
        return
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in str(args.workers).split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.store = args.store or demo_store()
    table = clip_table(find_shards(args.store, "demo"))
    names = args.models or list(models.available())
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "threads": args.threads, "workers": workers, "steps": args.steps,
           "models": {}, "not_importable": [m for m in models.MODELS if m not in models.available()]}
    for name in names:
        overrides = {k.split(".", 1)[1]: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)
                     if k.split(".", 1)[0] == name}
        if args.processes > 1:
            out["models"][name] = concurrent(name, args, workers)
            continue
        out["models"][name] = bench(name, table, device=device, paper=args.paper or device == "cuda",
                                    steps=args.steps, workers=workers, data=args.data, overrides=overrides,
                                    barrier=args.barrier)
    print(json.dumps(out, indent=1))


def concurrent(name: str, args, workers: list) -> dict:
    """``args.processes`` copies of this bench for model ``name`` (the largest worker count only), their
    timed steps started together (a barrier folder): each one's samples/s, the sum and each one's GPU
    utilisation. Folds are independent, so on a GPU that one fold's steps leave idle this is the rate
    ``--folds-parallel N`` reaches."""
    with tempfile.TemporaryDirectory(prefix="bench_train_barrier_") as barrier:
        cmd = [sys.executable, os.path.abspath(__file__), "--store", args.store, "--steps", str(args.steps),
               "--workers", str(max(workers)), "--data", args.data, "--threads", str(args.threads),
               "--models", name, "--barrier", barrier, *(["--paper"] if args.paper else []),
               *[x for s in args.set for x in ("--set", s)]]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(args.processes)]
        while len([f for f in os.listdir(barrier) if f.startswith("ready.")]) < len(procs):
            if any(p.poll() is not None for p in procs):   # one ended before its timed steps: report it
                break
            time.sleep(0.05)
        open(os.path.join(barrier, "go"), "w").close()
        runs = []
        for p in procs:
            stdout, stderr = p.communicate()
            if p.returncode:
                return {"failed": f"exit {p.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"}
            runs.append(json.loads(stdout)["models"][name])
    if any("skipped" in r for r in runs):
        return runs[0]
    each = [r["train_samples_per_s"] for r in runs]
    return {"processes": args.processes, "train_samples_per_s_each": each,
            "train_samples_per_s_total": round(sum(each), 1),
            "gpu_utilisation_percent_each": [r["gpu_utilisation_percent"] for r in runs],
            "data": runs[0]["data"], "batch_size": runs[0]["batch_size"], "sizes": runs[0]["sizes"]}


if __name__ == "__main__":
    main()
