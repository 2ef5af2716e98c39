"""Config schema: shipped configs, errors naming the key, overrides, derived values, docs."""

import glob
import os

import pytest

from care_tf.train import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_configs_present():
    names = {os.path.basename(p) for p in CONFIGS}
    assert "quickstart.yaml" in names
    for method in ("care", "byol"):
        for bb in ("r50", "r50x2", "r101", "r152"):
            for ep in (100, 200, 400, 800):
                assert f"{method}_{bb}_{ep}ep.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_validates(path):
    cfg = C.load_config(path)
    with open(path) as f:
        assert "python -m care_tf.train --config configs/" in f.read()  # the command line
    assert cfg.name == os.path.basename(path).removesuffix(".yaml")


def test_paper_recipe_derived():
    cfg = C.load_config(os.path.join(ROOT, "configs", "care_r50_100ep.yaml"))
    assert cfg.model.backbone == "resnet50" and cfg.model.t_stream and cfg.model.sync_bn
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.train.precision == "mixed_float16"
    d = C.derive(cfg, cfg.data.num_examples)
    assert d.steps_per_epoch == 1251 and d.total_steps == 125100 and d.warmup_steps == 12510
    assert d.peak_lr == pytest.approx(0.2)  # 0.05 * 1024 / 256
    byol = C.load_config(os.path.join(ROOT, "configs", "byol_r152_800ep.yaml"))
    assert not byol.model.t_stream and byol.model.backbone == "resnet152"
    assert C.derive(byol, 1281167).total_steps == 800 * 1251


def test_quickstart_is_small():
    cfg = C.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"))
    d = C.derive(cfg, cfg.data.max_examples)
    # 1024 steps: about 3-4 min of pretraining on 2 cores
    assert cfg.model.image_size <= 32 and d.total_steps <= 1024


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text, key",
    [
        ("optimizer:\n  lr: 0.1\n", "optimizer.lr"),
        ("optimiser:\n  base_lr: 0.1\n", "optimiser"),
        ("optimizer:\n  base_lr: fast\n", "optimizer.base_lr"),
        ("train:\n  global_batch_size: 12.5\n", "train.global_batch_size"),
        ("model:\n  t_stream: 'yes'\n", "model.t_stream"),
        ("optimizer:\n  name: adam\n", "optimizer.name"),
        ("optimizer:\n  base_lr: -1\n", "optimizer.base_lr"),
        ("model: 3\n", "model"),
    ],
)
def test_bad_key_or_type_names_the_key(tmp_path, text, key):
    with pytest.raises(C.ConfigError, match=f"'{key}'"):
        C.load_config(_write(tmp_path, text))


def test_overrides_and_base(tmp_path):
    _write(tmp_path, "optimizer:\n  base_lr: 0.3\n  momentum: 0.8\n", "parent.yaml")
    path = _write(tmp_path, "base: parent.yaml\noptimizer:\n  momentum: 0.7\n")
    cfg = C.load_config(
        path,
        [
            "train.global_batch_size=64",
            "schedule.steps=10",
            "model.stem=null",
            "optimizer.name=lars",
        ],
    )
    assert cfg.optimizer.base_lr == 0.3 and cfg.optimizer.momentum == 0.7
    assert cfg.train.global_batch_size == 64 and cfg.schedule.steps == 10
    assert cfg.model.stem is None and cfg.optimizer.name == "lars"
    assert isinstance(C.load_config(path, ["optimizer.base_lr=1"]).optimizer.base_lr, float)
    assert C.load_config(path, ["optimizer.weight_decay=1e-4"]).optimizer.weight_decay == 1e-4
    with pytest.raises(C.ConfigError, match="'train.batch'"):
        C.load_config(path, ["train.batch=3"])
    with pytest.raises(C.ConfigError, match="key=value"):
        C.load_config(path, ["train.global_batch_size"])


