"""Command lines in a hostile environment: another Keras backend chosen, a server down."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = [
    "care_tf.train",
    "care_tf.evaluate",
    "care_tf.export",
    "care_tf.convert",
    "care_tf.quickstart",
    "care_tf.data.make_tfrecords",
    "care_tf.transfer.make_scenes",
]


def _run(argv, env_changes=None, drop=(), cwd=ROOT, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.update(env_changes or {})
    for name in drop:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def _lines(text: str) -> list[str]:
    """stderr without TensorFlow's C++ start-up chatter."""
    noise = ("I0000", "W0000", "WARNING: All log messages", "To enable the following")
    return [line for line in text.splitlines() if line.strip() and not line.startswith(noise)]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_under_another_backend_selects_tensorflow(module):
    proc = _run(["-m", module, "--help"], {"KERAS_BACKEND": "jax"})
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "Traceback" not in proc.stderr
    (note,) = _lines(proc.stderr)
    assert note.startswith("note: KERAS_BACKEND") and "'jax'" in note and "tensorflow" in note


def test_no_note_when_the_backend_is_already_tensorflow():
    proc = _run(["-m", "care_tf.train", "--list_configs"], {"KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0 and "quickstart" in proc.stdout
    assert _lines(proc.stderr) == []


def test_keras_json_backend_is_overridden_with_a_note(tmp_path):
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    proc = _run(
        ["-m", "care_tf.train", "--list_configs"],
        {"KERAS_HOME": str(tmp_path)},
        drop=["KERAS_BACKEND"],
    )
    assert proc.returncode == 0, proc.stderr
    (note,) = _lines(proc.stderr)
    assert f"{tmp_path}/keras.json" in note and "'jax'" in note


def test_command_that_loads_keras_runs_on_tensorflow_under_jax(tmp_path):
    # jax is not installed here: Keras would fail to import had the command kept it.
    missing = tmp_path / "no_such_run"
    proc = _run(
        ["-m", "care_tf.export", "--model_dir", str(missing), "--out", str(tmp_path / "out")],
        {"KERAS_BACKEND": "jax"},
    )
    lines = _lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 2, lines
    assert lines[0].startswith("note: KERAS_BACKEND")
    assert lines[1].startswith("error:") and str(missing) in lines[1]


@pytest.fixture
def dead_port():
    """A loopback port bound (so nobody else takes it) but not listening: refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # never decoded: the server is down
    return str(path)


def test_rest_client_names_an_unreachable_server(dead_port, image_file):
    url = f"http://127.0.0.1:{dead_port}"
    proc = _run([os.path.join(ROOT, "export", "rest_client.py"), "--url", url, image_file])
    assert proc.returncode == 2
    (line,) = _lines(proc.stderr)
    assert line.startswith(f"error: cannot reach TF Serving at {url}") and "--url" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (["--url", "localhost:8501", "IMAGE"], "must start with http://"),
        (["MISSING"], "cannot read image"),
        (["--pixels", "IMAGE"], "cannot read image"),  # not a decodable image
    ],
)
def test_rest_client_bad_input_is_one_line(tmp_path, image_file, args, words):
    missing = str(tmp_path / "missing.jpg")
    argv = [{"IMAGE": image_file, "MISSING": missing}.get(a, a) for a in args]
    proc = _run([os.path.join(ROOT, "export", "rest_client.py"), *argv])
    assert proc.returncode == 2, proc.stderr
    (line,) = _lines(proc.stderr)
    assert line.startswith("error: ") and words in line


@pytest.mark.skipif(
    importlib.util.find_spec("grpc") is None
    or importlib.util.find_spec("tensorflow_serving") is None,
    reason="grpcio / tensorflow-serving-api not installed",
)
def test_grpc_client_names_an_unreachable_server(dead_port, image_file):
    server = f"127.0.0.1:{dead_port}"
    proc = _run(
        [os.path.join(ROOT, "export", "grpc_client.py"), "--server", server, image_file],
        {"KERAS_BACKEND": "jax"},
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = _lines(proc.stderr)
    assert line.startswith(f"error: cannot reach TF Serving at {server}") and "--server" in line
