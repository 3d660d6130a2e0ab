"""``avstore report``: a static HTML page about one feature set (issue 20 item 2).

::

    avstore report --dataset demo [--build KEY] --out DIR [--sheets 8]     # then open DIR/index.html

No server: ``DIR/index.html`` and the PNG files beside it (matplotlib, Agg), referenced by relative
paths, so the folder can be copied or attached as it is. ``--build`` defaults to the dataset's
newest build record (as ``avstore export``). The page shows

- the clips by status, one bar per (stage, status): the audio chain (``clips/status``), the video
  chain (``clips/video_status``) and every embedding stage (``clips/<stage>_status``), and a table
  of the failure reasons (``clips/*reason``) with the clips that have each;
- per clip (``clip_rows``): duration (``clips/duration_s``), voiced fraction (mean of
  ``frames/voiced`` over the clip's 25 ms frames), windows (rows of ``windows/clip``), face-found
  fraction (mean of ``video/found`` over the clip's video frames), mean face size (mean of
  √(w·h) of the tracker box ``video/box``, in source pixels, over the frames with a face) and the
  log-mel floored fraction (``clips/logmel_floor_fraction``), a histogram of each;
- every clip in one table, worst first (``worst_first``), with the contact sheet
  (``scripts/contact_sheet.py``) of the first ``--sheets`` of them.

**Worst first**: the failed clips (``clips/status`` not "ok": no window, nothing to train on)
come first, by status and id; then every other clip by its *score*, the weakest of its signals:
``min(voiced fraction, face-found fraction, 1 − log-mel floored fraction)``, lowest first (ties:
fewer windows first, then id). A clip whose video failed has face-found fraction 0; an audio-only
build has no face signal, and a shard without the floor column no floor signal (left out of the
minimum). A score near 1 is a clip that speaks most of the time, shows a face in nearly every
frame and whose log-mel image is not the floor.
"""
from __future__ import annotations

import collections
import html
import importlib.util
import json
import os
import re

import numpy as np

from pipeline.catalog import datasets, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTACT_SHEET = os.path.join(REPO, "scripts", "contact_sheet.py")
#: (column, title, how it is measured) of the per-clip histograms
METRICS = (("duration_s", "duration (s)", "clips/duration_s"),
           ("voiced_fraction", "voiced fraction", "mean of frames/voiced (25 ms frames)"),
           ("windows", "windows", "655 ms windows per clip"),
           ("face_found", "face-found fraction", "mean of video/found over the clip's frames"),
           ("face_px", "mean face size (px)", "mean √(w·h) of video/box where a face was found"),
           ("floor_fraction", "log-mel floored fraction", "clips/logmel_floor_fraction"))
FLOOR_WARN = 0.5  # pipeline.shards.FLOOR_WARN (not imported: that module loads every Luigi task)


class ReportError(Exception):
    """The report cannot be made: unknown dataset or build, no record, a shard missing or damaged."""


def pick(store: str, dataset: str | None, build: str | None) -> tuple[str, str, dict]:
    """(dataset, key, record) of the feature set ``build`` (a key or a unique prefix), else the
    dataset's newest (by ``created``), as ``avstore export`` chooses."""
    known = datasets(store)
    if dataset is not None and dataset not in known:
        raise ReportError(f"no dataset {dataset!r} in the store {store} "
                          f"({'its datasets: ' + ', '.join(known) if known else 'it has none'})")
    if build:
        hits = [(ds, key, rec) for ds in ([dataset] if dataset else known)
                for key, rec in records(store, ds).items() if key.startswith(build)]
        if len(hits) != 1:
            raise ReportError(f"{len(hits)} feature sets match --build {build!r}"
                              f"{' in dataset ' + repr(dataset) if dataset else ''} under {store} "
                              f"(see `avstore catalog`{'; give more digits or --dataset' if hits else ''})")
        ds, key, rec = hits[0]
        if "error" in rec:
            raise ReportError(rec["error"])
        return ds, key, rec
    if dataset is None:
        raise ReportError("name the feature set: --dataset D (its newest build) or --build KEY")
    recs = {k: r for k, r in records(store, dataset).items() if "error" not in r}
    if not recs:
        raise ReportError(f"no build record of dataset {dataset!r} under {store}/{dataset}/builds "
                          f"(run BuildShards --dataset {dataset})")
    key = max(recs, key=lambda k: (recs[k].get("created") or "", k))
    return dataset, key, recs[key]


