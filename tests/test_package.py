"""care_tf as installed: the wheel holds every module, the configs and a script per CLI."""

import ast
import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from care_tf.train.config import from_dict, read_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules with a `__main__` block that are not user commands.
INTERNAL_MAINS = {
    "care_tf.export.verify",  # the fresh process care_tf.export checks each export in
    "care_tf.train.config",  # regenerates docs/configs.md
}


def build_wheel(out_dir) -> str:
    """`pip wheel` of a copy of the checkout (the build writes build/ and *.egg-info)."""
    src = os.path.join(out_dir, "src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    os.makedirs(src)
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    for name in ("care_tf", "configs"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name), ignore=ignore)
    wheels = os.path.join(out_dir, "wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", wheels],
        check=True,
        capture_output=True,
        cwd=out_dir,
    )
    (wheel,) = os.listdir(wheels)
    return os.path.join(wheels, wheel)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(str(tmp_path_factory.mktemp("wheel")))


def _checkout_files(folder: str, suffix: str) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(suffix):
                found.add(os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/"))
    return found


def _command_modules() -> set[str]:
    """care_tf modules that run as a command line (`if __name__ == "__main__":`)."""
    found = set()
    for path in _checkout_files("care_tf", ".py"):
        tree = ast.parse(open(os.path.join(ROOT, path)).read())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                found.add(path[: -len(".py")].replace("/", "."))
    return found - INTERNAL_MAINS


def test_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = _checkout_files("care_tf", ".py")
    assert modules and modules <= names, sorted(modules - names)
    configs = _checkout_files("configs", ".yaml")
    assert "configs/base/paper.yaml" in configs and "configs/quickstart.yaml" in configs
    shipped = {f"care_tf/{c}" for c in configs}
    assert shipped <= names, sorted(shipped - names)


def test_wheel_has_a_console_script_per_command_line(wheel):
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    targets = {value.split(":")[0] for value in scripts.values()}
    assert all(name.startswith("care-") for name in scripts)
    assert all(value.endswith(":main") for value in scripts.values())
    commands = _command_modules()
    assert "care_tf.quickstart" in commands and "care_tf.data.make_tfrecords" in commands
    assert targets == commands, (sorted(commands - targets), sorted(targets - commands))


def test_configs_resolve_by_name_inside_the_unpacked_wheel(wheel, tmp_path, monkeypatch):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The unpacked module finds the configs next to it: care_tf/configs/, not the checkout's.
    spec = importlib.util.spec_from_file_location(
        "installed_config_names", site / "care_tf" / "train" / "config_names.py"
    )
    names = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names)
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/ is not in the cwd
    assert names.config_dir() == site / "care_tf" / "configs"
    listed = names.list_configs()
    assert "quickstart" in listed and "care_r50_100ep" in listed and "paper" not in listed
    for arg in ("quickstart", "quickstart.yaml", "configs/quickstart.yaml"):
        assert names.resolve_config(arg) == str(site / "care_tf" / "configs" / "quickstart.yaml")
    assert names.resolve_config("no_such_config") == "no_such_config"
    # A config built on `base: base/paper.yaml` merges its base inside the package.
    paper = read_yaml(names.resolve_config("care_r50_100ep"))
    assert paper == read_yaml(os.path.join(ROOT, "configs", "care_r50_100ep.yaml"))
    assert from_dict(paper).optimizer.base_lr == 0.05


def test_config_names_in_the_checkout(tmp_path, monkeypatch):
    from care_tf.train.config import ConfigError, load_config
    from care_tf.train.config_names import list_configs

    monkeypatch.chdir(tmp_path)
    folder = os.path.join(ROOT, "configs")
    shipped = sorted(p[: -len(".yaml")] for p in os.listdir(folder) if p.endswith(".yaml"))
    assert list_configs() == shipped
    by_name = load_config("quickstart", ["train.seed=3"])
    assert by_name == load_config(
        os.path.join(ROOT, "configs", "quickstart.yaml"), ["train.seed=3"]
    )
    assert by_name.train.seed == 3
    (tmp_path / "quickstart").write_text("name: mine\n")  # an existing file wins over a name
    assert load_config("quickstart").name == "mine"
    with pytest.raises(ConfigError, match="--list_configs"):
        load_config("quickstart_typo")


def test_list_configs_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.train", "--list_configs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert "quickstart" in [r[0] for r in rows]
    assert all(os.path.isfile(r[1]) and r[1].endswith(f"{r[0]}.yaml") for r in rows)


def _fresh_venv(tmp_path, wheel) -> tuple[str, dict]:
    """A venv outside the checkout with the wheel installed (--no-deps); the heavy
    dependencies (TensorFlow, Keras...) come from this interpreter's site-packages through
    a .pth line, which adds that folder to sys.path but runs none of its .pth files (so
    not the checkout's editable install). Returns (venv bin folder, environment)."""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    assert deps in site.getsitepackages()
    with open(os.path.join(purelib, "deps.pth"), "w") as f:
        f.write(deps + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    return str(venv / "bin"), env


INSTALLED_FIT = """
import json, os, sys
import care_tf
from care_tf.train import load_config

assert care_tf.__file__.startswith(sys.prefix), care_tf.__file__
# (the dependencies' site-packages may lie inside the checkout, e.g. its .venv)
assert not [p for p in sys.path if p.startswith(CHECKOUT) and "site-packages" not in p], sys.path
assert "quickstart" in care_tf.list_configs() and "care_r50_100ep" in care_tf.list_configs()
assert load_config("configs/care_r50_100ep.yaml").optimizer.base_lr == 0.05  # its base: too
exp = care_tf.build_experiment("quickstart", overrides=TINY)
exp.fit(verbose=0)
exp.save("run")
with open(os.path.join("run", "train_state.json")) as f:
    print(json.dumps(json.load(f)))
"""


@pytest.mark.slow  # ~3 min on the shared 2-core machine: a fit and a whole tiny quickstart
def test_installed_wheel_trains_outside_the_checkout(wheel, tmp_path):
    bin_dir, env = _fresh_venv(tmp_path, wheel)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    tiny = [
        "model.base_channels=4",
        "model.hidden_dim=32",
        "model.projection_dim=16",
        "model.transformer_kwargs={num_blocks: 1}",
        "data.max_examples=64",
        "train.global_batch_size=8",
        "schedule.steps=2",
        "schedule.warmup_steps=1",
    ]
    code = INSTALLED_FIT.replace("CHECKOUT", repr(ROOT)).replace("TINY", repr(tiny))
    proc = subprocess.run(
        [os.path.join(bin_dir, "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["step"] == 2 and state["complete"] is True

    # The console script, under another Keras backend, from its shipped default config.
    quickstart = [
        os.path.join(bin_dir, "care-quickstart"),
        "--model_dir", "q", "--max_steps", "2",
        "--set", "train.global_batch_size=16", "--set", "data.max_examples=256",
        "--limit", "256", "--probe_epochs", "1", "--quantize", "none", "--no_progress",
    ]  # fmt: skip
    proc = subprocess.run(
        quickstart,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env, KERAS_BACKEND="jax"),
        timeout=1800,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "--config quickstart" in proc.stdout and "note: KERAS_BACKEND" in proc.stderr
    with open(cwd / "q" / "quickstart.json") as f:
        summary = json.load(f)
    assert summary["train"]["step"] == 2 and 0 <= summary["knn"]["top1"] <= 1
