from pathlib import Path

import pytest

from dlcv import config
from dlcv.config import ConfigError
from dlcv.tasks import classify

REPO = Path(__file__).resolve().parents[1]


def resolve(recipe=None, sets=()):
    return classify.SCHEMA.resolve(recipe or {}, list(sets))


def leaves(tree, prefix=""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted != "model.options":
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_resolves_keeps_its_values_and_builds_its_model(path):
    import torch

    from dlcv.models import create_model, list_models
    from dlcv.tasks import segment, ssl
    recipe = config.load_yaml(path)
    task = {"classify": classify, "segment": segment, "ssl": ssl}[recipe["task"]]
    cfg = task.SCHEMA.resolve(recipe, [])
    assert cfg["task"] == task.DEFAULTS["task"]
    for key, value in leaves(recipe):  # what the recipe says is what runs
        assert config.get(cfg, key) == value, key
    assert cfg["train"]["epochs"] >= 1 and cfg["train"]["batch_size"] >= 1 and cfg["optim"]["lr"] > 0
    m = cfg["model"]
    assert m["name"] in (ssl.BACKBONES if task is ssl else list_models(task.DEFAULTS["task"]))
    options = {k: None if k.endswith("weights") else v for k, v in m["options"].items()}  # no downloads
    with torch.device("meta"):  # the architecture and its options build, without memory or weights
        assert isinstance(create_model(m["name"], num_classes=7, weights=None, **options), torch.nn.Module)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_synthetic_tree_holds_a_batch_of_every_recipe(path):
    """`dlcv data synth`'s tree trains every recipe at its own train.batch_size (counted from SynthSizes, not
    written)."""
    from dlcv.data.synth import SynthSizes
    s = SynthSizes()
    images = {"p1_data/train_50": s.p1_classes * s.p1_train_per_class,
              "p2_data/mini/train": s.p2_mini_classes * s.p2_mini_per_class,
              "p2_data/office/train": s.p2_office_classes * s.p2_office_train_per_class,
              "p3_data/train": s.p3_train}
    cfg = config.load_yaml(path)
    data = {"train_dir": "train_50" if cfg["task"] == "classify" else "train", **cfg["data"]}
    folder = f"{Path(data['root']).name}/{data.get('unlabeled_dir') or data['train_dir']}"
    available = images[folder]
    if cfg["task"] == "classify" and "val_dir" in data and data["val_dir"] is None:  # a held-out fraction
        available -= round(data.get("val_fraction", 0.1) * available)
    assert cfg["train"]["batch_size"] <= available, folder


def test_report_byol_recipe_is_the_reports():
    from dlcv.tasks import ssl
    cfg = ssl.SCHEMA.resolve(config.load_yaml("p2_byol_report"), [])
    assert (cfg["model"]["name"], cfg["model"]["weights"], cfg["data"]["image_size"]) == ("resnet50", None, 128)
    # both views in one batch, as the author's library (byol-pytorch) forwards them
    assert cfg["byol"] == {"projector_hidden": 4096, "projector_dim": 256, "base_momentum": 0.99,
                           "final_momentum": 0.99, "separate_views": False}
    assert (cfg["optim"]["name"], cfg["optim"]["lr"], cfg["train"]["batch_size"], cfg["train"]["epochs"]) == \
        ("adam", 1e-4, 8, 100)


@pytest.mark.parametrize("suffix", ["", "_cpu"])
def test_p2_recipes_of_one_budget_share_the_backbone_its_size_and_the_datas_root(suffix):
    # ssl table loads the BYOL and supervised backbones into the fine-tuning recipe's network
    from dlcv.tasks import ssl
    byol = ssl.SCHEMA.resolve(config.load_yaml(f"p2_byol{suffix}"), [])
    tuned = [resolve(config.load_yaml(f"p2_{name}{suffix}")) for name in ("supervised", "finetune")]
    for cfg in tuned:
        assert (cfg["model"]["name"], cfg["data"]["image_size"], cfg["data"]["root"]) == \
            (byol["model"]["name"], byol["data"]["image_size"], byol["data"]["root"])


def test_report_model_a_recipe_is_the_reports():
    cfg = resolve(config.load_yaml(REPO / "configs/p1_model_a.yaml"))
    assert cfg["model"]["name"] == "resnet50_cifar" and cfg["model"]["weights"] is None
    assert cfg["optim"] == {**cfg["optim"], "name": "adam", "lr": 1e-4, "weight_decay": 1e-4}


def test_report_model_b_recipe_is_the_reports():
    cfg = resolve(config.load_yaml(REPO / "configs/p1_model_b.yaml"))
    assert cfg["model"]["name"] == "efficientnet_v2_l" and cfg["model"]["weights"] == "DEFAULT"
    assert cfg["data"]["input_size"] == 224 and cfg["augment"]["rotation"] == 15.0
    assert cfg["sched"]["milestones"] == [5, 10, 15, 20] and cfg["train"]["batch_size"] == 8


def test_set_overrides_parse_yaml_values():
    cfg = resolve(sets=["train.epochs=7", "optim.lr=3e-4", "sched.milestones=[2, 4]", "model.weights=null",
                        "train.channels_last=false", "model.options.keep_maxpool=true"])
    assert cfg["train"]["epochs"] == 7 and cfg["optim"]["lr"] == 3e-4
    assert cfg["sched"]["milestones"] == [2, 4] and cfg["model"]["weights"] is None
    assert cfg["train"]["channels_last"] is False and cfg["model"]["options"] == {"keep_maxpool": True}


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*epochs"):
        resolve(sets=["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*train"):
        resolve({"trian": {"epochs": 1}})


def test_bad_choice_lists_the_valid_choices():
    with pytest.raises(ConfigError, match=r"train.precision.*'fp8'.*fp32, bf16, fp16"):
        resolve(sets=["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"model.name.*resnet50_cifar"):
        resolve(sets=["model.name=resnet1000"])


@pytest.mark.parametrize("item", ["train.epochs=two", "train.epochs=1.5", "train.max_steps=abc",
                                  "train.channels_last=3", "optim.lr=fast"])
def test_bad_value_type_is_an_error(item):
    with pytest.raises(ConfigError, match=item.split("=")[0]):
        resolve(sets=[item])


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        resolve(sets=["train.epochs"])


def test_int_is_accepted_where_float_expected():
    assert resolve(sets=["optim.lr=1"])["optim"]["lr"] == 1


def test_overriding_model_options_replaces_them():
    cfg = resolve({"model": {"name": "efficientnet_v2_l", "options": {"dropout": 0.4}}},
                  ["model.name=resnet18_cifar", "model.options={keep_maxpool: true}"])
    assert cfg["model"]["options"] == {"keep_maxpool": True}
    assert resolve({"model": {"options": {"a": 1}}}, ["model.options.b=2"])["model"]["options"] == {"a": 1, "b": 2}


def test_input_statistics_default_to_the_models_own_and_a_recipe_can_set_them():
    from dlcv.models import model_spec
    from dlcv.tasks import fill_model_defaults, segment
    cfg = segment.SCHEMA.resolve({"model": {"name": "fcn_small"}})
    assert cfg["data"]["mean"] is None and cfg["data"]["std"] is None  # null: the model's
    fill_model_defaults(cfg)
    assert cfg["data"]["mean"] == list(model_spec("fcn_small").mean) == [0.485, 0.456, 0.406]
    assert cfg["data"]["std"] == [0.229, 0.224, 0.225]
    own = fill_model_defaults(segment.SCHEMA.resolve({"model": {"name": "fcn_small"}}, ["data.mean=[0.5, 0.5, 0.5]"]))
    assert own["data"]["mean"] == [0.5, 0.5, 0.5] and own["data"]["std"] == [0.229, 0.224, 0.225]
