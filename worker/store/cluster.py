"""Redis Cluster (``REDIS_CLUSTER_NODES``): redis-py's cluster client, and what it lacks for a
deployment that lives in one slot.

Every key of a deployment carries KEY_PREFIX's hash tag (``{tp}``), arq's job keys too (through
the job ids), so they all hash to one slot, which one primary serves at a time. redis-py 5.3's
async cluster client sends each keyed command to that primary and follows a failover (MOVED
answers, the topology read again after a connection error). Two things it does not do:

- Its pipelines refuse ``transaction=True``, do not load the scripts they run (an EVALSHA the
  node has not seen fails with NOSCRIPT) and send commands on any connection of the node, so a
  ``WAIT`` does not wait for the writes queued before it (WAIT counts its own connection's).
- Keyless commands (TIME, PING, INFO, WAIT) go to its "default node", any primary, which it
  replaces after failures: TIME could come from another machine than the one whose clock the
  scripts read (every schedule time must come from one clock).

``DeploymentCluster`` closes both through public API only. ``pipeline()`` returns a plain
``redis.asyncio`` pipeline that runs on a plain client of the primary serving the deployment's
slot when it executes (one client per node address, with the cluster client's credentials and
TLS), so MULTI/EXEC, script loading and WAIT behave exactly as on a single Redis; TIME, PING,
INFO, WAIT, ROLE and SCRIPT LOAD go there too (``ON_SLOT_PRIMARY``). Which primary that is comes
from the cluster client's own view (``nodes_manager.get_node_from_slot``), which its own keyed
commands keep current (a TIME alone cannot tell that its node became a replica: the next keyed
command's MOVED does). A pipeline that meets MOVED has the topology read again
(``nodes_manager.initialize()``) and runs once more on the new primary (the old one ran none of
its keyed commands); after a connection error it has the topology read again and fails, as any
Redis error does, for its caller to retry.

The rest of the code is typed against ``redis.asyncio.Redis``: ``open_cluster`` returns this
client behind that type (a ``cast``). What it answers differs from a plain client's only where
redis-py's cluster commands differ (a multi-key DEL is split by slot: one slot here), so the
code needs no branch of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterParser, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("threads_poller.worker")

# Keyless commands answered by the deployment's primary (the one node whose data and clock the
# deployment uses), never by redis-py's default node. SCRIPT LOAD too: redis-py loads a script
# there after NOSCRIPT, and the default (every primary) fails while one of them is down.
ON_SLOT_PRIMARY = frozenset({"TIME", "PING", "INFO", "WAIT", "WAITAOF", "ROLE", "SCRIPT LOAD"})

# What a node says, or how it fails, when it no longer serves the slot (a failover moved it, or
# is under way): the topology is read again before the next pipeline picks a node. MOVED is an
# AskError; the plain clients parse these with redis-py's cluster parser.
TOPOLOGY_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    AskError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
)


class ClusterUnavailableError(RedisConnectionError):
    """No node of REDIS_CLUSTER_NODES gave a usable topology, or the deployment's slot has no
    primary now (a failover under way): worth retrying, like any connection error."""


def _why(exc: BaseException) -> RedisError | None:
    """The Redis error behind one of redis-py's RedisClusterException (which is no RedisError):
    its initialize() wraps whatever the nodes answered, a refused password included."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RedisError):
            return current
        current = current.__cause__ or current.__context__
    return None


def unavailable(exc: RedisClusterException) -> RedisError:
    """A RedisClusterException as the Redis error callers handle: credentials and ACLs refused
    as such (they do not heal by waiting), anything else as ClusterUnavailableError."""
    why = _why(exc)
    if isinstance(why, AuthenticationError | NoPermissionError):
        return type(why)(str(why))
    return ClusterUnavailableError(str(exc))


class _Unbound(ConnectionPool):
    """A pipeline's pool until it executes (``SlotPipeline.execute`` binds it to the primary):
    never connects anywhere, so a command sent too early (WATCH) fails instead of going to
    localhost."""

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        raise RedisClusterException(
            "a cluster pipeline connects when it executes; WATCH is not supported"
        )


