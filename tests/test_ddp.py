"""DDP on CPU: 2 gloo processes under torchrun, for every task. Where the model's normalisation is
batch-independent (GroupNorm), the 2-process run must reproduce the 1-process run on the same data."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import TINY_SSL, sets_of


def run_dlcv(args, nproc, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "-m", "dlcv", *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rows_of(run):
    return list(csv.DictReader(open(run / "metrics.csv")))


def last_state(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def assert_runs_match(tmp_path, counted_metric, val_size, close_metrics):
    """One process and two are different code paths (gradients averaged over ranks vs over one batch,
    other reduction orders, other kernels on another CPU), so they are compared with tolerances, not
    bit for bit. Measured float noise after 2-3 epochs (AVX-512 and AVX2 kernels): losses within 3e-4
    relative, at most 1 of 100 validation predictions flipped. A real mismatch (a wrong or duplicated
    shard, augmentation not sliced per rank) trains on other images: it moves epoch 1's training loss
    by ~1e-2 relative (measured: another seed, i.e. other batches and initial weights, moves it 8e-3);
    the weights' 1e-3 bound is the same order of safety, not measured against a broken shard."""
    rows = [rows_of(tmp_path / f"n{n}") for n in (1, 2)]
    assert len(rows[0]) == len(rows[1]) == 2
    flips = max(2, val_size // 100)  # at most 1% of the predictions (and never less than 2) may differ
    for one, two in zip(*rows):
        assert abs(float(one[counted_metric]) - float(two[counted_metric])) <= flips / val_size + 1e-9
        assert float(one["train_loss"]) == pytest.approx(float(two["train_loss"]), rel=1e-3)
        for key in close_metrics:
            assert float(one[key]) == pytest.approx(float(two[key]), rel=3e-3), key
    w1, w2 = last_state(tmp_path / "n1")["model"], last_state(tmp_path / "n2")["model"]
    assert w1.keys() == w2.keys()
    one, two = (torch.cat([w[k].double().flatten() for k in sorted(w)]) for w in (w1, w2))
    assert (one - two).norm() <= 1e-3 * one.norm()  # all weights together: tiny biases alone are noisy
    assert len(last_state(tmp_path / "n2")["rng"]) == 2  # every rank's generator state, for exact resume


def train_both(tmp_path, task, recipe_text):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(recipe_text)
    for nproc in (1, 2):
        run_dlcv([task, "train", "-c", str(recipe), "--out", str(tmp_path / f"n{nproc}")], nproc, tmp_path)


@pytest.mark.cross_path
def test_classify_two_processes_match_one_process(p1_root, tmp_path):
    # GroupNorm: BatchNorm statistics are per process by design, so only a batch-independent
    # normalisation can match; augmentation is on to check its per-rank slicing. Widths with >= 2
    # channels per group: with 1 (instance norm on the stem) float noise alone (even a thread-count
    # change in one process) grows to a few % within 20 steps, which would hide a real mismatch.
    train_both(tmp_path, "classify", f"""task: classify
device: cpu
data: {{root: {p1_root}}}
model: {{name: cifar_convnet, options: {{widths: [32, 32, 32], norm: group}}}}
augment: {{flip: true, crop_padding: 2, pad_mode: reflect}}
optim: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 2, batch_size: 100, eval_batch_size: 30, precision: fp32, seed: 3}}
""")
    assert_runs_match(tmp_path, "val_acc", 100, ("val_loss",))


@pytest.mark.cross_path
def test_segment_two_processes_match_one_process(synth_root, tmp_path):
    # device-side flips, rotations and crops are drawn for the global batch and sliced per rank; the tiles
    # stream from disk (data.in_memory: false): each rank's DataLoader decodes exactly its share
    train_both(tmp_path, "segment", f"""task: segment
device: cpu
data: {{root: {synth_root / 'p3_data'}, crop_size: 48, limit_train: 16, limit_val: 6, in_memory: false, workers: 1}}
model: {{name: fcn_small, options: {{width: 16, norm: group}}}}
augment: {{flip: true, rotate90: true, scale: [0.5, 1.0]}}
optim: {{name: adam, lr: 0.003}}
train: {{epochs: 2, batch_size: 4, eval_batch_size: 4, precision: fp32, seed: 1, sync_batchnorm: true}}
""")
    assert_runs_match(tmp_path, "pixel_acc", 6 * 128 * 128, ("val_loss", "val_miou"))


@pytest.mark.cross_path
def test_ssl_runs_on_two_processes(synth_root, tmp_path):
    """BYOL's BatchNorms (backbone and projector) see each process's half batch (SyncBatchNorm is
    CUDA-only), so two processes cannot equal one exactly; they must learn about as well as one."""
    sets = sets_of({**TINY_SSL, "data.root": str(synth_root / "p2_data"), "train.epochs": 2,
                    "data.limit_train": 128, "knn.train_dir": "null"})
    for nproc in (1, 2):
        args = ["ssl", "pretrain", "-c", "p2_byol", "--out", str(tmp_path / f"n{nproc}")]
        run_dlcv(args + [a for s in sets for a in ("--set", s)], nproc, tmp_path)
    one, two = rows_of(tmp_path / "n1"), rows_of(tmp_path / "n2")
    assert len(one) == len(two) == 2
    assert float(two[-1]["train_loss"]) < float(two[0]["train_loss"])
    assert float(two[-1]["train_loss"]) == pytest.approx(float(one[-1]["train_loss"]), rel=0.3)
    state = last_state(tmp_path / "n2")
    assert len(state["rng"]) == 2 and state["step"] == 2 * (128 // 32)
    assert (tmp_path / "n2" / "backbone.pt").is_file()
