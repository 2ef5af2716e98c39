"""Command lines: `--help` without TensorFlow, program names, the Keras backend check, and
one `error:` line (exit 2) for a wrong argument, file or folder, traceback only with
--debug."""

import argparse
import os
import subprocess
import sys
import typing

import pytest

from care_tf import cli_errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {
    "care_tf.train": "from care_tf.train.cli import build_parser",
    "care_tf.evaluate": "from care_tf.evaluate.__main__ import build_parser",
    "care_tf.export": "from care_tf.export.__main__ import build_parser",
    "care_tf.data.make_tfrecords": "from care_tf.data.make_tfrecords import build_parser",
}


def _python(code: str, env: dict | None = None, argv0: str | None = None):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    if argv0:
        code = f"import sys; sys.argv[0] = {argv0!r}\n" + code
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_does_not_load_tensorflow(module):
    """Parsing --help imports neither TensorFlow nor Keras (it answers in well under 1 s)."""
    # `python -m` imports the package __init__ files first (with sys.argv[0] == "-m"),
    # as this does.
    code = (
        f"import importlib, sys\nimportlib.import_module({module.rsplit('.', 1)[0]!r})\n"
        f"{ENTRY_POINTS[module]}\n"
        "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    proc = _python(code, argv0="-m")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--debug" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED False False"


def test_help_of_python_m_is_fast_and_names_itself():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "care_tf.train", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m care_tf.train ")
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines()]
    assert "care_tf.train.cli" in imported and "tensorflow" not in imported


def test_plain_import_registers_the_layers(tmp_path):
    """Outside a command line's start-up, `import care_tf` registers every layer, so a
    saved care_tf model loads with plain Keras (the fine-tuning route)."""
    code = (
        "import care_tf, sys\n"
        "print('LOADED', 'keras' in sys.modules)\n"
        "import keras\n"
        "registered = keras.saving.get_registered_object('care_tf>ResNetBackbone')\n"
        "print('REGISTERED', registered is care_tf.ResNetBackbone)"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["LOADED", "True", "REGISTERED", "True"]


def test_console_script_name():
    code = "from care_tf.train.cli import build_parser\nprint(build_parser().prog)"
    assert _python(code, argv0="/usr/local/bin/care-train").stdout.strip() == "care-train"
    code = "from care_tf.evaluate.__main__ import build_parser\nprint(build_parser().prog)"
    assert _python(code, argv0="/x/care-evaluate").stdout.strip() == "care-evaluate"
    assert cli_errors.prog_name("care_tf.export") == "python -m care_tf.export"  # under pytest


def test_non_tensorflow_backend_is_named(tmp_path):
    proc = _python("import care_tf", env={"KERAS_BACKEND": "jax"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: care_tf needs the TensorFlow backend")
    assert "'jax'" in last and "KERAS_BACKEND=tensorflow" in last
    # keras.json is read as Keras reads it, when the variable is not set.
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    env = {"KERAS_HOME": str(tmp_path)}
    code = "import os; os.environ.pop('KERAS_BACKEND', None)\nimport care_tf"
    assert "'torch'" in _python(code, env=env).stderr


def test_strategy_names_agree():
    from care_tf.train import cli, config, strategy

    hint = typing.get_type_hints(config.TrainConfig)["strategy"]
    assert cli.STRATEGIES == strategy.STRATEGIES == typing.get_args(hint)


def test_export_limit_defaults_agree():
    from care_tf.export import __main__ as export_cli
    from care_tf.export import preprocess

    limits = preprocess.DEFAULT_LIMITS
    assert export_cli.MAX_IMAGE_PIXELS == limits.max_pixels
    assert export_cli.MAX_ASPECT_RATIO == limits.max_aspect_ratio


def _parser():
    parser = argparse.ArgumentParser()
    cli_errors.add_debug_flag(parser)
    parser.add_argument("--path")
    return parser


def _open(args):
    with open(args.path) as f:
        return len(f.read())


def test_runner_one_line_or_traceback_with_debug(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert cli_errors.run_cli(_parser(), _open, ["--path", missing]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {missing}: No such file")
    assert cli_errors.run_cli(_parser(), _open, ["--path", str(tmp_path)]) == 2
    assert "Is a directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        cli_errors.run_cli(_parser(), _open, ["--path", missing, "--debug"])

    def bug(args):
        return {}["key"]

    assert cli_errors.run_cli(_parser(), bug, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError") and "--debug" in err
    assert "Traceback" not in err


def test_tensorflow_error_keeps_our_message():
    import tensorflow as tf

    err = tf.errors.InvalidArgumentError(
        None, None, "assertion failed: [care_tf.data: cannot decode image] [b'x.jpg']\n\t [[n]]"
    )
    message, status = cli_errors.describe(err)
    assert status == 2 and message == "care_tf.data: cannot decode image] [b'x.jpg']"
