"""P2: the BYOL model and its target update, pre-training runs, backbone export, the transfer
settings A-E, the table and the CSV prediction contract (hw1_2.sh)."""
import csv
import json
import subprocess

import pytest
import torch
import torchvision

from conftest import FIGURES, kill_after_epoch, REPO, sets_of, ssl_cfg
from dlcv.cli import main
from dlcv.contracts.backbone import export_backbone
from dlcv.engine import checkpoint
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.models.byol import BYOL, regression_loss, resnet_features, target_momentum
from dlcv.tasks import ssl

TINY_FINETUNE = {"model.name": "resnet18", "data.image_size": 32, "train.epochs": 2, "train.batch_size": 32,
                 "train.precision": "fp32", "device": "cpu", "train.channels_last": False,
                 "snapshot.epochs": [2]}


@pytest.fixture(scope="module")
def p2_root(synth_root):
    return synth_root / "p2_data"


@pytest.fixture(scope="module")
def pretrained(p2_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl") / "byol"
    cfg = ssl_cfg(p2_root, **{"train.epochs": 3, **FIGURES})
    summary = Trainer(ssl.SSLTask(cfg), cfg, out).fit()
    return out, cfg, summary


@pytest.fixture(scope="module")
def supervised_backbone(p2_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sl")
    assert main(["classify", "train", "-c", "p2_supervised", "--out", str(out / "run"),
                 *[a for s in sets_of({**TINY_FINETUNE, "data.root": str(p2_root), "snapshot.epochs": [1]})
                   for a in ("--set", s)]]) == 0
    assert main(["ssl", "export", str(out / "run" / "checkpoints" / "last.pt"), str(out / "sl.pt")]) == 0
    return out / "sl.pt"


# -- BYOL model --------------------------------------------------------------------------------------------

def test_target_momentum_follows_the_cosine_schedule():
    assert target_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert target_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert target_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert target_momentum(30, 100, 0.99, 0.99) == pytest.approx(0.99)  # the report's constant decay


def test_target_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model = BYOL(torchvision.models.resnet18(), 32, 16)
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    model.backbone.bn1.running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.update_target(0.9)
    after = model.state_dict()
    for key in before:
        if key.startswith("target_") and before[key].is_floating_point() and "running" not in key:
            online = before[key.replace("target_", "", 1)]
            assert torch.allclose(after[key], 0.9 * before[key] + 0.1 * online, atol=1e-6), key
    assert torch.equal(after["target_backbone.bn1.running_mean"], torch.full((64,), 0.5))
    for key in before:  # the online network is not touched
        if not key.startswith("target_"):
            assert torch.equal(after[key], before[key])


def test_separate_views_normalise_each_view_with_its_own_batch_statistics():
    torch.manual_seed(0)
    model = BYOL(torchvision.models.resnet18(), 32, 16, separate_views=True)
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32) * 3 + 1  # views with other statistics
    by_hand = {}
    for name, v in (("a", a), ("b", b)):  # each view alone through each network (train-mode BatchNorm)
        by_hand[name] = (model.predictor(model.embed(v)),
                         model.target_projector(resnet_features(model.target_backbone, v)).detach())
    expected = (regression_loss(by_hand["a"][0], by_hand["b"][1])
                + regression_loss(by_hand["b"][0], by_hand["a"][1])).mean()
    assert model(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    model.separate_views = False  # one batch of both views: other BatchNorm statistics, another loss
    assert abs(model(a, b).item() - expected.item()) > 1e-3


def test_byol_loss_is_symmetric_and_only_online_gets_gradients():
    torch.manual_seed(0)
    model = BYOL(torchvision.models.resnet18(), 32, 16)
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loss = model(a, b)
    assert 0 <= loss.item() <= 8
    torch.manual_seed(1)
    assert model(b, a).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert model.predictor[0].weight.grad is not None and model.backbone.conv1.weight.grad is not None
    assert all(p.grad is None for p in model.target_backbone.parameters())
    assert model.backbone.fc.weight.grad is None  # kept only for the export format


def test_pretraining_loss_falls_and_monitors_are_logged(pretrained, p2_root):
    out, _, summary = pretrained
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] * 0.9
    val_images = len(list((p2_root / "office" / "val").glob("*.jpg")))
    for r in rows:
        assert 0 < float(r["embed_std"]) <= 1.5  # ~1 spread out, 0 collapsed
        correct = float(r["knn_acc"]) * val_images  # a whole-set accuracy: (correct images) / images
        assert correct == pytest.approx(round(correct), abs=1e-6)
    assert summary.monitor == "knn_acc" and summary.best["knn_acc"] == max(float(r["knn_acc"]) for r in rows)
    assert (out / "figures" / "training_curves.png").stat().st_size > 0


def test_exported_backbone_loads_strictly_into_torchvision(pretrained, tmp_path):
    out, _, _ = pretrained
    state = torch.load(out / "backbone.pt", weights_only=True)
    torchvision.models.resnet18().load_state_dict(state)  # strict
    assert state["fc.weight"].shape == (1000, 512)
    last = checkpoint.load(out / "checkpoints" / "last.pt", "ssl")
    assert torch.equal(state["layer4.1.conv2.weight"], last["model"]["backbone.layer4.1.conv2.weight"])
    assert main(["ssl", "export", str(out / "checkpoints" / "epoch_001.pt"), str(tmp_path / "e1.pt")]) == 0
    torchvision.models.resnet18().load_state_dict(torch.load(tmp_path / "e1.pt", weights_only=True))


def test_pretraining_resumes_exactly_with_target_and_momentum(pretrained, p2_root, tmp_path, monkeypatch):
    straight, cfg, _ = pretrained
    out = tmp_path / "resumed"
    kill_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ssl.SSLTask(cfg), cfg, out).fit()
    monkeypatch.undo()
    Trainer(ssl.SSLTask(cfg), cfg, out, resume=True).fit()
    a = checkpoint.load(straight / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(out / "checkpoints" / "last.pt")["model"]
    assert any(k.startswith("target_backbone.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_without_knn_best_follows_the_lowest_loss(p2_root, tmp_path):
    cfg = ssl_cfg(p2_root, **{"train.epochs": 2, "knn.train_dir": "null", "data.limit_train": 64})
    summary = Trainer(ssl.SSLTask(cfg), cfg, tmp_path / "run").fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert summary.monitor == "train_loss" and "knn_acc" not in rows[0]
    assert summary.best["train_loss"] == min(float(r["train_loss"]) for r in rows)


def test_cifar_stem_backbone_pretrains_and_exports_its_own_shape(p2_root, tmp_path):
    from dlcv.models import create_model
    cfg = ssl_cfg(p2_root, **{"model.name": "resnet18_cifar", "model.options.keep_maxpool": "true",
                              "data.image_size": 32, "train.epochs": 1, "knn.train_dir": "null",
                              "data.limit_train": 64})
    Trainer(ssl.SSLTask(cfg), cfg, tmp_path / "run").fit()
    state = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    assert state["conv1.weight"].shape == (64, 3, 3, 3)  # the 3x3 stride-1 stem, not ImageNet's 7x7
    net = create_model("resnet18_cifar", num_classes=1000, keep_maxpool=True)
    net.load_state_dict(state)  # strict
    assert main(["ssl", "export", str(tmp_path / "run" / "checkpoints" / "last.pt"), str(tmp_path / "e.pt")]) == 0
    exported = torch.load(tmp_path / "e.pt", weights_only=True)
    assert all(torch.equal(exported[k], state[k]) for k in state) and exported.keys() == state.keys()
    stages = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                 net.layer4).eval()
    assert stages(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 2, 2)  # the ImageNet stem leaves 1x1 at 32 px


def test_empty_unlabeled_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "p2" / "mini" / "train").mkdir(parents=True)
    code = main(["ssl", "pretrain", "-c", "p2_byol", "--set", f"data.root={tmp_path / 'p2'}", "--out",
                 str(tmp_path / "run")])
    assert code == 2 and "mini/train" in capsys.readouterr().err


# -- transfer settings ---------------------------------------------------------------------------------------

def finetune_args(p2_root, **extra):
    return [a for s in sets_of({**TINY_FINETUNE, "data.root": str(p2_root), **extra}) for a in ("--set", s)]


def test_frozen_setting_keeps_backbone_weights_and_bn_statistics(pretrained, p2_root, tmp_path):
    backbone = pretrained[0] / "backbone.pt"
    assert main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "E", "--backbone", str(backbone),
                 "--out", str(tmp_path / "E"), *finetune_args(p2_root)]) == 0
    original = torch.load(backbone, weights_only=True)
    tuned = checkpoint.load(tmp_path / "E" / "checkpoints" / "last.pt", "classify")["model"]
    compared = 0
    for key, value in tuned.items():
        if key.startswith("fc."):  # the head: BatchNorm1d (no affine) + Linear to the 6 synthetic classes
            continue
        assert torch.equal(value, original[key]), key
        compared += 1
    assert tuned["fc.1.weight"].shape == (6, 512) and "fc.0.running_var" in tuned
    # every backbone tensor was compared (FrozenBatchNorm2d has no num_batches_tracked counter)
    assert compared == sum(not k.startswith("fc.") and "num_batches" not in k for k in original)
    assert any("running_var" in k for k in tuned)