def test_derive_steps_and_errors():
    cfg = C.from_dict(
        {"schedule": {"steps": 50, "warmup_steps": 5}, "train": {"global_batch_size": 8}}
    )
    d = C.derive(cfg, 100)
    assert (d.steps_per_epoch, d.total_steps, d.warmup_steps) == (12, 50, 5)
    with pytest.raises(C.ConfigError, match="global_batch_size"):
        C.derive(cfg, 4)
    bad = C.from_dict(
        {"schedule": {"steps": 5, "warmup_steps": 5}, "train": {"global_batch_size": 8}}
    )
    with pytest.raises(C.ConfigError, match="warmup"):
        C.derive(bad, 100)
    with pytest.raises(C.ConfigError, match="exclude_bias_and_norm"):
        C.from_dict({"optimizer": {"name": "sgd", "exclude_bias_and_norm": True}})


def test_resolved_roundtrip():
    cfg = C.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"))
    d = C.derive(cfg, 4096)
    import yaml

    values = yaml.safe_load(C.dump_yaml(C.resolved_dict(cfg, d)))
    assert values["derived"]["total_steps"] == d.total_steps
    assert C.from_dict(values) == cfg  # `derived:` is ignored on reload


def test_resume_config_check():
    from care_tf.train.loop import check_resume_config

    cfg = C.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"))
    saved = C.resolved_dict(cfg)
    check_resume_config(saved, cfg)
    changed = C.from_dict({**cfg.to_dict(), "checkpoint": {"every_steps": 5}})
    check_resume_config(saved, changed)  # checkpoint keys may change
    lower = C.from_dict(
        {**cfg.to_dict(), "optimizer": {**cfg.to_dict()["optimizer"], "base_lr": 0.01}}
    )
    check_resume_config(saved, lower)  # the remedy a NaN stop advises
    other = C.from_dict(
        {**cfg.to_dict(), "optimizer": {**cfg.to_dict()["optimizer"], "weight_decay": 0.1}}
    )
    with pytest.raises(C.ConfigError, match="optimizer.weight_decay"):
        check_resume_config(saved, other)


def test_docs_configs_md_up_to_date():
    with open(os.path.join(ROOT, "docs", "configs.md")) as f:
        assert f.read() == C.markdown(), (
            "docs/configs.md is stale: run "
            "`python -m care_tf.train.config --markdown > docs/configs.md`"
        )


def test_data_augment_sets_the_two_view_augmentation():
    from care_tf.train.experiment import make_augmenter

    cfg = C.load_config(None, ["data.augment={scale: [0.2, 1.0], blur_prob: [0.0, 0.0]}"])
    aug = make_augmenter(cfg)
    assert aug.scale == (0.2, 1.0) and aug.blur_prob == (0.0, 0.0)
    assert aug.solarize_prob == (0.0, 0.2)  # the paper's where not overridden
    assert aug.seed_value == cfg.train.seed
    default = make_augmenter(C.load_config(None, []))
    assert default.scale == (0.08, 1.0) and default.blur_prob == (1.0, 0.1)


@pytest.mark.parametrize(
    "augment", ["{scales: [0.2, 1.0]}", "{scale: [0.0, 1.0]}", "{blur_prob: [2.0, 0.0]}"]
)
def test_data_augment_errors_name_the_key(augment):
    from care_tf.train.experiment import make_augmenter

    cfg = C.load_config(None, [f"data.augment={augment}"])
    with pytest.raises(C.ConfigError, match=r"^Config key .data.augment."):
        make_augmenter(cfg)


@pytest.mark.parametrize("address", ["127.0.0.1:5000", "grpc://host:ab", "grpc://:5000"])
def test_data_service_address_is_checked_once_by_its_parser(address):
    path = os.path.join(ROOT, "configs", "quickstart.yaml")
    with pytest.raises(C.ConfigError, match="'data.service'"):
        C.load_config(path, [f"data.service={address}"])
    assert C.load_config(path, ["data.service=grpc://127.0.0.1:5000"]).data.service == (
        "grpc://127.0.0.1:5000"
    )
