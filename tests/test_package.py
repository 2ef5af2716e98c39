"""care_tf as installed: the wheel holds every module, the configs and a script per CLI."""

import ast
import configparser
import importlib.util
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