def test_full_finetune_starts_from_the_backbone_and_changes_it(pretrained, p2_root, tmp_path):
    backbone = pretrained[0] / "backbone.pt"
    assert main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "C", "--backbone", str(backbone),
                 "--out", str(tmp_path / "C"), *finetune_args(p2_root, **{"train.epochs": 1})]) == 0
    state = checkpoint.load(tmp_path / "C" / "checkpoints" / "last.pt", "classify")
    original = torch.load(backbone, weights_only=True)
    assert not torch.equal(state["model"]["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    assert state["config"]["model"]["weights"] == str(backbone)


def test_backbone_of_another_architecture_lists_the_keys(pretrained, p2_root, tmp_path, capsys):
    code = main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "C", "--backbone",
                 str(pretrained[0] / "backbone.pt"), "--out", str(tmp_path / "x"),
                 *finetune_args(p2_root, **{"model.name": "resnet50"})])
    err = capsys.readouterr().err
    assert code == 2 and "missing keys" in err and "layer1.0.conv3.weight" in err and "shape mismatches" in err


def test_settings_needing_a_backbone_say_so(p2_root, tmp_path, capsys):
    code = main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "B", "--out", str(tmp_path / "b"),
                 *finetune_args(p2_root)])
    assert code == 2 and "setting B needs a supervised backbone" in capsys.readouterr().err


