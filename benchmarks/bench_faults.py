#!/usr/bin/env python
"""A real SIGKILL at a random moment of a CPU meta-train with ``--ckpt-minutes 1``: how much work
it loses, and whether ``--resume`` then ends exactly where an uninterrupted run ends.

Three ``nfit meta-train`` processes on the same data and options: one straight through; one
killed (SIGKILL to its whole process group, data workers included, as a node failure or the OOM
killer would) at a moment drawn uniformly from ``--kill-between``; then ``--resume`` of the
killed one to the end. Lost work: the seconds from the last checkpoint's write to the kill, and
the steps logged after it. The two final initialisations are compared tensor by tensor.

    python benchmarks/bench_faults.py --data ../shared/datasets/dev/images --json benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfit.runs import load_init  # noqa: E402


def command(data: Path, run: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "nfit", "meta-train", str(data), "-o", str(run), "--res", str(args.res),
            "--steps", str(args.steps), "--ckpt-minutes", str(args.ckpt_minutes), "--log-every", "1",
            "--val-every", "100000", "--workers", str(args.workers), "--device", "cpu", "--seed", "0",
            *(["--width", str(args.width)] if args.width else []), *(["--depth", str(args.depth)] if args.depth else [])]


def run_to_end(cmd: list[str]) -> float:
    began = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - began


def kill_at(cmd: list[str], run: Path, seconds: float) -> dict:
    """Start ``cmd``, SIGKILL its process group after ``seconds``; what the run had saved and done."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(seconds)
    if proc.poll() is not None:
        raise SystemExit(f"the run ended before the kill at {seconds:.0f} s: give more --steps")
    os.killpg(proc.pid, signal.SIGKILL)
    killed = time.time()
    proc.wait()
    checkpoint = run / "checkpoint.json"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    done = max((e["step"] for e in logged if e.get("kind") == "train"), default=0)
    saved = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    return {"kill_after_s": round(seconds, 1), "steps_done": done, "checkpoint_step": saved,
            "lost_steps": done - saved,
            "lost_seconds": round(killed - (checkpoint.stat().st_mtime if checkpoint.exists() else killed - seconds), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "dev" / "images")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--ckpt-minutes", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--width", type=int, help="of the field (default: nfit's)")
    ap.add_argument("--depth", type=int, help="of the field (default: nfit's)")
    ap.add_argument("--kill-between", type=float, nargs=2, default=(75.0, 150.0), metavar=("LO", "HI"))
    ap.add_argument("--kills", type=int, default=1, help="killed and resumed runs, each at its own moment")
    ap.add_argument("--seed", type=int, help="of the kill moments (default: random)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    draw = random.Random(args.seed)
    kills = []
    with tempfile.TemporaryDirectory() as tmp:
        straight = Path(tmp) / "straight"
        straight_s = run_to_end(command(args.data, straight, args))
        reference = load_init(straight).params
        for i in range(args.kills):
            killed = Path(tmp) / f"killed{i}"
            kill = kill_at(command(args.data, killed, args), killed, draw.uniform(*args.kill_between))
            kill["resume_seconds"] = round(run_to_end([sys.executable, "-m", "nfit", "meta-train", "--resume",
                                                       str(killed)]), 1)
            resumed = load_init(killed).params
            kill["bit_identical"] = resumed.keys() == reference.keys() and all(
                bool((resumed[k] == reference[k]).all()) for k in reference)
            print(json.dumps(kill), flush=True)
            kills.append(kill)
    identical = all(k["bit_identical"] for k in kills)
    result = {"kills": kills, "straight_seconds": round(straight_s, 1),
              "seconds_per_step": round(straight_s / args.steps, 2), "bit_identical": identical,
              "max_lost_seconds": max(k["lost_seconds"] for k in kills),
              "command": " ".join(command(args.data, Path("RUN"), args)[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not identical:
        raise SystemExit("the resumed run's initialisation differs from the straight run's")


if __name__ == "__main__":
    main()
