"""Redis ACLs as the trust boundary: the least-privilege users of a deployment, per key prefix.

Redis 6+ checks every command, and every ``redis.call`` inside a script, against the user's
rules, so these are enforced by Redis itself, whatever a client sends:

``producer``
    ``XADD`` to ``{prefix}:intake`` (write-only: it cannot read the intake back) and ``PING``.
    Nothing else: no reading the queue, no arq keys, no scripts, no ``FLUSHALL``. With a named
    producer (``--producer NAME``, README "Producers"), to ``{prefix}:intake:NAME`` only: the
    stream whose entries the workers give NAME's scope, and no other producer's.
``reader``
    Read the result hashes, the containers' histories and the events stream
    (``PollerClient.get`` / ``wait`` / ``history``, ``threads-poller status`` / ``wait`` /
    ``history``). Combine with ``producer`` for a pipeline that both feeds and reads.
``enqueuer``
    What ``PollerClient.enqueue`` (and ``threads-poller enqueue``) needs: its Lua script writes
    the result hash and the arq job in one step, so this is a trusted producer: it can create
    and restart polls, not run the queue.
``worker``
    What the worker's scripts and loops need, on the deployment's keys and arq's keys of its
    jobs only. No ``KEYS``, ``SCAN``, ``FLUSH*``, ``CONFIG``, ``DEBUG``, ``MONITOR``, pub/sub.

``threads-poller acl ROLE...`` prints the ``ACL SETUSER`` line; ``tests/integration/test_acl.py``
starts ``redis-server`` with these users and runs the worker under its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from config.producers import DEFAULT_PRODUCER, ProducersError, check_name
from config.settings import valid_key_prefix
from worker.store.keys import Keys

# Every client connection: SELECT for a database other than 0; PING is the harmless liveness
# probe. (redis-py also sends CLIENT SETINFO, which Redis 7.0 does not know; on 7.2+ it is
# refused, an ACL LOG entry, and redis-py ignores the refusal: add +client|setinfo there.)
CONNECTION = ("ping", "select")
# In cluster mode (``--cluster``), what redis-py's cluster client sends on its own: the slot map
# (CLUSTER SLOTS, at start and again after a failover) and the command table it finds keys with
# (COMMAND, and COMMAND GETKEYS for commands whose keys move, XREAD's).
CLUSTER_CONNECTION = ("cluster|slots", "command")

# The commands inside worker/store/lua/*.lua (lib.lua included), run by EVALSHA (the intake's two
# scripts' stream commands are the worker's alone: WORKER_DIRECT); redis-py loads
# a script with SCRIPT LOAD after a restart and checks with SCRIPT EXISTS in pipelines.
SCRIPTING = ("evalsha", "script|load", "script|exists")
IN_SCRIPTS = (
    "del",
    "exists",
    "expire",
    "get",
    "hdel",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hmget",
    "hset",
    "incr",
    "pexpire",
    "pttl",
    "set",
    "time",
    "xadd",
    "zadd",
    "zrangebyscore",
    "zrem",
    "zscore",
    "xinfo|consumers",
    "xgroup|delconsumer",
)
# What the worker's Python code sends itself (intake, heartbeats, metrics, reconciler, quota).
WORKER_DIRECT = (
    "multi",
    "exec",
    "discard",
    "get",
    "set",
    "mget",
    "del",
    "time",
    "hgetall",
    "hmget",
    "hset",
    "xadd",
    "xlen",
    "xack",
    "xdel",
    "xread",
    "xreadgroup",
    "xautoclaim",
    "xpending",
    "xgroup|create",
    "xgroup|createconsumer",
    "zadd",
    "zrem",
    "zcard",
    "zcount",
    "zrangebyscore",
    "zremrangebyscore",
    # Before a publish call: how many replicas there are, and WAIT until they hold the claim.
    "info",
    "wait",
)
# GET: a container's history (a string, ``{prefix}:history:{id}``).
READER = ("hgetall", "hget", "hmget", "exists", "get", "xread", "xrange", "xrevrange", "xlen")

ROLES = ("producer", "reader", "enqueuer", "worker")


def _commands(names: Iterable[str]) -> list[str]:
    return [f"+{name}" for name in sorted(set(names))]


def role_rules(
    role: str, prefix: str, producer: str | None = None, *, cluster: bool = False
) -> list[str]:
    """The ACL rules of one role (without the user's name and password); ``producer`` names
    the producer whose stream a ``producer`` role writes (None or ``default``: the plain one);
    ``cluster``: for a Redis Cluster's nodes (REDIS_CLUSTER_NODES)."""
    p = prefix
    k = Keys(prefix)
    connection = (*CONNECTION, *CLUSTER_CONNECTION) if cluster else CONNECTION
    if role == "producer":
        stream = f"{p}:intake" if producer in (None, DEFAULT_PRODUCER) else f"{p}:intake:{producer}"
        return [*_commands(("xadd", *connection)), f"%W~{stream}"]
    if role == "reader":
        return [
            *_commands((*READER, *connection)),
            f"%R~{p}:result:*",
            f"%R~{p}:history:*",
            f"%R~{p}:events",
        ]
    if role == "enqueuer":
        keys = [
            f"~{p}:result:*",
            # enqueue.lua starts the container's history (its "enqueued" entry).
            f"~{p}:history:*",
            f"~{p}:inflight",
            f"~{p}:queue",
            f"~{p}:accounts",
            f"~{p}:config",
            f"~{p}:rate:*",
            f"~{k.job_data(k.check_job_prefix)}*",
            f"~{k.job_lock(k.check_job_prefix)}*",
            f"%R~{p}:events",
        ]
        return [*_commands((*SCRIPTING, *IN_SCRIPTS, *READER, *connection)), *keys]
    if role == "worker":
        keys = [
            f"~{p}:*",
            f"~{k.job_data(p)}:*",
            f"~{k.job_lock(p)}:*",
            f"~{k.job_tries(p)}:*",
        ]
        return [*_commands((*SCRIPTING, *IN_SCRIPTS, *WORKER_DIRECT, *connection)), *keys]
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


# The user's name: letters, digits, "_", ".", "-" (it is one word of the ACL line; a space would
# start another rule, "+@all ~*" say). The prefix: KEY_PREFIX's own rule (no ":", "*", "?", "[",
# "%", "~" or space), so a role's key patterns match its deployment's keys only.
USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def acl_setuser(
    user: str,
    roles: Sequence[str],
    prefix: str,
    password: str | None = None,
    *,
    producer: str | None = None,
    cluster: bool = False,
) -> str:
    """``ACL SETUSER`` of a user with these roles: everything else is off (``reset`` first).

    Without ``password`` the user has none and cannot log in until one is added
    (``>password``, or ``#<sha256 hex>`` to keep it out of the config file). A user name,
    prefix or password that could add a rule of its own to the line is refused (ValueError)."""
    if not roles:
        raise ValueError("at least one role")
    if not USER_NAME.fullmatch(user):
        raise ValueError(
            f"invalid user name {user[:40]!r}: letters, digits, '_', '.' and '-' only (1 to 128)"
        )
    if not valid_key_prefix(prefix):
        raise ValueError(
            f"invalid prefix {prefix[:40]!r}: letters, digits, '_', '.' and '-' only (1 to 64), "
            "and at most one hash tag {...}; no ':' or glob characters"
        )
    if password is not None and (not password.isprintable() or any(c.isspace() for c in password)):
        raise ValueError("invalid password: printable, without white space")
    if producer is not None:
        if "producer" not in roles:
            raise ValueError("--producer goes with the producer role")
        if producer != DEFAULT_PRODUCER:
            try:
                # A producer's name goes into a key pattern: no glob or ACL characters.
                check_name(producer)
            except ProducersError as exc:
                raise ValueError(f"invalid {exc}") from None
    rules: list[str] = []
    for role in roles:
        rules += [r for r in role_rules(role, prefix, producer, cluster=cluster) if r not in rules]
    auth = [f">{password}"] if password else []
    # reset: no commands, no keys, no channels, no password, then only what the roles need.
    return " ".join(["ACL", "SETUSER", user, "reset", "on", *auth, *rules])
