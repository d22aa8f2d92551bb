"""The Kubernetes manifests (deploy/kubernetes/): rendered as ``kubectl apply -k`` sends them
(tests/kubernetes.py), every document validated against Kubernetes' own schemas
(``kubernetes-validate``, strict: an unknown field fails), and what they promise held to the
code they deploy: the probes are ``threads-poller health`` commands the CLI accepts, the stop
grace is the worker's documented stop time plus a margin, no secret value in any env, read-only
root, the image's user, the ports the settings open. The probes run against a real worker
configured like the Deployment: tests/integration/test_health.py; in a container of the
image: scripts/image-test.sh."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from config import Settings
from config.secrets import mode_problem
from tests.kubernetes import (
    BASE,
    OVERLAYS,
    ROOT,
    Doc,
    UnsupportedKustomization,
    containers,
    env_of,
    find,
    load_yaml,
    normalized,
    probe_command,
    render,
)
from worker.cli.parser import build_parser
from worker.ops import metrics
from worker.runtime.app import STOP_REDIS_SECONDS
from worker.web.console import STATIC
from worker.web.routes import ROUTES

# The oldest Kubernetes release the manifests are written for (autoscaling/v2, the PDB's
# unhealthyPodEvictionPolicy, seccompProfile: all there by 1.30).
KUBERNETES_VERSION = "1.30"
WORKER, SERVE = "threads-poller-worker", "threads-poller-serve"
# What the worker's terminationGracePeriodSeconds adds to its stop time (worker-deployment.yaml).
GRACE_MARGIN_SECONDS = 12
SECRETS_DIR = "/var/run/secrets/threads-poller"


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return render(BASE)


@pytest.fixture(scope="module")
def example() -> list[Doc]:
    return render(OVERLAYS / "example")


def all_renderings() -> list[Path]:
    return [BASE, *sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())]


@pytest.mark.parametrize("directory", all_renderings(), ids=lambda p: p.name)
def test_every_document_is_valid_kubernetes(directory: Path) -> None:
    docs = render(directory)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{directory.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}"
            ) from None


def test_the_validation_catches_a_wrong_manifest(base: list[Doc]) -> None:
    """Canaries: strict mode refuses a misspelt field, and a wrong type."""
    typo = copy.deepcopy(find(base, "Deployment", WORKER))
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(find(base, "Deployment", WORKER))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_render_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: []\ncommonLabels: {a: b}\n"
    )
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
@pytest.mark.parametrize("directory", all_renderings(), ids=lambda p: p.name)
def test_render_builds_what_kustomize_builds(directory: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert normalized(load_yaml(out)) == normalized(render(directory))


def test_probes_are_threads_poller_health(base: list[Doc]) -> None:
    liveness = probe_command(base, WORKER, "livenessProbe")
    readiness = probe_command(base, WORKER, "readinessProbe")
    assert liveness == ["threads-poller", "health", "--liveness"]
    assert readiness == ["threads-poller", "health"]
    assert probe_command(base, WORKER, "startupProbe") == liveness
    # The command the image puts on PATH, with arguments the CLI accepts.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'threads-poller = "worker.cli:main"' in pyproject
    for command in (liveness, readiness):
        args = build_parser().parse_args(command[1:])
        assert args.func.__name__ == "cmd_health"
    pod = find(base, "Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]
    # A probe waits for Redis up to --redis-timeout (5 s) after the interpreter starts.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert pod[probe]["timeoutSeconds"] > 5
    # A draining worker stays alive for its whole drain: liveness may not fail sooner.
    live = pod["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= stop_seconds(base)


def test_serve_probes_hit_routes_without_a_key(base: list[Doc]) -> None:
    pod = find(base, "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]
    public = {r.path for r in ROUTES if r.method == "GET" and r.auth == "none"}
    ready, live = pod["readinessProbe"]["httpGet"], pod["livenessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and ready["path"] in public
    # Liveness must not depend on Redis: a static file of the console.
    name = live["path"].removeprefix("/static/")
    assert "/static/{name}" in public and name in STATIC
    ports = {p["name"]: p["containerPort"] for p in pod["ports"]}
    assert (
        ready["port"] == live["port"] == "http"
        and ports["http"] == settings_of(base, SERVE).http_port
    )


def settings_of(docs: list[Doc], deployment: str) -> Settings:
    """The settings the container starts with (the *_FILE settings left out: no files here)."""
    env = {k.lower(): v for k, v in env_of(docs, deployment).items() if not k.endswith("_FILE")}
    return Settings(_env_file=None, **env)  # type: ignore[arg-type,call-arg]


def stop_seconds(docs: list[Doc]) -> float:
    """docs/deploying.md "Stop grace": the drain, then at most 2 x STOP_REDIS_SECONDS with Redis
    away."""
    drain = math.ceil(settings_of(docs, WORKER).http_timeout_seconds) + 2
    return drain + 2 * STOP_REDIS_SECONDS


def test_grace_is_the_documented_stop_time_plus_margin(base: list[Doc]) -> None:
    pod = find(base, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert stop_seconds(base) == 18  # 10 s HTTP timeout: 12 s drain + 6 s
    assert pod["terminationGracePeriodSeconds"] == stop_seconds(base) + GRACE_MARGIN_SECONDS
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    assert "`int(HTTP_TIMEOUT_SECONDS) + 2` seconds (12 s by default)" in deploying
    # serve: preStop sleep + its shutdown grace must fit too.
    serve = find(base, "Deployment", SERVE)["spec"]["template"]["spec"]
    sleep = serve["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    from worker.web.app import SHUTDOWN_GRACE_SECONDS

    assert serve["terminationGracePeriodSeconds"] > int(sleep[1]) + SHUTDOWN_GRACE_SECONDS


SECRET_SETTINGS = {
    name.upper()
    for name, field in Settings.model_fields.items()
    if field.annotation is not None and SecretStr in getattr(field.annotation, "__args__", ())
} | {"REDIS_PASSWORD"}


def test_no_secret_in_any_env_value(base: list[Doc], example: list[Doc]) -> None:
    assert {"THREADS_ACCESS_TOKEN", "WEBHOOK_SECRET", "API_KEYS"} <= SECRET_SETTINGS
    for docs in (base, example):
        for cm in (d for d in docs if d["kind"] == "ConfigMap"):
            assert not set(cm["data"]) & SECRET_SETTINGS
            assert not any(k.endswith("_FILE") for k in cm["data"])
        for container in containers(docs):
            for e in container.get("env", []):
                assert e["name"] not in SECRET_SETTINGS, e
                assert set(e) == {"name", "value"}, f"{e['name']}: only literal values"
            assert all("configMapRef" in s for s in container.get("envFrom", []))
        assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand"
    for deployment in (WORKER, SERVE):
        assert settings_of(base, deployment).redis_url_password() is None


def test_every_file_setting_is_a_mounted_secret_key(base: list[Doc]) -> None:
    expected = {
        WORKER: {"REDIS_PASSWORD_FILE", "THREADS_ACCESS_TOKEN_FILE"},
        SERVE: {"REDIS_PASSWORD_FILE", "API_KEYS_FILE"},
    }
    for deployment, names in expected.items():
        pod = find(base, "Deployment", deployment)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        files = {k: v for k, v in env_of(base, deployment).items() if k.endswith("_FILE")}
        assert set(files) == names
        assert all(
            k.removesuffix("_FILE").lower() + "_file" in Settings.model_fields for k in files
        )
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
        assert mount["readOnly"] is True
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
        paths = {f"{SECRETS_DIR}/{item['path']}" for item in volume["items"]}
        assert set(files.values()) == paths
        # Root-owned files, readable by the image's group through fsGroup: what the settings'
        # mode check (config/secrets.py) accepts without SECRET_FILE_MODE_CHECK=warn.
        assert volume["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == image_user()[1]
        assert mode_problem(stat.S_IFREG | 0o440, 0, image_user()[0]) is None
        assert mode_problem(stat.S_IFREG | 0o444, 0, image_user()[0]) is not None


def image_user() -> tuple[int, int]:
    found = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert found
    return int(found[1]), int(found[2])


def test_pods_run_locked_down(base: list[Doc]) -> None:
    uid, gid = image_user()
    for deployment in (WORKER, SERVE):
        pod = find(base, "Deployment", deployment)["spec"]["template"]["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and (ctx["runAsUser"], ctx["runAsGroup"]) == (uid, gid)
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            # Writable: /tmp only, an emptyDir with a size limit.
            writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
            assert [m["mountPath"] for m in writable] == ["/tmp"]
            volume = next(v for v in pod["volumes"] if v["name"] == writable[0]["name"])
            assert "sizeLimit" in volume["emptyDir"]


def compose_image() -> str:
    compose = load_yaml((ROOT / "docker-compose.yml").read_text())[0]
    image = compose["services"]["worker"]["image"]
    assert isinstance(image, str)
    return image


def test_image_is_the_one_compose_and_the_dockerfile_build(
    base: list[Doc], example: list[Doc]
) -> None:
    image = compose_image()
    assert image == "threads-poller:local"
    assert "docker build -t threads-poller ." in (ROOT / "Dockerfile").read_text()
    assert {c["image"] for c in containers(base)} == {image}
    # Worker and serve: the image's ENTRYPOINT (threads-poller) with its commands.
    assert [c["args"] for c in containers(base)] == [["worker"], ["serve"]]
    assert all("command" not in c for c in containers(base))
    overlay = load_yaml((OVERLAYS / "example" / "kustomization.yaml").read_text())[0]
    renamed = overlay["images"][0]
    assert renamed["name"] == image.split(":")[0]
    assert {c["image"] for c in containers(example)} == {
        f"{renamed['newName']}:{renamed['newTag']}"
    }


def exported_serve_metrics() -> set[str]:
    text = generate_latest(metrics.SERVE_REGISTRY).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_ports_are_the_settings_and_annotated(base: list[Doc]) -> None:
    for deployment, port in (
        (WORKER, settings_of(base, WORKER).metrics_port),
        (SERVE, settings_of(base, SERVE).serve_metrics()),
    ):
        assert port > 0
        template = find(base, "Deployment", deployment)["spec"]["template"]
        ann = template["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        assert ann["prometheus.io/port"] == str(port)
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == port
        # Scraped from outside the pod: not the settings' loopback default.
        assert settings_of(base, deployment).metrics_host == "0.0.0.0"
    service = find(base, "Service", SERVE)
    assert (
        service["spec"]["selector"]
        == find(base, "Deployment", SERVE)["spec"]["selector"]["matchLabels"]
    )


def readme_worker_rss_mib() -> float:
    """The bench's worker RSS figures (docs/performance.md; they were in the README)."""
    performance = (ROOT / "docs" / "performance.md").read_text()
    figures = re.findall(r"^worker RSS[^\n]*?([0-9.]+) MiB", performance, re.M)
    assert len(figures) >= 3
    return max(float(f) for f in figures)


