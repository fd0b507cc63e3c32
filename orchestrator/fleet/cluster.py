"""The Ray cluster a fleet session runs on: one that is already running (`--ray ADDRESS`), or a
local one of simulated nodes started for the session and torn down after it (`--ray local:N`).
Ray is imported here and in the other fleet modules only, when `--ray` is given, so a checkout
without the `fleet` extra runs every other command."""

from __future__ import annotations

import os
import re
import signal
import socket
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any

from orchestrator.errors import UserError

LOCAL = re.compile(r"local:([0-9]+)")
LOCAL_MAX = 16
HOST_PORT = re.compile(r"([^:/\s]+):([0-9]{1,5})")  # a head's GCS address; Ray waits minutes on one that is down
# A node carrying this resource measures; when no node carries it, every node does. A local
# cluster's head carries none: it hosts the driver and Ray's own services, no measurement.
NODE_RESOURCE = "cdb-node"
# Simulated GPUs for each node of `local:N`, for tests of GPU slots on a machine without one: Ray
# hands them out and sets CUDA_VISIBLE_DEVICES as for real ones; nothing runs on them.
LOCAL_GPUS = "CDB_FLEET_LOCAL_GPUS"


def import_ray() -> ModuleType:
    """Ray, or the one line that says how to install it. Ray would ship a driver started by
    `uv run` to the nodes as a packaged copy of its folder (without .git, so without its commit):
    each node runs its own checkout instead, whose commit and locks are compared with the driver's."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, the optional extra `fleet`: run `uv sync --extra fleet` once, or "
                        "`uv run --extra fleet orchestrate ... --ray ...`") from None
    return ray


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    gpus: int = 0  # the GPUs Ray knows of on the node: each is a slot for cells with isolation = "gpu"


class Cluster:
    """Connected on entry, disconnected (and a local cluster stopped) on exit."""

    def __init__(self, address: str):
        self.address = address
        local = LOCAL.fullmatch(address)
        self.local_nodes = int(local.group(1)) if local else None
        if self.local_nodes is not None and not 1 <= self.local_nodes <= LOCAL_MAX:
            raise UserError(f"--ray {address}: a local cluster has 1 to {LOCAL_MAX} nodes")
        self.ray = import_ray()
        self._local: Any = None
        if self.local_nodes is None and (head := HOST_PORT.fullmatch(address)) is not None:
            try:
                socket.create_connection((head.group(1), int(head.group(2))), timeout=5).close()
            except OSError as e:
                raise UserError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start its head "
                                f"with `ray start --head`, or run a local one with --ray local:N") from None

    def __enter__(self) -> Cluster:
        # A local cluster's head and Ray's core install SIGTERM handlers that kill the cluster
        # and exit, or abort: the session's own (stop, write the summary, exit 130) are put back.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._connect()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _connect(self) -> Cluster:
        ray = self.ray
        address = self.address
        if self.local_nodes is not None:
            from ray.cluster_utils import Cluster as LocalCluster

            self._local = LocalCluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            gpus = int(os.environ.get(LOCAL_GPUS) or 0)
            for _ in range(self.local_nodes):
                self._local.add_node(num_cpus=1, num_gpus=gpus, resources={NODE_RESOURCE: 1})
            address = self._local.address
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, ValueError, RuntimeError) as e:
            self.__exit__(None, None, None)
            raise UserError(f"--ray {self.address}: cannot connect to a Ray cluster there: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if self._local is not None:
            self._local.wait_for_nodes()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
        if self._local is not None:
            self._local.shutdown()
            self._local = None

    def nodes(self) -> list[RayNode]:
        """The live nodes that measure, in node id order."""
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        marked = [n for n in alive if (n.get("Resources") or {}).get(NODE_RESOURCE)]
        return [RayNode(n["NodeID"], str(n.get("NodeManagerAddress")), dict(n.get("Labels") or {}),
                        int((n.get("Resources") or {}).get("GPU") or 0))
                for n in sorted(marked or alive, key=lambda n: n["NodeID"])]
