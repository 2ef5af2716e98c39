"""tf.distribute strategies by name, and the per-worker facts the trainer needs.

- `one_device`: the first GPU, else the CPU.
- `mirrored`: every local GPU; without GPUs the CPU is split into
  `num_cpu_replicas` logical devices (must happen before TensorFlow initialises
  its runtime: call `configure_devices` first).
- `multi_worker`: `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`.
- `tpu`: `TPUClusterResolver(ADDRESS)` (or the `TPU_NAME` environment); a clear
  error when there is no TPU.
- `auto`: multi_worker when `TF_CONFIG` names more than one task, mirrored with
  more than one GPU, else one_device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.parse

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


class StrategyError(RuntimeError):
    """The requested strategy cannot run here; the message says why."""


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {e}") from e


def _cluster_size(tf_config: dict) -> int:
    return sum(len(v) for v in tf_config.get("cluster", {}).values())


def resolve_name(name: str) -> str:
    """`auto` made concrete (from TF_CONFIG and the local GPUs); others unchanged."""
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}.")
    if name != "auto":
        return name
    if _cluster_size(_tf_config()) > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "one_device"


def configure_devices(name: str, num_cpu_replicas: int) -> None:
    """Splits the CPU into `num_cpu_replicas` logical devices for `mirrored` without GPUs.

    Must run before TensorFlow creates its runtime (before any tensor exists).
    """
    if name != "mirrored" or tf.config.list_physical_devices("GPU") or num_cpu_replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == num_cpu_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_replicas
        )
    except RuntimeError as e:
        raise StrategyError(
            f"Cannot split the CPU into {num_cpu_replicas} devices: TensorFlow is already "
            f"initialised ({e}). Configure devices before creating any tensor."
        ) from e


def _check_tpu_address(address: str) -> None:
    """Fails fast when a grpc:// TPU address does not answer (instead of hanging)."""
    parsed = urllib.parse.urlparse(address)
    if parsed.scheme != "grpc" or not parsed.hostname:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8470), timeout=10).close()
    except OSError as e:
        raise StrategyError(f"--strategy tpu: no TPU answers at {address} ({e}).") from e


def make_strategy(
    name: str, *, tpu: str | None = None, num_cpu_replicas: int = 2
) -> tf.distribute.Strategy:
    """The strategy called `name` (see the module docstring)."""
    name = resolve_name(name)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(cpus) < 2 and num_cpu_replicas > 1:
            raise StrategyError(
                "--strategy mirrored without GPUs needs the CPU split into logical devices "
                "(train.num_cpu_replicas); TensorFlow was initialised before it could be done."
            )
        return tf.distribute.MirroredStrategy(cpus[: max(num_cpu_replicas, 1)])
    if name == "multi_worker":
        tf_config = _tf_config()
        if not tf_config.get("cluster"):
            raise StrategyError(
                "--strategy multi_worker reads the cluster from the TF_CONFIG environment "
                'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}; it is not set.'
            )
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "tpu":
        address = tpu or os.environ.get("TPU_NAME")
        if not address:
            raise StrategyError(
                "--strategy tpu: no TPU given. Pass --tpu ADDRESS (a TPU name, `local` on a "
                "TPU VM, or grpc://host:port) or set TPU_NAME."
            )
        _check_tpu_address(address)
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise StrategyError(f"--strategy tpu: no TPU found at {address!r} ({e}).") from e
        return tf.distribute.TPUStrategy(resolver)
    raise StrategyError(f"Unknown strategy {name!r}")


@dataclasses.dataclass
class WorkerInfo:
    """Where this process sits: `num_workers` input pipelines, this one `task_id`."""

    num_workers: int
    task_id: int
    is_chief: bool


def worker_info(strategy: tf.distribute.Strategy) -> WorkerInfo:
    """The worker count, this worker's index and whether it writes the real outputs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        task_type, task_id = resolver.task_type, resolver.task_id or 0
        num_workers = strategy.extended._num_workers  # noqa: SLF001 (no public API)
        is_chief = task_type == "chief" or (
            task_type == "worker"
            and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict()
        )
        index = task_id + (
            1 if "chief" in resolver.cluster_spec().as_dict() and task_type == "worker" else 0
        )
        return WorkerInfo(num_workers, index, is_chief)
    return WorkerInfo(1, 0, True)


def check_global_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch; a clear error when the replicas do not divide the batch."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise StrategyError(
            f"train.global_batch_size={global_batch} is not divisible by the "
            f"{replicas} replicas of the {type(strategy).__name__}; use a multiple of {replicas}."
        )
    return global_batch // replicas


TPU_STEPS_PER_EXECUTION = 32


def steps_per_execution(configured: int | None, strategy: tf.distribute.Strategy) -> int:
    """Train steps per call of the compiled function: `configured`, else 32 on TPU (a host
    round trip costs far more than a TPU step) and 1 elsewhere (a step on a GPU or CPU
    outlasts the round trip; see docs/training.md for the measured overhead)."""
    if configured is not None:
        return int(configured)
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return TPU_STEPS_PER_EXECUTION
    return 1
