"""A contact sheet of one clip of a shard: look at the preprocessing before trusting it.

    python scripts/contact_sheet.py SHARD.h5 CLIP_ID [--out PNG] [--root DATASET_ROOT] [--windows 3]

(1) The waveform (source audio decoded as the pipeline does; without it the mean log-mel per
frame) with the VAD weights, the prosodic units (grey silence, green verbal, orange non-verbal) and
the 655 ms windows (hatched: ``video_ok`` 0); (2) ~8 video frames with the tracker box (yellow), the
key-point crop square (cyan) and the 68 landmarks, on the full frames when the source is reachable
(``--root``/``clips/source``; without ``--root`` the file the build decoded, whichever manifest it
was built with, else the root from ``--manifest``) and unchanged (sha256), else on the stored
crops; (3) per window its 16 aligned crops (ticks: frame times) and (4) its log-mel image.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features.audio import decode  # noqa: E402
from features.face import keypoint_box  # noqa: E402
from features.store import ShardReader  # noqa: E402
from features.video import iter_video  # noqa: E402
from pipeline.manifest import get_dataset  # noqa: E402

MANIFEST = os.path.join(REPO, "data_manifest.yaml")
UNIT_COLOURS = {0: "0.8", 1: "tab:green", 2: "tab:orange"}
UNIT_NAMES = {0: "silence", 1: "verbal", 2: "non-verbal"}


def decoded_source(shard, c):
    """(absolute path or None, why not) of the file the build decoded for clip ``c``: the Decode
    output of the shard's own hash chain (``<store>/<dataset>/decode/<stages.decode>/batch-NNNN.h5``,
    ``clips/source``, written with absolute paths) in the store that holds the shard. It finds the
    media whichever manifest the corpus was built with; a copied or pulled shard has no such file."""
    from features.store import read_group

    attrs = shard.attrs
    digest, batch = attrs.get("stages", {}).get("decode"), attrs.get("batch")
    store = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(shard.path)))))
    if not digest or batch is None:
        return None, "the shard names no decode stage"
    path = os.path.join(store, attrs["dataset"], "decode", digest, f"batch-{int(batch):04d}.h5")
    if not os.path.isfile(path):
        return None, f"no decode output beside the shard ({path})"
    try:
        clips = read_group(path, "clips", ["id", "source"])
    except Exception as err:  # damaged or foreign file: fall back to the manifest
        return None, f"{path}: {err}"
    ids = list(clips["id"])
    cid = shard.clips["id"][c]
    if cid not in ids or not clips["source"][ids.index(cid)]:
        return None, f"{path} records no source for {cid}"
    return str(clips["source"][ids.index(cid)]), ""


def _checked(path, want):
    """(path, "") when ``path`` is a file whose sha256 is ``want`` (or none is recorded), else (None, why)."""
    if not os.path.isfile(path):
        return None, f"{path} not found"
    with open(path, "rb") as f:
        if want and hashlib.file_digest(f, "sha256").hexdigest() != want:
            return None, f"{path} changed since the build (sha256)"
    return path, ""


def source_file(shard, c, root, manifest):
    """(path or None, why not) of the clip's source file, checked against its stored sha256.

    With ``root``: ``root/clips/source`` only. Otherwise the path the build decoded
    (``decoded_source``: right whichever manifest the corpus was built with), then the dataset
    root that ``manifest`` gives (a teammate's copy of the corpus)."""
    rel = shard.clips["source"][c]
    if not rel:
        return None, "no source file recorded"
    want = shard.clips["source_sha256"][c]
    if root is not None:
        return _checked(os.path.join(root, rel), want)
    path, why_built = decoded_source(shard, c)
    if path is not None:
        path, why_built = _checked(path, want)
        if path is not None:
            return path, ""
    try:
        root = get_dataset(manifest, shard.attrs["dataset"]).root_dir
    except Exception as err:  # unset ${VAR}, no manifest, unknown dataset: render without it
        return None, f"{why_built}; no dataset root ({err})"
    path, why = _checked(os.path.join(root, rel), want)
    return (path, "") if path is not None else (None, f"{why_built}; {why}")


def timeline(ax, bars, shard, c, wins, shown, path, t_max):
    vad, logmel, units = shard.vad(c), shard.logmel(c), shard.units(c)
    for t0, t1, kind in zip(units["t_begin"], units["t_end"], units["kind"]):
        ax.axvspan(t0, t1, color=UNIT_COLOURS.get(int(kind), "w"), alpha=0.3, lw=0)
    what, y = "no audio features", None
    if path is not None:
        try:
            sr = shard.attrs["config"]["decode"]["sr"]
            y, _ = decode(path, sr=sr, coef=shard.attrs["config"]["decode"]["preemphasis"])
            env = y[: len(y) // (sr // 100) * (sr // 100)].reshape(-1, sr // 100)  # min / max per 10 ms
            ax.fill_between((np.arange(len(env)) + 0.5) / 100, env.min(1), env.max(1), color="tab:blue", lw=0)
            what = "waveform, pre-emphasised"
        except Exception as err:  # e.g. no audio stream: fall back to the stored frames
            y, what = None, f"no waveform ({getattr(err, 'status', type(err).__name__)})"
    if y is None and len(logmel):
        ax.plot(np.arange(len(logmel)) * 0.01 + 0.0125, logmel.mean(1), color="tab:blue", lw=1)
        what = "mean log-mel per frame (no source audio)"
    ax.set_ylabel(what, fontsize=8)
    vax = ax.twinx()
    if len(vad):
        vax.step(np.arange(len(vad) + 1) * 0.01, np.r_[vad, vad[-1:]], where="post", color="tab:red", lw=1)
    vax.set_ylim(-0.05, 3.0), vax.set_yticks([0, 1]), vax.set_ylabel("VAD", color="tab:red", fontsize=8)
    handles = [ax.fill_between([], [], color=UNIT_COLOURS[k], alpha=0.3, label=UNIT_NAMES[k]) for k in UNIT_NAMES]
    ax.legend(handles=handles, loc="upper right", fontsize=7, ncol=3, framealpha=0.8)
    w = shard.windows
    for lvl, i in enumerate(wins):
        ok = w["video_ok"][i] == 1
        bars.broken_barh([(w["t_begin"][i], w["t_end"][i] - w["t_begin"][i])], (lvl % 2, 0.8),
                         facecolor="tab:purple" if i in shown else "tab:blue", alpha=0.8 if ok else 0.35,
                         hatch=None if ok else "//", edgecolor="k", lw=0.5)
        bars.text(w["t_begin"][i] + 0.01, lvl % 2 + 0.4, f"w{i}" + ("" if w["contiguous"][i] else " (gap)"),
                  va="center", fontsize=7, color="w" if ok else "k")
    bars.set_ylim(-0.1, 1.9), bars.set_xlim(0, t_max), bars.set_yticks([])
    bars.set_ylabel("windows", fontsize=8), bars.set_xlabel("time (s)")


def draw_face(ax, image, box, lm, margin, crop_size=None):
    """``image`` with the tracker box, the key-point crop square and the 68 landmarks; with
    ``crop_size``, ``image`` is a stored crop and the frame coordinates are mapped into it."""
    ax.imshow(image), ax.set_xticks([]), ax.set_yticks([])
    if not np.isfinite(lm).all():
        return
    square = keypoint_box(lm, margin=margin)
    if crop_size:
        scale = crop_size / (square[2] - square[0])
        box, lm, square = (box - np.tile(square[:2], 2)) * scale, (lm - square[:2]) * scale, None
    for b, colour, style in ((square, "c", "--"), (box, "y", "-")):
        if b is not None and np.isfinite(b).all():
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec=colour, ls=style, lw=1))
    ax.plot(lm[:, 0], lm[:, 1], ".", color="r", ms=1.5)
    ax.set_xlim(-0.5, image.shape[1] - 0.5), ax.set_ylim(image.shape[0] - 0.5, -0.5)  # points may leave it


