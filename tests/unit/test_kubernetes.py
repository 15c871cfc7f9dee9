"""deploy/kubernetes/: every manifest against the Kubernetes schemas
(kubernetes-validate, offline: it bundles them), and the values that tie the
manifests together checked against each other and against the router.

The manifests hold no template placeholders; what a template would fill in
(image tag, namespace, service and port names, the config) is checked here
to agree everywhere instead.
"""
from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from mcrouter import __version__
from mcrouter.cli import app
from mcrouter.config import parse_config

HERE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.37.0"            # the newest schemas kubernetes-validate==1.37.0 bundles
FILES = sorted(HERE.glob("*.yaml"))
DOCS = [(f.name, i, doc) for f in FILES for i, doc in enumerate(yaml.safe_load_all(f.read_text()))]

# The Prometheus Operator's PodMonitor is a custom resource: kubernetes-validate
# has no schema for it.  The fields the example uses, as the CRD defines them
# (monitoring.coreos.com/v1), nothing else allowed.
PODMONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}},
        "spec": {"type": "object", "required": ["selector", "podMetricsEndpoints"],
                 "additionalProperties": False, "properties": {
                     "selector": {"type": "object", "additionalProperties": False, "properties": {
                         "matchLabels": {"type": "object"},
                         "matchExpressions": {"type": "array", "items": {
                             "type": "object", "required": ["key", "operator"],
                             "additionalProperties": False, "properties": {
                                 "key": {"type": "string"},
                                 "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                 "values": {"type": "array", "items": {"type": "string"}}}}}}},
                     "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}


def kind(k: str) -> list[dict]:
    return [d for _, _, d in DOCS if d["kind"] == k]


def test_every_kind_is_there():
    assert {d["kind"] for _, _, d in DOCS} == {
        "Namespace", "Service", "StatefulSet", "Deployment", "ConfigMap",
        "PodDisruptionBudget", "PodMonitor"}


@pytest.mark.parametrize("name, index, doc", DOCS, ids=[f"{n}#{i}" for n, i, _ in DOCS])
def test_manifest_is_valid(name, index, doc):
    if doc["kind"] == "PodMonitor":
        jsonschema.validate(doc, PODMONITOR)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_broken_manifest_is_refused():
    deployment = kind("Deployment")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def router_containers() -> list[dict]:
    out = []
    for d in kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        out += [c for c in spec.get("containers", []) + spec.get("initContainers", [])
                if c["image"].startswith("mcrouter:")]
    return out


def test_the_shipped_router_config_is_valid_and_names_the_headless_service():
    (cm,) = kind("ConfigMap")
    config = parse_config(cm["data"]["router.yaml"], "configmap.yaml:router.yaml")
    (service,) = [s for s in kind("Service") if s["spec"].get("clusterIP") == "None"]
    (sts,) = kind("StatefulSet")
    port = service["spec"]["ports"][0]
    ns = service["metadata"]["namespace"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert {str(p.source) for p in config.pools.values()} == {
        f"srv: _{port['name']}._{port['protocol'].lower()}.{service['metadata']['name']}.{ns}"
        ".svc.cluster.local"}
    assert all(d["metadata"]["namespace"] == ns for _, _, d in DOCS if d["kind"] != "Namespace")
    assert kind("Namespace")[0]["metadata"]["name"] == ns


def test_router_containers_run_this_version_with_flags_the_router_knows():
    params = typer.main.get_command(app).commands["run"].params
    flags = {o for p in params for o in p.opts}
    containers = router_containers()
    assert len(containers) == 2                  # the shared tier and the sidecar
    for c in containers:
        assert c["image"] == f"mcrouter:{__version__}"
        assert "--watch-config" in c["args"]
        assert [a for a in c["args"] if a.startswith("-") and a not in flags] == []
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/etc/mcrouter"}
        assert not any("subPath" in m for m in c["volumeMounts"])     # updates reach the pod
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        metrics = [p for p in c["ports"] if p["name"] == "metrics"]
        assert metrics and metrics[0]["containerPort"] == int(c["args"][c["args"].index("-L") + 1][1:])


def test_selectors_match_their_pods_and_the_scrape_annotations():
    for d in kind("Deployment") + kind("StatefulSet"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for s in kind("Service"):
        pods = [d for d in kind("Deployment") + kind("StatefulSet")
                if s["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, s["metadata"]["name"]
    scraped = [d for d in kind("Deployment")
               if d["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/scrape")]
    assert len(scraped) == 2
    (pm,) = kind("PodMonitor")
    names = set(pm["spec"]["selector"]["matchExpressions"][0]["values"])
    assert names == {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                     for d in scraped}
