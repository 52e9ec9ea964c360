"""Which `tf.distribute` strategy a run trains under, and the few helpers it needs.

The training loop is written once, in replica context: each replica computes
the gradient of its slice of every global batch, the slices' gradients are
summed across replicas, and from there on every replica does the same
arithmetic on the same numbers (mask, optimizer step, restore of the masked
elements, contribution). That is what keeps masks, contributions and masked
elements identical on every replica without a broadcast.
"""

import json
import os
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from tf_dpu.config import STRATEGIES
from tf_dpu.errors import ConfigError


# One strategy object per kind and process. Collective operations are keyed
# by numbers each strategy object counts from the same start, and TensorFlow
# caches what it resolved per key: a second MirroredStrategy over the same
# devices would reuse the first one's keys with other tensor shapes (another
# model) and abort with "Shape mismatch in the collective instance".
_STRATEGIES: Dict[Tuple[str, int], tf.distribute.Strategy] = {}


def make_strategy(name: str, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """The strategy a run asked for (one per kind and process); call it first.

    Args:
      name: `default` (no distribution), `mirrored` (all local GPUs, or the
        CPU split into `logical_cpus` devices) or `multi_worker` (one process
        per worker, cluster from the `TF_CONFIG` environment variable).
      logical_cpus: with `mirrored`, split the CPU into this many devices
        (0: use the GPUs, or the one CPU when there are none).

    Raises:
      ConfigError: an unknown name, a missing or bad `TF_CONFIG`, or devices
        that can no longer be configured.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if (name, logical_cpus) not in _STRATEGIES:
        _STRATEGIES[name, logical_cpus] = _build(name, logical_cpus)
    return _STRATEGIES[name, logical_cpus]


def _build(name: str, logical_cpus: int) -> tf.distribute.Strategy:
    if name == "mirrored":
        devices = None
        if logical_cpus:
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
            except RuntimeError:
                # Already configured by an earlier run in this process: fine
                # when it has the same number of devices.
                pass
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(devices) != logical_cpus:
                raise ConfigError(
                    f"--logical_cpus={logical_cpus}: TensorFlow already started with "
                    f"{len(devices)} CPU device(s); set it before anything else runs")
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if cluster_task().workers < 1:
            raise ConfigError("--strategy=multi_worker needs TF_CONFIG with a cluster "
                              "(see tf.distribute.MultiWorkerMirroredStrategy)")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"--strategy=multi_worker: {str(e).splitlines()[0]}") from None
    raise ConfigError(f"--strategy={name!r} is not one of {', '.join(STRATEGIES)}")


class Task(NamedTuple):
    """This process's place in the cluster that `TF_CONFIG` describes."""

    type: Optional[str]   # "chief", "worker", ...; None without TF_CONFIG
    index: int
    workers: int          # chief and worker tasks in the cluster
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        """True for the process that writes a multi-worker run's outputs.

        TensorFlow's convention: the `chief` task, or worker 0 when the
        cluster has no chief; a process without `TF_CONFIG` is its own chief.
        """
        if self.type in (None, "chief"):
            return True
        return self.type == "worker" and self.index == 0 and not self.has_chief


def cluster_task() -> Task:
    """This process's task from `TF_CONFIG` (a lone chief without it).

    Raises:
      ConfigError: `TF_CONFIG` is not the JSON TensorFlow documents.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Task(None, 0, 0, False)
    try:
        spec = json.loads(raw)
        cluster = spec.get("cluster", {})
        task = spec.get("task", {})
        chiefs = len(cluster.get("chief", []))
        return Task(task.get("type"), int(task.get("index", 0)),
                    chiefs + len(cluster.get("worker", [])), chiefs > 0)
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON of a cluster and a task ({e})") from None


def assign(pairs: Sequence[Tuple[tf.Variable, tf.Tensor]]) -> None:
    """Assigns values computed identically on every replica, from replica context.

    A mirrored variable cannot be assigned directly in replica context; the
    update goes through the strategy, which writes each replica's own value
    to its own copy (the values agree, so the copies stay identical).
    """
    if not tf.distribute.has_strategy():
        for variable, value in pairs:
            variable.assign(value)
        return

    def update(strategy, pairs):
        for variable, value in pairs:
            strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,),
                                     group=False)

    tf.distribute.get_replica_context().merge_call(update, args=(tuple(pairs),))


def replica_slice(size: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of this replica's contiguous share of a batch of `size` samples.

    Shares differ by at most one sample, so no replica is left empty while
    the batch has at least one sample per replica.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    index = tf.cast(context.replica_id_in_sync_group, size.dtype)
    return index * size // replicas, (index + 1) * size // replicas


def sum_over_replicas(values):
    """Sums a structure of tensors over all replicas (identity without a strategy)."""
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def minimum_over_workers(strategy: tf.distribute.Strategy, value: int) -> int:
    """The smallest of every worker's `value` (a collective: all workers must call it)."""
    def gather():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([value], tf.int64), axis=0)

    gathered = strategy.experimental_local_results(strategy.run(gather))[0]
    return int(tf.reduce_min(gathered))
