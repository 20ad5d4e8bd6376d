"""DDP on CPU: 2 gloo processes under torchrun must reproduce a 1-process run on the same data."""
import csv
import os
import subprocess
import sys

import pytest
import torch



def run_dlcv(args, nproc, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "-m", "dlcv", *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_ddp_matches_one_process(p1_root, tmp_path):
    recipe = tmp_path / "ddp.yaml"
    # GroupNorm: BatchNorm statistics are per process by design, so only a batch-independent
    # normalisation can match; augmentation is on to check its per-rank slicing. Widths with >= 2
    # channels per group: with 1 (instance norm on the stem) float noise alone (even a thread-count
    # change in one process) grows to a few % within 20 steps, which would hide a real mismatch.
    recipe.write_text(f"""task: classify
device: cpu
data: {{root: {p1_root}}}
model: {{name: cifar_convnet, options: {{widths: [32, 32, 32], norm: group}}}}
augment: {{flip: true, crop_padding: 2, pad_mode: reflect}}
optim: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 2, batch_size: 100, eval_batch_size: 30, precision: fp32, seed: 3}}
""")
    for nproc in (1, 2):
        run_dlcv(["classify", "train", "-c", str(recipe), "--out", str(tmp_path / f"n{nproc}")], nproc, tmp_path)
    rows = [list(csv.DictReader(open(tmp_path / f"n{n}" / "metrics.csv"))) for n in (1, 2)]
    for one, two in zip(*rows):
        assert one["val_acc"] == two["val_acc"]
        for key in ("train_loss", "val_loss"):
            assert float(one[key]) == pytest.approx(float(two[key]), rel=1e-5), key
    w1 = torch.load(tmp_path / "n1/checkpoints/last.pt", weights_only=False)["model"]
    w2 = torch.load(tmp_path / "n2/checkpoints/last.pt", weights_only=False)["model"]
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-4), key
    two_proc = torch.load(tmp_path / "n2/checkpoints/last.pt", weights_only=False)
    assert len(two_proc["rng"]) == 2  # every rank's generator state, for exact resume