def mebibytes(quantity: str) -> float:
    assert quantity.endswith("Mi")
    return float(quantity[:-2])


def test_worker_resources_cover_the_bench_rss(base: list[Doc]) -> None:
    res = find(base, "Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]["resources"]
    rss = readme_worker_rss_mib()
    # The worker plus one probe process (~44 MiB) fit the request, two probes the limit.
    assert mebibytes(res["requests"]["memory"]) >= rss + 44
    assert mebibytes(res["limits"]["memory"]) >= rss + 2 * 44
    assert "cpu" in res["requests"] and "cpu" in res["limits"]


def test_disruption_budget_selects_the_workers(base: list[Doc]) -> None:
    pdb = find(base, "PodDisruptionBudget", WORKER)
    worker = find(base, "Deployment", WORKER)
    assert pdb["spec"]["selector"] == worker["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] < worker["spec"]["replicas"]


def test_autoscaler_example(example: list[Doc], base: list[Doc]) -> None:
    hpa = find(example, "HorizontalPodAutoscaler", WORKER)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", WORKER)
    names = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["threads_poller_queue_lag_seconds", "threads_poller_worker_saturation_ratio"]
    # Gauges serve exports, and the adapter rules beside it serve them as External metrics.
    assert set(names) <= exported_serve_metrics()
    rules = load_yaml((OVERLAYS / "example" / "prometheus-adapter-rules.yaml").read_text())[0]
    assert [r["name"]["as"] for r in rules["rules"]["external"]] == names
    # The HPA owns the count: the overlay's worker has none; the base's has its own.
    assert "replicas" not in find(example, "Deployment", WORKER)["spec"]
    assert find(base, "Deployment", WORKER)["spec"]["replicas"] >= 2
    assert hpa["spec"]["minReplicas"] >= 2
    ns = {d["metadata"].get("namespace") for d in example if d["kind"] != "Namespace"}
    assert ns == {find(example, "Namespace", "threads-poller")["metadata"]["name"]}


def test_pod_json_for_the_image_test(capsys: pytest.CaptureFixture[str], base: list[Doc]) -> None:
    """scripts/image-test.sh starts the pods' containers from this entry point's answer."""
    from tests.kubernetes import main

    assert main(["pod", WORKER]) == 0
    pod = json.loads(capsys.readouterr().out)
    assert pod["args"] == ["worker"] and pod["grace"] == 30
    assert pod["probes"]["livenessProbe"]["exec"]["command"] == probe_command(
        base, WORKER, "livenessProbe"
    )
    assert pod["env"]["REDIS_URL"] == "redis://redis:6379/0"
    assert {s["key"] for s in pod["secrets"]} == {"redis-password", "threads-access-token"}
    assert pod["user"] == list(image_user()) and pod["fs_group"] == image_user()[1]
    assert main(["probe"]) == 2
