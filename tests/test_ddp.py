"""One training run on two processes (torchrun, gloo on CPU) gives the result of one process.

Each rank takes half of every batch and DDP averages the gradients, weighted so that the step is the
whole batch's; what differs is the order of float additions (and each half padded to its own longest
row, which the attention mask makes irrelevant), so the weights agree to float tolerance rather than
bit for bit. Dropout is off in this test: each rank draws its own masks for its half, so with
dropout on, two processes equal one in distribution, not in value. Tolerance: max |w_ddp - w_one| <= 1e-4 after 6 fp32 steps at lr 2e-3 (updates are ~1e-2).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bdcli.engine.distributed import World, shard

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finetune(out: Path, model: Path, data: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BDCLI_PROGRESS": "0"}
    args = ["attack", "finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "6",
            "--batch-size", "15", "--lr", "2e-3", "--device", "cpu", "--precision", "fp32", "--checkpoint-every", "3"]
    return subprocess.run([*launcher, "-m", "bdcli.cli.app", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=REPO)


@pytest.fixture
def no_dropout_encoder(tmp_path, tiny_encoder):
    import json
    import shutil

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_two_gloo_processes_train_like_one(tmp_path, no_dropout_encoder, small_sst2):
    from safetensors.torch import load_file

    tiny_encoder = no_dropout_encoder
    tmp_path = tmp_path / "runs"
    tmp_path.mkdir()

    one = _finetune(tmp_path / "one", tiny_encoder, small_sst2, [sys.executable])
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    two = _finetune(tmp_path / "two", tiny_encoder, small_sst2, torchrun)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    start = load_file(str(next(tiny_encoder.glob("*.safetensors"))))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, f"DDP weights differ from one process by {worst}"
    # The comparison means something only if training moved the weights well beyond the tolerance.
    moved = max((a[k] - start[k.removeprefix("bert.")]).abs().max().item()
                for k in a if k.removeprefix("bert.") in start)
    assert moved > 1e-3
    # Rank 0 alone published: one output folder, no stray rank folders or checkpoints beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.parametrize("n,size", [(15, 2), (32, 2), (1, 2), (7, 3)])
def test_shards_cover_the_batch_and_weights_restore_its_mean(n, size):
    rows = list(range(100, 100 + n))
    parts = [shard(rows, World(r, size, r)) for r in range(size)]
    used = sorted(i for mine, wt in parts if wt > 0 for i in mine)
    assert used == rows
    # What the ranks' weighted mean losses add up to (DDP averages over ranks) is the batch's mean loss.
    loss = {i: (i * 37 % 11) / 7.0 for i in rows}
    combined = sum(wt * sum(loss[i] for i in mine) / len(mine) for mine, wt in parts) / size
    assert combined == pytest.approx(sum(loss.values()) / n)
