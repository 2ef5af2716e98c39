"""Training input and resume on wrong data, files and settings (issue 21, data half):
an unreachable tf.data service, damaged TFRecord shards, an unprepared TFDS dataset,
damaged IDX files, out-of-range settings, edited or damaged run files."""

import io
import socket
import time

import pytest

from care_tf.data.service import wait_for_dispatcher
from care_tf.train.config import ConfigError, load_config


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "override",
    [
        "schedule.warmup_start_lr=-1.0",
        "schedule.end_lr=-0.1",
        "data.max_examples=-960",
        "data.num_examples=-5",
        "data.num_examples=0",
        "data.service_timeout=0",
        "optimizer.epsilon=0",
        "optimizer.beta_2=1.0",
        "optimizer.global_clipnorm=-1",
        "model.lambda_att=-1",
        "monitor.val_examples=0",
    ],
)
def test_out_of_range_settings_name_their_key(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"'{key}' must be .*got {value}"):
        load_config(None, [override])


# ------------------------------------------------------------------ tf.data service
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dispatcher_fails_after_the_wait_with_progress():
    out = io.StringIO()
    address = f"grpc://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"no tf.data service dispatcher answers at {address}"):
        wait_for_dispatcher(address, 1.5, every=0.5, out=out)
    assert 1.4 <= time.monotonic() - start < 5
    assert f"waiting for the dispatcher at {address}" in out.getvalue()


def test_listening_dispatcher_is_reached_at_once():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"grpc://127.0.0.1:{server.getsockname()[1]}"
        assert wait_for_dispatcher(address, 5.0) < 1.0
