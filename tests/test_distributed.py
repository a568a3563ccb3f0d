"""torchrun with 2 CPU processes (gloo) trains exactly what one process trains with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import plaindet
from plaindet.weights import read_safetensors
from plaindet.engine.train_config import TrainConfig


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_shapes, tmp_path, measured):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    cfg = TrainConfig(
        model="plaindet-t",
        data=str(tiny_shapes),
        val_split="valid",
        epochs=1,
        batch_size=4,
        image_size=64,
        amp="off",
        lr=1e-4,
        warmup_steps=1,
        ema_decay=0.9,
        model_overrides={"neck_channels": 32, "backbone": {"depth": 2}},
    )
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(plaindet.config.to_dict(cfg)))

    _run([sys.executable, "-m", "plaindet", "train", "--config", str(cfg_file), "--out", str(tmp_path / "one")], tmp_path)
    output = _run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "plaindet", "train", "--config", str(cfg_file), "--out", str(tmp_path / "two")],
        tmp_path,
    )
    assert "2 process(es)" in output

    # Same steps, same losses: each process sees half of every global batch, and the loss normalizer
    # is the global object count, so the ranks' mean loss is the one-process loss.
    one = [json.loads(x) for x in (tmp_path / "one" / "steps.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one], rtol=1e-4)
    loss_gap = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(two, one))
    measured("torchrun 2 processes vs 1, same global batch: per-step loss, max relative diff", loss_gap)

    # Same weights (raw and EMA) after the run, up to float summation order.
    a, _ = read_safetensors(tmp_path / "one" / "last.safetensors")
    b, _ = read_safetensors(tmp_path / "two" / "last.safetensors")
    for k in a:
        if k.startswith(("model.", "ema.")):
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    weight_gap = max((b[k] - a[k]).abs().max().item() for k in a if k.startswith(("model.", "ema.")) and a[k].is_floating_point())
    measured("torchrun 2 processes vs 1, same global batch: final weights and EMA, max abs diff", weight_gap)
    # Metrics gathered over ranks: the evaluation saw every validation image once.
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert m2["AP"] == pytest.approx(m1["AP"], abs=1e-3)