def shard_paths(store: str, dataset: str, key: str, record: dict) -> list[str]:
    """The shards the record names (``files``, relative to the store), all present."""
    rels = sorted(record.get("files") or {})
    if not rels:
        raise ReportError(f"build record {dataset}/{key} names no shards (built before the catalog): rebuild it")
    missing = [rel for rel in rels if not os.path.isfile(os.path.join(store, rel))]
    if missing:
        raise ReportError(f"{len(missing)} shard(s) of {dataset}/{key} are not in {store}, e.g. {missing[0]} "
                          f"(avstore pull --dataset {dataset} --build {key})")
    return [os.path.join(store, rel) for rel in rels]


# -- the numbers ------------------------------------------------------------------------------------
def _per_clip_mean(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each clip's rows (NaN for a clip without rows)."""
    sums = np.add.reduceat(np.r_[values.astype(np.float64), 0.0], offsets[:-1]) if len(offsets) > 1 else np.zeros(0)
    counts = np.diff(offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def shard_rows(path: str) -> list[dict]:
    """One dict per clip of the shard at ``path``: the clips table's strings and the METRICS."""
    from features import store

    names = store.dataset_names(path)
    clips = store.read_group(path, "clips")
    n = len(clips["id"])
    frames = store.read_group(path, "frames", ["voiced", "offsets"])
    voiced = _per_clip_mean(frames["voiced"], frames["offsets"])
    windows = np.bincount(store.read_group(path, "windows", ["clip"])["clip"].astype(np.int64), minlength=n)[:n]
    has_video = "video/found" in names
    found = size = np.full(n, np.nan)
    if has_video:
        video = store.read_group(path, "video", ["found", "box", "offsets"])
        off, ok = video["offsets"], video["found"].astype(bool)
        box = video["box"].astype(np.float64)
        side = np.sqrt(np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None))
        ok &= np.isfinite(side)
        found = _per_clip_mean(ok, off)
        with np.errstate(invalid="ignore", divide="ignore"):
            size = np.array([side[a:b][ok[a:b]].mean() if ok[a:b].any() else np.nan for a, b in zip(off[:-1], off[1:])])
    floor = clips.get("logmel_floor_fraction", np.full(n, np.nan))
    rows = []
    for c in range(n):
        status = str(clips["status"][c])
        duration = float(clips["duration_s"][c]) if "duration_s" in clips else float("nan")
        row = {"id": str(clips["id"][c]), "shard": path, "index": c, "status": status,
               "reason": str(clips["reason"][c]), "label": str(clips.get("label", [""] * n)[c]),
               "speaker": str(clips.get("speaker", [""] * n)[c]), "has_video": has_video,
               "duration_s": duration if duration > 0 or status == "ok" else float("nan"),
               "voiced_fraction": float(voiced[c]), "windows": int(windows[c]),
               "face_found": float(found[c]) if not (has_video and np.isnan(found[c])) else 0.0,
               "face_px": float(size[c]), "floor_fraction": float(floor[c]),
               "stages": {}}
        for col in sorted(clips):  # video_status, descriptor_status, ...: every other stage's outcome
            if col.endswith("_status") and col != "status":
                stage = col[: -len("_status")]
                row["stages"][stage] = (str(clips[col][c]), str(clips.get(f"{stage}_reason", [""] * n)[c]))
        rows.append(row)
    return rows


def score(row: dict) -> float:
    """The weakest signal of a clip (module docstring): min(voiced fraction, face-found fraction,
    1 − log-mel floored fraction); a missing voiced fraction counts as 0."""
    signals = [0.0 if np.isnan(row["voiced_fraction"]) else row["voiced_fraction"]]
    if row["has_video"]:
        signals.append(row["face_found"])
    if not np.isnan(row["floor_fraction"]):
        signals.append(1.0 - row["floor_fraction"])
    return float(min(signals))


def worst_first(rows: list[dict]) -> list[dict]:
    """The clips, worst first: failed (by status, id), then by ``score``, windows, id."""
    for row in rows:
        row["score"] = score(row)
    return sorted(rows, key=lambda r: (r["status"] == "ok", "" if r["status"] == "ok" else r["status"],
                                       r["score"], r["windows"], r["id"]))


def status_counts(rows: list[dict]) -> collections.Counter:
    """{(stage, status): clips}; stage "audio" is ``clips/status``, "video" ``clips/video_status`` …"""
    counts = collections.Counter((("audio", r["status"]) for r in rows))
    for r in rows:
        counts.update((stage, status) for stage, (status, _) in r["stages"].items())
    return counts


def reason_table(rows: list[dict]) -> list[tuple[str, str, str, list[str]]]:
    """[(stage, status, reason, clip ids)] of every outcome that is not "ok", most clips first."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["status"] != "ok":
            groups[("audio", r["status"], r["reason"])].append(r["id"])
        for stage, (status, reason) in r["stages"].items():
            if status != "ok":
                groups[(stage, status, reason)].append(r["id"])
    return sorted(((*k, ids) for k, ids in groups.items()), key=lambda g: (-len(g[3]), g[0], g[1], g[2]))


# -- the plots --------------------------------------------------------------------------------------
def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas on savefig

    fig = Figure(figsize=(w, h), dpi=100)
    return fig, fig.add_subplot()


def plot_status(counts: collections.Counter, path: str) -> None:
    bars = sorted(counts.items(), key=lambda kv: (kv[0][0] != "audio", kv[0][0] != "video", kv[0][0],
                                                  kv[0][1] != "ok", kv[0][1]))
    fig, ax = _figure(8, 0.9 + 0.32 * len(bars))
    labels = [f"{stage}: {status}" for (stage, status), _ in bars]
    values = [n for _, n in bars]
    colours = ["tab:green" if status == "ok" else "tab:red" for (_, status), _ in bars]
    y = np.arange(len(bars))[::-1]
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("clips"), ax.set_title("clips by stage and status (green: ok)", fontsize=10)
    ax.set_xlim(0, max(values) * 1.12 if values else 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path)


def plot_histogram(values: list[float], title: str, how: str, path: str, *, integer: bool = False,
                   unit_range: bool = False, mark: float | None = None) -> int:
    """A histogram of the finite ``values``; returns how many there were."""
    x = np.asarray([v for v in values if v == v], dtype=np.float64)
    fig, ax = _figure(5, 3.2)
    if len(x):
        if integer:
            bins = np.arange(x.min() - 0.5, x.max() + 1.5, max(1, int(np.ceil((x.max() - x.min() + 1) / 30))))
        elif unit_range:
            bins = np.linspace(0, 1, 21)
        else:
            bins = 20
        ax.hist(x, bins=bins, color="tab:blue", edgecolor="white")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.axvline(np.median(x), color="k", ls="--", lw=1, label=f"median {np.median(x):.3g}")
        if mark is not None:
            ax.axvline(mark, color="tab:red", lw=1, label=f"{mark:g}: named in the build summary")
        ax.legend(fontsize=7)
        if integer:
            ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no clip has a value", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{title} — {len(x)} of {len(values)} clips", fontsize=10)
    ax.set_xlabel(how, fontsize=8), ax.set_ylabel("clips")
    fig.tight_layout()
    fig.savefig(path)
    return len(x)


def _contact_sheet_module():
    """``scripts/contact_sheet.py`` loaded by path (scripts/ is no package), or None."""
    if not os.path.isfile(CONTACT_SHEET):
        return None
    spec = importlib.util.spec_from_file_location("contact_sheet", CONTACT_SHEET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "clip"


# -- the page ---------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.15em;
margin-top:1.6em}table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top;text-align:left}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fde8e8}.grid{display:flex;flex-wrap:wrap;gap:.5em}.grid img{border:1px solid #ddd}
img.sheet{width:260px}td.wrap{min-width:12em;max-width:18em;overflow-wrap:break-word}
code{background:#f4f4f4;padding:0 .2em}p.note{max-width:70em;font-size:.9em}"""

#: after load: how many images have pixels (naturalWidth > 0) of how many, and the table's rows
SCRIPT = """window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var shown = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.images = shown + "/" + images.length;
  document.body.dataset.rows = document.querySelectorAll("#clips tbody tr").length;
  document.body.dataset.reasons = document.querySelectorAll("#reasons tbody tr").length;
});"""


def _num(x: float, fmt: str) -> str:
    return "–" if x != x else format(x, fmt)


def page(dataset: str, key: str, record: dict, rows: list[dict], reasons: list, images: dict,
         sheets: dict, notes: list[str]) -> str:
    e = html.escape
    n_failed = sum(r["status"] != "ok" for r in rows)
    head = (f"<h1>Feature set {e(dataset)} / {e(key)}</h1>\n<p>built {e(str(record.get('created')))} by "
            f"{e(str(record.get('builder')))}; {len(record.get('files', {}))} shard(s); {len(rows)} clips: "
            f"{len(rows) - n_failed} ok, {n_failed} failed; {sum(r['windows'] for r in rows)} windows"
            + (f"; an export ({e(str(record['export'].get('codec')))}) of {e(str(record['export'].get('from')))}"
               if isinstance(record.get("export"), dict) else "") + "</p>")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>avstore report {e(dataset)}/{e(key)}</title><style>{CSS}</style></head><body>", head]
    out.append('<h2>Clips by status</h2>\n<img src="status.png" alt="clips by stage and status">')
    out.append('<table id="reasons"><thead><tr><th>stage</th><th>status</th><th>reason</th><th>clips</th>'
               "<th>ids</th></tr></thead><tbody>")
    for stage, status, reason, ids in reasons:
        named = e(", ".join(ids[:40])) + (" …" if len(ids) > 40 else "")
        out.append(f"<tr><td>{e(stage)}</td><td>{e(status)}</td><td>{e(reason) or '–'}</td>"
                   f"<td class=n>{len(ids)}</td><td>{named}</td></tr>")
    out.append("</tbody></table>" + ("" if reasons else "<p>Every clip is ok in every stage.</p>"))
    out.append('<h2>Per clip</h2>\n<div class="grid">')
    out += [f'<img src="{e(src)}" alt="{e(title)}">' for title, src in images.items()]
    out.append("</div>")
    out.append('<h2>Clips, worst first</h2>\n<p class="note">Failed clips first (by status), then by the '
               "<i>score</i> = min(voiced fraction, face-found fraction, 1 − log-mel floored fraction), lowest "
               "first; a clip whose video failed has face-found fraction 0. Voiced: mean of "
               "<code>frames/voiced</code>; face: mean of <code>video/found</code>; face px: mean √(w·h) of "
               "the tracker box where a face was found; floor: <code>clips/logmel_floor_fraction</code>.</p>")
    cols = ("#", "clip", "status", "other stages not ok", "duration s", "voiced", "windows",
            "face found", "face px", "floor", "score", "contact sheet")
    out.append('<table id="clips"><thead><tr>' + "".join(f"<th>{c}</th>" for c in cols) + "</tr></thead><tbody>")
    for k, r in enumerate(rows, 1):
        status = e(r["status"]) + (f"<br><small>{e(r['reason'])}</small>" if r["status"] != "ok" else "")
        others = "<br>".join(f"{e(s)}: {e(st)}" for s, (st, _) in r["stages"].items() if st != "ok") or "ok"
        drawn, sheet = sheets.get(r["id"], (False, ""))
        cell = (f'<a href="{e(sheet)}"><img class="sheet" src="{e(sheet)}" alt="contact sheet of {e(r["id"])}"></a>'
                if drawn else e(sheet))
        clip = f"{e(r['id'])}<br><small>{e(r['label'])}, {e(r['speaker'])}<br>{e(os.path.basename(r['shard']))}</small>"
        out.append(f'<tr class="{"failed" if r["status"] != "ok" else "ok"}"><td class=n>{k}</td><td>{clip}</td>'
                   f"<td class=wrap>{status}</td><td>{others}</td>"
                   f"<td class=n>{_num(r['duration_s'], '.2f')}</td><td class=n>{_num(r['voiced_fraction'], '.2f')}</td>"
                   f"<td class=n>{r['windows']}</td><td class=n>{_num(r['face_found'], '.2f')}</td>"
                   f"<td class=n>{_num(r['face_px'], '.0f')}</td><td class=n>{_num(r['floor_fraction'], '.3f')}</td>"
                   f"<td class=n>{_num(r['score'], '.2f')}</td><td>{cell}</td></tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{e(n)}</p>' for n in notes]
    out.append(f"<script>\n{SCRIPT}\n</script>\n</body></html>\n")
    return "\n".join(out)


def report(store: str, out: str, *, dataset: str | None = None, build: str | None = None, sheets: int = 8,
           manifest: str | None = None, log=print) -> dict:
    """Write the report of one feature set of ``store`` into the folder ``out`` (module docstring);
    returns {"dataset", "key", "clips", "failed", "images", "sheets", "index"}. ``manifest`` is
    where the contact sheets look for the dataset root when the build's own decoded paths are gone."""
    from features.errors import ShardError

    if sheets < 0:
        raise ReportError(f"--sheets {sheets}: a count of contact sheets, 0 or more")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"--out {out} is a file: give a folder")
    dataset, key, record = pick(store, dataset, build)
    rows = []
    for path in shard_paths(store, dataset, key, record):
        try:
            rows += shard_rows(path)
        except ShardError as err:
            raise ReportError(f"{err} (avstore verify --dataset {dataset})") from None
        except (OSError, KeyError) as err:
            raise ReportError(f"{path}: cannot be read as a shard ({err})") from None
    rows = worst_first(rows)
    try:
        os.makedirs(os.path.join(out, "sheets"), exist_ok=True)
        for old in os.listdir(os.path.join(out, "sheets")):  # an earlier report's sheets
            if re.fullmatch(r"\d{3}_[A-Za-z0-9._-]*\.png", old):
                os.remove(os.path.join(out, "sheets", old))
    except OSError as err:
        raise ReportError(f"--out {out}: {err}") from None
    plot_status(status_counts(rows), os.path.join(out, "status.png"))
    images = {}
    for col, title, how in METRICS:
        name = f"hist_{col}.png"
        plot_histogram([r[col] for r in rows], title, how, os.path.join(out, name), integer=col == "windows",
                       unit_range=col in ("voiced_fraction", "face_found", "floor_fraction"),
                       mark=FLOOR_WARN if col == "floor_fraction" else None)
        images[title] = name
    notes, done = [], {}
    module = _contact_sheet_module() if sheets else None
    if sheets and module is None:
        notes.append(f"No contact sheets: {CONTACT_SHEET} is not here (an installed package without scripts/).")
    for k, r in enumerate(rows[:sheets] if module else []):
        rel = f"sheets/{k + 1:03d}_{_safe(r['id'])}.png"
        try:
            module.sheet(r["shard"], r["id"], out=os.path.join(out, rel), windows=2,
                         **({"manifest": manifest} if manifest else {}))
            done[r["id"]] = (True, rel)
        except Exception as err:  # one clip's sheet never costs the page
            done[r["id"]] = (False, f"contact sheet failed: {type(err).__name__}: {err}")
            log(f"report: {r['id']}: {done[r['id']][1]}")
    if module and len(rows) > sheets:
        notes.append(f"Contact sheets of the {sheets} worst clips (--sheets); python scripts/contact_sheet.py "
                     f"SHARD CLIP_ID draws any other.")
    from pipeline.files import atomic_path

    index = os.path.join(out, "index.html")
    with atomic_path(index, replace=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page(dataset, key, record, rows, reason_table(rows), images, done, notes))
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:  # the numbers, for scripts
        json.dump({"dataset": dataset, "key": key, "clips": [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items() if k != "has_video"}
            for r in rows]}, f, indent=1)
    return {"dataset": dataset, "key": key, "clips": len(rows), "failed": sum(r["status"] != "ok" for r in rows),
            "images": 1 + len(images) + sum(ok for ok, _ in done.values()),
            "sheets": sum(ok for ok, _ in done.values()), "index": index}