class UnknownClip(ValueError):
    """The clip id is not in the shard."""


def sheet(shard_path, clip_id, *, out=None, root=None, manifest=MANIFEST, windows=3):
    """Draw the contact sheet of clip ``clip_id`` of the shard at ``shard_path`` (module
    docstring) into the PNG ``out`` (default ``contact_<clip_id>.png``); returns its path.
    ``root``: the dataset root holding ``clips/source`` (default: found by ``source_file``).
    Raises ``UnknownClip`` when the shard has no such clip."""
    shard = ShardReader(shard_path)
    ids = list(shard.clips["id"])
    if clip_id not in ids:
        raise UnknownClip(f"clip {clip_id!r} is not in {shard_path} (its {len(ids)} clips: {', '.join(ids[:30])})")
    c, cl, w = ids.index(clip_id), shard.clips, shard.windows
    wins = np.flatnonzero(w["clip"] == c)
    shown = [i for i in wins if w["video_ok"][i]][: windows]  # with a face first, then audio-only
    shown += [i for i in wins if i not in shown][: windows - len(shown)]
    # this clip's video rows only (a shard's crops are ~90 kB a frame); Shard has no public reader
    v = {k: shard.video(c, k) for k in ("time", "found", "interpolated", "box", "landmarks68")}
    n = len(v["time"])
    pick = np.unique(np.linspace(0, n - 1, min(8, n)).round().astype(int)) if n else []
    path, why = source_file(shard, c, root, manifest)
    t_max = max(float(cl["duration_s"][c]), len(shard.vad(c)) * 0.01, v["time"][-1] if n else 0.0, 0.1)

    height = 5.4 + 1.2 * (n_rows := max(1, len(shown)))
    fig = plt.figure(figsize=(16, height))
    gs = fig.add_gridspec(2 + n_rows, 1, height_ratios=[2.4, 1.7] + [0.95] * n_rows, hspace=0.35,
                          top=1 - 0.85 / height, bottom=0.25 / height)
    audio = gs[0].subgridspec(2, 1, height_ratios=[1.9, 0.5], hspace=0.08)
    ax = fig.add_subplot(audio[0])
    timeline(ax, fig.add_subplot(audio[1], sharex=ax), shard, c, wins, shown, path, t_max)
    ax.tick_params(labelbottom=False)
    frames, src = {}, "no video frames"
    if len(pick) and path is not None and cl["video_status"][c] == "ok":
        try:  # the frames as Faces saw them (same decoder, fps override, rotation)
            for k, (_, image) in enumerate(iter_video(path, fps=shard.attrs.get("manifest", {}).get("video_fps"))):
                if k in pick:
                    frames[k] = image
                if k >= pick[-1]:
                    break
            src = "full frames, yellow: tracker box, cyan: crop square, red: landmarks"
        except Exception as err:
            frames, why = {}, f"video decoding failed ({err})"
    if len(pick) and not frames:
        v["crop"] = shard.video(c, "crop", rows=pick)
        src = f"stored {v['crop'].shape[1]} px crops with the landmarks ({why})"
    strip = gs[1].subgridspec(1, max(1, len(pick)), wspace=0.05)
    margin = shard.attrs["config"]["faces"]["margin"]
    for j, r in enumerate(pick):
        fax = fig.add_subplot(strip[j])
        if r in frames:
            draw_face(fax, frames[r], v["box"][r], v["landmarks68"][r], margin)
        else:
            draw_face(fax, v["crop"][j], v["box"][r], v["landmarks68"][r], margin, v["crop"].shape[1])
        flag = "" if v["found"][r] else " no face"
        fax.set_xlabel(f"{v['time'][r]:.2f} s{' interp.' if v['interpolated'][r] else flag}", fontsize=8)
    if not len(pick):
        fig.add_subplot(strip[0]).text(0.5, 0.5, f"no video: {cl['video_status'][c]} {cl['video_reason'][c]}",
                                       ha="center", va="center"), plt.axis("off")
    for j, i in enumerate(shown):
        row = gs[2 + j].subgridspec(1, 2, width_ratios=[16, 1.25], wspace=0.03)
        cax, mel = fig.add_subplot(row[0]), fig.add_subplot(row[1])
        if w["video_ok"][i]:
            crops = shard.window_video(i)
            cax.imshow(np.concatenate(list(crops), axis=1)), cax.set_yticks([])
            cax.set_xticks((np.arange(len(crops)) + 0.5) * crops.shape[2],
                           [f"{v['time'][k]:.2f}" for k in w["video_frames"][i]], fontsize=6)
        else:
            cax.text(0.5, 0.5, f"video_ok = 0: {w['video_reason'][i]}", ha="center", va="center")
            cax.axis("off")
        cax.set_title(f"w{i}  [{w['t_begin'][i]:.3f}, {w['t_end'][i]:.3f}) s", fontsize=8, loc="left")
        mel.imshow(shard.window(i)[:, :, 0], origin="lower", aspect="auto", cmap="magma")
        mel.set_xticks([]), mel.set_yticks([]), mel.set_title("log-mel", fontsize=7)
    if not shown:
        fig.add_subplot(gs[2]).text(0.5, 0.5, "no windows", ha="center", va="center"), plt.axis("off")
    status, vstatus = (cl[k][c] + ("" if cl[k][c] == "ok" else f": {cl[r][c]}")
                       for k, r in (("status", "reason"), ("video_status", "video_reason")))
    fig.suptitle(f"{clip_id}  ({cl['label'][c]}, {cl['speaker'][c]}, {t_max:.2f} s, {len(wins)} windows)  "
                 f"{os.path.basename(shard_path)}\naudio {status}\nvideo {vstatus}\nframes: {src}",
                 fontsize=10, y=1 - 0.1 / height, va="top")
    out = out or f"contact_{clip_id}.png"
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shard"), p.add_argument("clip_id")
    p.add_argument("--out", help="PNG to write (default: contact_<CLIP_ID>.png)")
    p.add_argument("--root", help="dataset root holding clips/source (default: the path the build decoded, "
                                  "else the root that --manifest gives)")
    p.add_argument("--manifest", default=MANIFEST)
    p.add_argument("--windows", type=int, default=3, help="windows to show in full (default 3)")
    a = p.parse_args(argv)
    try:
        out = sheet(a.shard, a.clip_id, out=a.out, root=a.root, manifest=a.manifest, windows=a.windows)
    except UnknownClip as err:
        p.error(str(err))
    print(out)
    return out


if __name__ == "__main__":
    main()
