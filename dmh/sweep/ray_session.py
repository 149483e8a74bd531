"""Joining a Ray cluster, or starting Ray in this process bound to 127.0.0.1; and what the cluster can give a trial
(:func:`describe_cluster`, :func:`check_resources`): a request no node can ever hold stops the sweep at once."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from dmh.sweep.declare import SweepError

# A trial's request (tune.with_resources' names) → Ray's resource names and the option that sets each.
RESOURCES = {"cpu": ("CPU", "--cpus-per-trial"), "gpu": ("GPU", "--gpus-per-trial"),
             "memory": ("memory", "--memory-per-trial")}


def connect_ray(address: str | None) -> bool:
    """Join a cluster if there is one, else start Ray in this process bound to 127.0.0.1.

    Order: ``--ray-address`` (``local`` = always in-process), ``$RAY_ADDRESS``, a cluster started with ``ray start``
    on this machine (what ``ray submit`` gives the script on a head node) if it answers, else in-process. Returns
    whether this call connected (and so must disconnect); an already initialised Ray (a test's shared session) is
    reused.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "local"):
        # A host:port that does not answer would keep ray.init retrying for a minute, then end in a traceback.
        if "://" not in address and address != "auto" and not reachable(address):
            raise SweepError(f"no Ray cluster answers at {address} (--ray-address or $RAY_ADDRESS): is it running?")
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise SweepError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        return True
    # Not ray.init(address="auto"): besides the `ray start` record it adopts any Ray it finds running here, such as
    # another sweep's in-process Ray, which ends with that sweep. And not ray.init() either: it would keep retrying a
    # stopped cluster's record for minutes, and it cannot be told to bind 127.0.0.1 only in case it starts Ray.
    recorded = recorded_cluster_address() if address is None else None
    if recorded and reachable(recorded):
        try:
            ray.init(address=recorded, log_to_driver=True)
            return True
        except ConnectionError:
            pass  # stopped between the probe and the connection: start our own
    # Quiet while it starts (its start and its local token are no news here), Ray's usual level after.
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.INFO)
    return True


def recorded_cluster_address() -> str | None:
    """The GCS address of the latest cluster started with ``ray start`` on this machine, or None.

    ``ray start`` writes it to ``ray_current_cluster`` in Ray's temp folder, and ``ray.init()`` reads it from there:
    the ``address`` argument of ``ray.init`` documents the file as ``/tmp/ray/ray_current_cluster`` ("the address of
    the latest cluster started"; https://docs.ray.io/en/latest/ray-core/api/doc/ray.init.html), and "Starting Ray"
    (https://docs.ray.io/en/latest/ray-core/starting-ray.html) says ``ray.init()`` connects to "the latest Ray
    instance that was started on the same machine using ray start". Ray has no public call that returns it. Its
    temp folder moves with ``RAY_TMPDIR`` (or ``TMPDIR``) as Ray's own lookup does. The record outlives the cluster.
    """
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        return (Path(temp) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a cluster's GCS), within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Cluster:
    """What the Ray cluster a sweep runs on can give a trial."""

    nodes: tuple[dict[str, float], ...]  # each alive node's resources, Ray's names (CPU, GPU, memory in bytes)
    autoscaling: bool  # an autoscaler may add nodes
    where: str  # how messages name it: "started in this process", "at 10.0.0.1:6379"


def describe_cluster(started_here: bool) -> Cluster:
    """The cluster Ray is connected to; ``started_here``: by :func:`connect_ray`, in this process (so without an
    autoscaler)."""
    nodes = tuple(dict(node["Resources"]) for node in ray.nodes() if node["Alive"])
    where = "started in this process" if started_here else f"at {ray.get_runtime_context().gcs_address}"
    return Cluster(nodes, autoscaling=not started_here and autoscales(), where=where)


def autoscales() -> bool:
    """Whether an autoscaler may add nodes to the cluster Ray is connected to.

    Yes on the head of a cluster launched by ``ray up`` (its autoscaling config at ``~/ray_bootstrap_config.yaml``,
    which is what Ray Tune itself checks, ``ray.tune.execution.cluster_info``), and where the autoscaler reports
    node types of a config (KubeRay's, a ``--autoscaling-config``). No where it reports only the anonymous node
    types of Ray's read-only provider, which is what a cluster of ``ray start`` nodes (or Ray in a process) runs:
    nothing adds nodes there. Until the autoscaler has reported anything it may be either, and the answer is yes,
    so that a sweep waits (saying why) rather than refuses work a cluster being built could take.
    """
    if Path("~/ray_bootstrap_config.yaml").expanduser().exists():
        return True
    try:  # Ray has no public call for this: the autoscaler's status, as `ray status` reads it
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        types = json.loads(status)["autoscaler_report"]["node_type_mapping"] if status else None
    except Exception:  # another Ray release, another autoscaler (v2): not known
        return True
    if not types:
        return True
    return any(kind != format_readonly_node_type(node) for node, kind in types.items())


def check_resources(request: dict[str, float], cluster: Cluster) -> str | None:
    """A ``SweepError`` if no node of a cluster without an autoscaler can ever hold one trial's ``request``
    (``Plan.resources``): its trials would wait for ever. With an autoscaler, the line that says what the trials
    wait for (once: the trials stay PENDING meanwhile, which says nothing about why). None when a node fits now."""
    asked = {RESOURCES[key][0]: value for key, value in request.items() if value}
    if any(all(node.get(kind, 0.0) >= value for kind, value in asked.items()) for node in cluster.nodes):
        return None
    most = {kind: max((node.get(kind, 0.0) for node in cluster.nodes), default=0.0) for kind, _ in RESOURCES.values()}
    short = [option for key, (kind, option) in RESOURCES.items() if request.get(key, 0.0) > most[kind]]
    wants = f"every trial asks for {amounts(asked)}"
    has = f"its nodes have at most {amounts(most)}" + ("" if short else ", but none has all of it at once")
    if cluster.autoscaling:
        return (f"{wants}, which no node of the Ray cluster {cluster.where} has yet ({has}): the trials wait for the "
                "autoscaler to add such a node")
    options = " or ".join(short or [option for key, (_, option) in RESOURCES.items() if key in request])
    raise SweepError(f"{wants}, but no node of the Ray cluster {cluster.where} (which has no autoscaler to add "
                     f"nodes) can ever hold that: {has}; lower {options}")


def amounts(resources: dict[str, float]) -> str:
    """``{"CPU": 2, "GPU": 0.5, "memory": 2**31}`` → "2 CPUs, 0.5 GPUs and 2 GiB of memory"."""
    words = [f"{value / 2**30:.3g} GiB of memory" if kind == "memory"
             else f"{value:g} {kind}{'' if value == 1 else 's'}" for kind, value in resources.items()]
    return ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1] if words else "nothing"
