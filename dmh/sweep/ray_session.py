"""Joining a Ray cluster, or starting Ray in this process bound to 127.0.0.1."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray


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
        ray.init(address=address, log_to_driver=True)
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
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
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