class SlotPipeline(Pipeline):
    """A plain pipeline (MULTI/EXEC with ``transaction``, scripts loaded, one connection) on the
    primary that serves the deployment's slot at the moment it executes."""

    def __init__(self, cluster: DeploymentCluster, transaction: bool) -> None:
        super().__init__(_Unbound(), cluster.response_callbacks, transaction, None)
        self._cluster = cluster

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self.command_stack:
            return await super().execute(raise_on_error)
        # execute() empties the pipeline whatever happens: kept for the one retry below.
        commands, scripts = list(self.command_stack), set(self.scripts)
        for attempt in (1, 2):
            primary = await self._cluster.slot_primary()
            # reset() (at the end of execute, and on leaving ``async with``) gives the
            # connection back to this same pool.
            self.connection_pool = primary.connection_pool
            try:
                return await super().execute(raise_on_error)
            except MovedError:
                # The node no longer serves the slot (a failover is over): it ran none of the
                # keyed commands (in a transaction, nothing), so running them on the new
                # primary, once, runs them once. Keyless ones (TIME, INFO) ran again harmlessly.
                self._cluster.topology_changed()
                if attempt == 2:
                    raise
                self.command_stack, self.scripts = list(commands), set(scripts)
            except TOPOLOGY_ERRORS:
                # Whether the commands ran is not known (a connection cut after EXEC): the
                # caller decides, as after any connection error.
                self._cluster.topology_changed()
                raise
        raise AssertionError("unreachable")