def test_table_has_five_rows_equal_to_the_runs(pretrained, supervised_backbone, p2_root, tmp_path):
    out = tmp_path / "table"
    assert main(["ssl", "table", "-c", "p2_finetune", "--sl-backbone", str(supervised_backbone),
                 "--ssl-backbone", str(pretrained[0] / "backbone.pt"), "--out", str(out),
                 *finetune_args(p2_root, **{"train.epochs": 1})]) == 0
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["setting"] for r in rows] == list("ABCDE")
    assert list(rows[0]) == ["setting", "pre-training", "fine-tuning", "val_acc", "best_val_acc", "best_epoch", "run"]
    for r in rows:
        summary = json.loads((out / f"setting_{r['setting']}" / "summary.json").read_text())
        assert float(r["val_acc"]) == pytest.approx(summary["final"]["val_acc"])
        frozen = r["setting"] in "DE"
        assert float(r["best_val_acc"]) == pytest.approx(summary["best"]["val_acc"])
        assert int(r["best_epoch"]) == summary["best"]["epoch"] and (r["fine-tuning"] != "full model") == frozen
    md = (out / "table.md").read_text().splitlines()
    assert len(md) == 7 and md[2].startswith("| A | none (random init) | full model |")
    # a second call reuses the finished runs instead of training again
    mtime = (out / "setting_C" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(["ssl", "table", "-c", "p2_finetune", "--sl-backbone", str(supervised_backbone),
                 "--ssl-backbone", str(pretrained[0] / "backbone.pt"), "--out", str(out), "--settings", "C",
                 *finetune_args(p2_root, **{"train.epochs": 1})]) == 0
    assert (out / "setting_C" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime


def test_supervised_export_from_classify_loads_strictly(supervised_backbone, p2_root):
    state = torch.load(supervised_backbone, weights_only=True)
    torchvision.models.resnet18().load_state_dict(state)
    assert state["fc.weight"].shape == (1000, 512)


def test_export_refuses_other_models(tmp_path, p2_root):
    from conftest import small_classify_cfg
    from dlcv.tasks.classify import ClassifyTask
    cfg = small_classify_cfg(p2_root.parent / "p1_data", **{"train.epochs": 1, "data.limit_train": 50})
    Trainer(ClassifyTask(cfg), cfg, tmp_path / "run").fit()
    with pytest.raises(DlcvError, match="export needs"):
        export_backbone(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "b.pt")


# -- prediction contract ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting_c_ckpt(pretrained, p2_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "C"
    assert main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "C", "--backbone",
                 str(pretrained[0] / "backbone.pt"), "--out", str(out), *finetune_args(p2_root)]) == 0
    return out / "checkpoints" / "best.pt"


