"""The Kubernetes manifests (deploy/kubernetes/) rendered as ``kubectl apply -k`` would send them.

kustomize is not a dependency: ``render`` composes a kustomization itself, for the few features
the manifests use (``resources``: files and directories, ``namespace``, ``images``, and JSON
6902 ``remove`` patches), and refuses any other key, so a manifest cannot quietly use a feature
this composition would get wrong. Where ``kubectl`` is installed, tests/unit/test_kubernetes.py
also renders with ``kubectl kustomize`` and requires the same documents.

Run as a script, it prints what a Deployment's container is started with, as JSON: its args,
environment (the ConfigMap's, then its own env), probes, stop grace and secret files
(scripts/image-test.sh starts a container of the image with these and runs its probes: from the
manifests, not a copy):

    python -m tests.kubernetes pod threads-poller-worker
"""

from __future__ import annotations

import copy
import json
import sys
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = KUBERNETES / "overlays"

Doc = dict[str, Any]

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Kinds that live outside namespaces, among those the manifests use.
CLUSTER_SCOPED = {"Namespace"}


class UnsupportedKustomization(ValueError):
    """A kustomization uses something ``render`` does not implement."""


def load_yaml(text: str) -> list[Doc]:
    yaml = YAML(typ="safe", pure=True)
    return [doc for doc in yaml.load_all(StringIO(text)) if doc is not None]


def render(directory: Path) -> list[Doc]:
    """The documents of the kustomization in ``directory``, as kustomize builds them."""
    kust = load_yaml((directory / "kustomization.yaml").read_text())[0]
    unknown = set(kust) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: unsupported keys {sorted(unknown)}")
    if kust.get("kind") != "Kustomization":
        raise UnsupportedKustomization(f"{directory}: kind {kust.get('kind')!r}")
    docs: list[Doc] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else load_yaml(path.read_text())
    for patch in kust.get("patches", []):
        _patch(docs, patch, directory)
    for image in kust.get("images", []):
        _set_image(docs, image)
    if "namespace" in kust:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return docs


def _patch(docs: list[Doc], patch: Doc, where: Path) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise UnsupportedKustomization(f"{where}: only target (kind, name) + inline patch")
    ops = load_yaml(patch["patch"])[0]
    if not isinstance(ops, list) or any(set(op) != {"op", "path"} for op in ops):
        raise UnsupportedKustomization(f"{where}: only JSON 6902 remove operations")
    targets = [
        d
        for d in docs
        if all(
            (d["kind"] if k == "kind" else d["metadata"]["name"]) == v
            for k, v in patch["target"].items()
        )
    ]
    if not targets:
        raise UnsupportedKustomization(f"{where}: a patch matches nothing")
    for op in ops:
        if op["op"] != "remove":
            raise UnsupportedKustomization(f"{where}: op {op['op']!r}")
        *parents, last = [p for p in op["path"].split("/") if p]
        for doc in targets:
            node: Any = doc
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            del node[int(last) if isinstance(node, list) else last]


def _set_image(docs: list[Doc], image: Doc) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise UnsupportedKustomization(f"images: only name, newName, newTag ({image})")
    for container in containers(docs):
        name, _, tag = container["image"].rpartition(":")
        if not name or "/" in tag:  # no tag ("host:5000/name" has a port, not a tag)
            name, tag = container["image"], ""
        if name == image["name"]:
            new = image.get("newName", name)
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new}:{new_tag}" if new_tag else new


def containers(docs: list[Doc]) -> list[Doc]:
    """Every container of every pod template (Deployments)."""
    return [
        c
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"].get("containers", [])
    ]


def normalized(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """By (kind, name): kustomize orders the documents its own way."""
    return {(d["kind"], d["metadata"]["name"]): copy.deepcopy(d) for d in docs}


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def probe_command(docs: list[Doc], deployment: str, probe: str) -> list[str]:
    """The exec command of the first container's ``probe`` (livenessProbe, ...)."""
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    command = pod["containers"][0][probe]["exec"]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


def env_of(docs: list[Doc], deployment: str) -> dict[str, str]:
    """The container's environment: the ConfigMap's, then its own env (which wins)."""
    container = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def pod_json(docs: list[Doc], deployment: str) -> Doc:
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secrets = []
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "secret" in volume:
            secrets += [
                {"key": i["key"], "path": f"{mount['mountPath']}/{i['path']}"}
                for i in volume["secret"]["items"]
            ]
    return {
        "args": container["args"],
        "env": env_of(docs, deployment),
        "grace": pod["terminationGracePeriodSeconds"],
        "user": [pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]],
        "fs_group": pod["securityContext"]["fsGroup"],
        "probes": {k: v for k, v in container.items() if k.endswith("Probe")},
        "ports": {p["name"]: p["containerPort"] for p in container.get("ports", [])},
        "secrets": secrets,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "pod":
        print("usage: python -m tests.kubernetes pod DEPLOYMENT", file=sys.stderr)
        return 2
    print(json.dumps(pod_json(render(BASE), argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
