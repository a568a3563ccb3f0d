"""Kill test: SIGKILL a training run at random moments (mid-step and mid-save), resume it each time,
and check that it ends bit for bit where an uninterrupted run ends, with every checkpoint loadable.

    python benchmarks/kill_test.py [--kills 5] [--seed 0] [--keep DIR]

Both runs are the same ``plaindet train`` command in child processes (one thread each). The run saves
``last.safetensors`` after every step, so kills often land while a checkpoint is being written; a
kill is "mid-save" when a temporary checkpoint file exists at that instant. Prints a table of kills
and the comparison; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml


def steps_done(out: Path) -> int:
    f = out / "steps.jsonl"
    return len(f.read_text().splitlines()) if f.is_file() else 0


def saving(out: Path) -> bool:
    return out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir())


def check_checkpoints(out: Path) -> int:
    """Every checkpoint on disk loads as a model and as a training state; returns how many."""
    import plaindet
    from plaindet.engine.train_state import TrainState

    n = 0
    for p in sorted(out.glob("*.safetensors")):
        TrainState(p)
        plaindet.load(p)
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from plaindet.config import to_dict
    from plaindet.data.shapes import ensure_shapes
    from plaindet.engine.train_config import TrainConfig

    work = args.keep or Path(tempfile.mkdtemp(prefix="plaindet-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    data = ensure_shapes(work / "shapes", train=24, val=4)
    cfg = TrainConfig(
        model="plaindet-t", data=str(data), val_split="valid", epochs=3, batch_size=4, image_size=96, amp="bf16",
        warmup_steps=3, save_every_steps=1, save_every=1, augment={"crop": 0.5, "hflip": 0.5},
    )  # fmt: skip
    (work / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "plaindet", "train", "--config", str(work / "cfg.yaml"), "--out", str(out), "--resume", "auto"]

    t0 = time.time()
    ref = work / "ref"
    subprocess.run(command(ref), env=env, check=True, capture_output=True)
    ref_time = time.time() - t0
    total = steps_done(ref)
    print(f"uninterrupted run: {total} steps in {ref_time:.0f} s")

    run = work / "killed"
    rows = []
    for k in range(args.kills):
        proc = subprocess.Popen(command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_steps = steps_done(run)
        mode = "mid-save" if k % 2 == 0 else "random"
        if mode == "mid-save":
            # Wait until some steps are done, then kill the instant a checkpoint is being written.
            target = start_steps + rng.randint(1, 3)
            while proc.poll() is None and not (steps_done(run) >= target and saving(run)):
                time.sleep(0.002)
        else:
            # A random instant after the run has got going (model built, first step under way).
            while proc.poll() is None and steps_done(run) <= start_steps:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 2.0))
        was_saving = saving(run)
        if proc.poll() is not None:
            print(f"kill {k + 1}: the run finished before the kill; use more steps")
            return 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at = steps_done(run)
        n = check_checkpoints(run)
        rows.append((k + 1, mode, at, "yes" if was_saving else "no", n))

    subprocess.run(command(run), env=env, check=True, capture_output=True)

    print(f"\n{'kill':>4}  {'aim':>8}  {'steps logged':>12}  {'tmp file present':>16}  {'checkpoints load':>16}")
    for kill, mode, at, mid, n in rows:
        print(f"{kill:>4}  {mode:>8}  {at:>12}  {mid:>16}  {str(n) + ' of ' + str(n):>16}")

    from plaindet.weights import read_safetensors

    a, _ = read_safetensors(ref / "last.safetensors")
    b, _ = read_safetensors(run / "last.safetensors")
    keys = [k for k in a if k.startswith(("model.", "ema.", "optim."))]
    same_keys = sorted(keys) == sorted(k for k in b if k.startswith(("model.", "ema.", "optim.")))
    unequal = [k for k in keys if k in b and not torch.equal(a[k], b[k])]
    steps_a = [json.loads(x) for x in (ref / "steps.jsonl").read_text().splitlines()]
    steps_b = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    same_steps = [(r["step"], r["loss"]) for r in steps_a] == [(r["step"], r["loss"]) for r in steps_b]
    print(f"\nfinal tensors compared: {len(keys)} (weights, EMA, optimizer); bitwise different: {len(unequal)}")
    print(f"per-step losses identical: {same_steps} ({len(steps_a)} vs {len(steps_b)} steps)")
    print(f"checkpoints in the resumed run's folder that load: {check_checkpoints(run)}")
    ok = same_keys and not unequal and same_steps
    print("PASS" if ok else f"FAIL {unequal[:5]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
