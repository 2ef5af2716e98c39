"""Small shared builders for the test-suite (tiny CARE models, parameter counts, bench scripts)."""

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import numpy as np
import tensorflow as tf

import care_tf


def n_params(variables) -> int:
    """Number of scalars in `variables`."""
    return sum(int(np.prod(v.shape)) for v in variables)


def tiny_care(
    total_steps: int = 100, num_blocks: int = 2, transformer_kwargs: dict | None = None, **kwargs
) -> care_tf.CARE:
    """A CARE model cheap enough for CPU tests: ResNet-18 at 1/8 width, 32 px."""
    return care_tf.CARE.from_preset(
        "resnet18",
        image_size=32,
        backbone_kwargs={"base_channels": 8},
        transformer_kwargs={"num_blocks": num_blocks, **(transformer_kwargs or {})},
        hidden_dim=64,
        projection_dim=32,
        total_steps=total_steps,
        **kwargs,
    )


def load_bench(name: str) -> ModuleType:
    """The script `bench/<name>.py` imported as a module (bench/ is not a package)."""
    path = os.path.join(os.path.dirname(__file__), "..", "bench", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def hold_lock(directory) -> subprocess.Popen:
    """A child process holding `care_tf.locking.DirLock(directory)` (kill it to release)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import time\nfrom care_tf.locking import DirLock\n"
        f"DirLock({str(directory)!r}, 'test').acquire()\nprint('locked', flush=True)\n"
        "time.sleep(120)"
    )
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def start_data_service(num_workers: int = 2):
    """An in-process tf.data service: a dispatcher and `num_workers` workers on 127.0.0.1."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    port = dispatcher.target.rsplit(":", 1)[1]
    workers = [
        service.WorkerServer(
            service.WorkerConfig(
                dispatcher_address=f"127.0.0.1:{port}", worker_address="127.0.0.1:%port%"
            )
        )
        for _ in range(num_workers)
    ]
    return f"grpc://127.0.0.1:{port}", dispatcher, workers
