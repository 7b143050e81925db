"""``nfit info``: what a .nf file, an init file or a run directory holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from nfit.api import info as describe
from nfit.cli.app import app, out, run


@app.command()
def info(
    file: Path = typer.Argument(..., help="A .nf file, an init file or a run directory.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Describe a .nf file (modality, shape, field, parameters, bytes, how it was fitted) or an init file."""
    data = run(lambda: describe(file))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if data["kind"] == "init":
        sig = data["signal"]
        rows = [
            ("file", data["file"]),
            ("kind", f"initialisation ({data['format']} v{data['format_version']}), sha256 {data['sha256'][:16]}..."),
            ("modality", data["modality"]),
            ("trained on", " x ".join(map(str, sig["shape"])) + f", {sig['channels']} channel(s)"
             + (f", {sig['rate']:g} Hz" if sig.get("rate") and data["modality"] == "audio" else "")),
            ("field", f"{data['field']['name']} " + json.dumps(data["field"]["config"])),
            ("parameters", f"{data['parameters']:,}"),
            ("algorithm", f"{data['algo']['name']} " + json.dumps(data["algo"]["config"])),
            ("test-time", json.dumps(data["test"])),
            ("data", json.dumps(data["data"])),
            ("training", ", ".join(f"{k}={v}" for k, v in data["train"].items())),
        ]
        if data.get("tiling"):
            rows.insert(4, ("tiling", _tiling_row(data)))
        sp = data.get("sparsity")
        if sp:
            rows.insert(6, ("sparsity", f"level {sp['level']} of {sp['rounds']} ({sp['prune']} pruning): density "
                            f"{sp['density']:.4f}, {sp['alive']:,} of {sp['weights']:,} weights, {sp['values']:,} values "
                            f"with biases" + (f"; dense-narrow equivalent: width {sp['dense_narrow_width']}"
                                              if sp["dense_narrow_width"] else "")))
        if data.get("run"):
            rows.insert(0, ("run", _run_row(data["run"])))
        for k, v in rows:
            table.add_row(k, _plain(str(v)))
        out.print(table)
        return
    fit_ = data["fit"]
    rows = [
        ("file", data["file"]),
        ("format version", f"{data['format_version']}, written by nfit {data['nfit_version'] or '(unknown)'}"),
        ("modality", data["modality"]),
        ("shape", " x ".join(map(str, data["shape"])) + f", {data['channels']} channel(s), {data['bit_depth']}-bit source"
         + ("" if data["rate"] is None else f", {data['rate']:g} {'Hz' if data['modality'] == 'audio' else 'fps'}, "
            f"{data['duration']:g} s")),
        ("source", str(data["source"])),
        ("tiling", _tiling_row(data)),
        ("field", f"{data['field']['name']} " + json.dumps(data["field"]["config"])
         + ("" if data["tiling"] is None else " (one per tile)")),
        ("parameters", f"{data['parameters']:,}"),
        ("stored values", f"{data['values']:,} " + _coding_row(data) + f" (density {data['density']:.4f}"
         + (f", mask {'embedded' if data['mask'] == 'embedded' else 'in the initialisation'})" if data["mask"] else ")")),
        ("bytes", _size_row(data)),
        ("init", json.dumps(data["init"])),
        ("fit", ", ".join(f"{k}={v}" for k, v in fit_.items())),
    ]
    for k, v in rows:
        table.add_row(k, _plain(v))
    out.print(table)


def _tiling_row(data: dict[str, Any]) -> str:
    """How a signal is tiled, in one cell: none, or tile size, overlap and count."""
    t = data.get("tiling")
    if t is None:
        return "none: one field for the whole signal"
    grid = " x ".join(map(str, t["grid"])) + f" = {t['count']:,} tiles of " if "grid" in t else "tiles of "
    return f"{grid}{' x '.join(map(str, t['tile']))}, overlap {' x '.join(map(str, t['overlap']))} ({t['blend']} blend)"


def _run_row(run: dict[str, Any]) -> str:
    """A run directory's progress in one cell: steps, speed, validation, last checkpoint, plot."""
    parts = [f"{run['algo']}, step {run['steps']:,} of {run['target_steps']:,}"]
    if run["seconds_per_step"]:
        parts.append(f"{run['seconds_per_step']:g} s per step ({run['seconds'] / 3600:.2f} h of training)")
    if run["best_val"]:
        parts.append(f"best validation {run['best_val']['psnr']:.2f} dB at step {run['best_val']['step']:,}, "
                     f"last {run['last_val']['psnr']:.2f} dB at step {run['last_val']['step']:,}")
    if run["last_checkpoint"]:
        parts.append(f"last checkpoint: step {run['last_checkpoint']['step']:,} at {run['last_checkpoint']['written']}")
    if run["plot"]:
        parts.append(f"plot: {run['plot']}")
    return "; ".join(parts)


def _coding_row(data: dict[str, Any]) -> str:
    coding = data["coding"]
    if coding is None:
        return data["dtype"]
    diff = "differences from the initialisation" if coding["relative_to"] == "init" else "values"
    payload = "" if coding.get("bytes") is None else f", {coding['bytes']:,}-byte payload"
    if payload and data["bytes"] is not None:  # the rest of the file: safetensors' header and nfit's metadata
        payload += f" and {data['bytes'] - coding['bytes']:,} bytes of header"
    latents = {"arm": "; latents by an autoregressive model of their decoded neighbours",
               "contexts": "; latents by the magnitudes of their decoded neighbours"}.get(coding.get("latents"), "")
    return f"coded: {coding['bits']}-bit {diff}, {coding['coder']}{payload}{latents}"


def _size_row(data: dict[str, Any]) -> str:
    """Bytes, bits per sample, and against what the source takes: raw, and as its file was."""
    unit = "pixel" if data["modality"] == "image" else "sample"
    text = f"{data['bytes']:,} ({data['bits_per_sample']:.2f} bits per {unit}; {data['bytes'] / data['raw_bytes']:.2f}x the raw " \
        f"{data['bit_depth']}-bit samples"
    if data.get("source_bytes"):
        text += f", {data['bytes'] / data['source_bytes']:.2f}x the source file's {data['source_bytes']:,} bytes"
    return text + ")"


def _plain(text: str) -> Text:
    """A metadata string as inert text: no rich markup, and control characters (terminal
    escape sequences a crafted file could carry) shown escaped."""
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))