class DeploymentCluster(RedisCluster):
    """redis-py's ``RedisCluster`` for one deployment, whose keys all hash to the slot of
    ``slot_key`` (KEY_PREFIX): pipelines and keyless commands on that slot's primary.

    ``node_options`` make the plain client of a node (``connection_class``, credentials, TLS,
    timeouts, retries: the cluster client's own); with ``node_pool_size`` its pool is bounded
    and a command beyond waits ``node_pool_wait`` seconds for a connection (``serve``)."""

    def __init__(
        self,
        *,
        slot_key: str,
        node_options: dict[str, Any],
        node_pool_size: int | None = None,
        node_pool_wait: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # REDIS_CLUSTER_NODES, kept to be asked again: redis-py replaces its startup nodes with
        # the nodes a slot map named, and an empty map (a cluster not created yet) leaves none.
        connection: dict[str, Any] = dict(self.get_connection_kwargs())
        self._seeds = [
            ClusterNode(node.host, node.port, **connection)
            for node in self.nodes_manager.startup_nodes.values()
        ]
        self.slot = self.keyslot(slot_key)
        self._node_options = node_options
        self._node_pool_size = node_pool_size
        self._node_pool_wait = node_pool_wait
        self._primaries: dict[str, Redis] = {}
        self._refreshing: asyncio.Task[None] | None = None

    async def initialize(self) -> DeploymentCluster:
        startup = self.nodes_manager.startup_nodes
        for seed in self._seeds:
            if seed.name not in startup:
                startup[seed.name] = seed
        try:
            await super().initialize()
        except RedisClusterException as exc:
            # No node answered, or none with a usable slot map: a connection error for the
            # callers (the worker's start-up wait, the CLI's exit 4), not a crash.
            raise unavailable(exc) from exc
        except IndexError as exc:
            # Nodes that serve no slot yet (a cluster not created yet): redis-py finds no
            # primary to make its default node.
            raise ClusterUnavailableError("the cluster's nodes serve no slot yet") from exc
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("target_nodes") and str(args[0]).upper() in ON_SLOT_PRIMARY:
            primary = await self.slot_primary()
            try:
                return await primary.execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except TOPOLOGY_ERRORS:
                self.topology_changed()
                raise
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailableError(str(exc)) from exc

    def pipeline(  # type: ignore[override]
        self, transaction: Any = True, shard_hint: Any = None
    ) -> Pipeline:
        """A plain pipeline on the slot's primary (a transaction by default, as a plain
        client's): MULTI/EXEC, scripts and WAIT as on a single Redis."""
        if shard_hint:
            raise RedisClusterException("shard_hint is not supported in cluster mode")
        return SlotPipeline(self, bool(transaction))

    async def slot_primary(self) -> Redis:
        """The plain client of the primary serving the deployment's slot now."""
        refreshing = self._refreshing
        if refreshing is not None and not refreshing.done():
            # Shielded: a caller that gives up does not cancel the others' refresh.
            with contextlib.suppress(Exception):
                await asyncio.shield(refreshing)
        await self.initialize()
        try:
            # Applies a MOVED the cluster client's own commands met since (public; the
            # slot cache behind get_node_from_key does not).
            node = self.nodes_manager.get_node_from_slot(self.slot)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailableError(str(exc)) from exc
        return self.client_of(node)

    def client_of(self, node: ClusterNode) -> Redis:
        """The plain client of ``node`` (made on first use, closed with this client)."""
        client = self._primaries.get(node.name)
        if client is None:
            options = dict(self._node_options, host=node.host, port=node.port)
            pool: ConnectionPool
            if self._node_pool_size is not None:
                pool = BlockingConnectionPool(
                    max_connections=self._node_pool_size,
                    timeout=self._node_pool_wait,
                    **options,
                )
            else:
                pool = ConnectionPool(**options)
            client = Redis.from_pool(pool)  # closes its pool with it
            self._primaries[node.name] = client
        return client

    def topology_changed(self) -> None:
        """Read who serves the slot again, once however many callers failed at once; the next
        ``slot_primary()`` waits for it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.nodes_manager.initialize()
        except Exception as exc:  # the failover is not over: the next failure asks again
            log.debug("cluster topology not read: %s", type(exc).__name__)

    async def aclose(self) -> None:
        # redis-py also calls aclose() itself, after a node's connection error, to read the
        # topology again: the plain clients then drop their idle connections only, so that a
        # pipeline under way on a healthy primary keeps its own.
        await super().aclose()
        for client in list(self._primaries.values()):
            await client.connection_pool.disconnect(inuse_connections=False)


# REDIS_URL's options that reach the nodes (the URL's win over ours, as in redis-py's
# from_url); its host, port and database are not used in cluster mode.
_URL_OPTIONS = (
    "username",
    "password",
    "ssl_check_hostname",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
)
_TLS_OPTIONS = ("ssl_check_hostname", "ssl_ca_certs")


def open_cluster(
    nodes: list[tuple[str, int]],
    *,
    slot_key: str,
    url_options: dict[str, Any],
    options: dict[str, Any],
    max_connections: int | None = None,
    pool_wait: float = 5.0,
) -> Redis:
    """The cluster client of a deployment (no connection is made until first use), typed as the
    plain client the rest of the code expects (module docstring).

    ``url_options``: redis-py's ``parse_url`` of REDIS_URL; ``options``: what a plain client
    gets (connect timeout, password from REDIS_PASSWORD_FILE, TLS, the worker's retries)."""
    tls = url_options.get("connection_class") is SSLConnection
    merged = dict(options)
    merged.update({k: v for k, v in url_options.items() if k in _URL_OPTIONS})
    if not tls:
        for name in _TLS_OPTIONS:
            merged.pop(name, None)
    node_options = dict(merged, connection_class=SSLConnection if tls else Connection)
    # MOVED, ASK, CLUSTERDOWN as redis-py's cluster errors (TOPOLOGY_ERRORS), not plain ones.
    node_options["parser_class"] = ClusterParser
    cluster_options = dict(merged, ssl=tls)
    if max_connections is not None:
        # Per node; beyond it redis-py's cluster client fails at once (MaxConnectionsError, a
        # ConnectionError), where the plain clients of the pipelines wait ``pool_wait``.
        cluster_options["max_connections"] = max_connections
    # mypy sees redis-py's command protocols' ``connection_pool`` as abstract in a subclass (a
    # cluster client has none: its nodes have pools); redis-py's own code reads it with a
    # fallback (AsyncScript: get_encoder()).
    cluster = DeploymentCluster(  # type: ignore[abstract]
        slot_key=slot_key,
        node_options=node_options,
        node_pool_size=max_connections,
        node_pool_wait=math.ceil(pool_wait),
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        # Only the deployment's slot matters: a slot elsewhere without a primary must not stop
        # it (a command to an uncovered slot still fails, with ClusterUnavailableError).
        require_full_coverage=False,
        **cluster_options,
    )
    # Typed as the plain client: see the module docstring for why the code needs no other type.
    return cast(Redis, cluster)