def test_predict_csv_keeps_ids_and_order_and_ignores_labels(setting_c_ckpt, p2_root, tmp_path):
    val = list(csv.DictReader(open(p2_root / "office" / "val.csv")))
    chosen = val[::-3]  # a different order than the folder's
    lines = ["id,filename,label"] + [f"{100 + i},{r['filename']},None" for i, r in enumerate(chosen)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    result = subprocess.run(["bash", str(REPO / "hw1_2.sh"), str(tmp_path / "in.csv"), str(p2_root / "office" / "val"),
                             str(out)], capture_output=True, text=True, env={"DLCV_P2_CKPT": str(setting_c_ckpt),
                                                                           "PATH": "/usr/bin:/bin",
                                                                           "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "filename", "label"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(str(100 + i), r["filename"]) for i, r in enumerate(chosen)]
    assert all(r[2].isdigit() for r in rows[1:])
    # the same labels as the checkpoint's accuracy: predictions on all of val match the training's val_acc
    full = tmp_path / "full.csv"
    assert main(["ssl", "predict", "--ckpt", str(setting_c_ckpt), str(p2_root / "office" / "val.csv"),
                 str(p2_root / "office" / "val"), str(full)]) == 0
    truth = {r["filename"]: r["label"] for r in val}
    predicted = list(csv.DictReader(open(full)))
    accuracy = sum(truth[r["filename"]] == r["label"] for r in predicted) / len(val)
    summary = json.loads((setting_c_ckpt.parents[1] / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["best"]["val_acc"])  # best.pt is the best epoch


def test_predict_csv_bad_input(setting_c_ckpt, p2_root, tmp_path, capsys):
    (tmp_path / "nocol.csv").write_text("filename,label\na.jpg,1\n")
    assert main(["ssl", "predict", "--ckpt", str(setting_c_ckpt), str(tmp_path / "nocol.csv"), str(tmp_path),
                 str(tmp_path / "o.csv")]) == 2
    assert "missing column(s) id" in capsys.readouterr().err
    (tmp_path / "gone.csv").write_text("id,filename,label\n0,nothere.jpg,None\n")
    assert main(["ssl", "predict", "--ckpt", str(setting_c_ckpt), str(tmp_path / "gone.csv"), str(tmp_path),
                 str(tmp_path / "o.csv")]) == 2
    assert "nothere.jpg" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()
