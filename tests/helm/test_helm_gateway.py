"""The optional SMG gateway in the chart: rendered offline, its args parsed by smg's own CLI."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("helm_python", reason="pip install -r requirements-helm-test.txt")
pytest.importorskip("kubernetes_validate", reason="pip install -r requirements-helm-test.txt")

import helm_python
import kubernetes_validate
from chart_render import CHART_DIR, NAMESPACE, RELEASE, manifests, notes, objects_of_kind, render, single

GATEWAY = "demo-lil-sparse-gateway"
KUBERNETES = {"gateway": {"enabled": True}}
URLS = {
    "gateway": {
        "enabled": True,
        "discovery": "urls",
        "workerUrls": ["grpc://10.0.0.1:50051", "grpc://10.0.0.2:50051"],
        "policy": "round_robin",
    }
}


def _gateway_objects(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Kind -> object, for the objects named after the gateway."""
    return {obj["kind"]: obj for obj in manifests(values) if obj["metadata"]["name"] == GATEWAY}


def _gateway_container(values: dict[str, Any]) -> dict[str, Any]:
    pod = _gateway_objects(values)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_no_gateway_by_default() -> None:
    assert _gateway_objects({}) == {}


@pytest.mark.parametrize("values", [KUBERNETES, URLS], ids=["kubernetes", "urls"])
def test_gateway_manifests_lint_and_validate(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == []
    for obj in manifests(values):
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_kubernetes_discovery_finds_this_release_workers_over_grpc() -> None:
    from smg.launch_router import parse_router_args

    container = _gateway_container(KUBERNETES)
    assert container["command"] == ["python3", "-m", "smg.launch_router"]
    args = parse_router_args(container["args"])
    worker_pod = single({}, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert args.service_discovery and args.service_discovery_namespace == NAMESPACE
    assert args.service_discovery_port == 50051
    assert _matches(args.selector, worker_pod)
    assert args.selector == {"app.kubernetes.io/name": "lil-sparse", "app.kubernetes.io/instance": RELEASE}
    assert (args.port, args.prometheus_port, args.policy) == (30000, 29000, "cache_aware")
    assert args.worker_urls == []


def test_kubernetes_discovery_may_watch_pods_and_nothing_else() -> None:
    objects = _gateway_objects(KUBERNETES)
    assert objects["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == GATEWAY
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": NAMESPACE}]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == GATEWAY and pod["automountServiceAccountToken"] is True


def test_fixed_urls_need_no_api_access() -> None:
    from smg.launch_router import parse_router_args

    args = parse_router_args(_gateway_container(URLS)["args"])
    assert args.worker_urls == ["grpc://10.0.0.1:50051", "grpc://10.0.0.2:50051"]
    assert not args.service_discovery and args.policy == "round_robin"
    objects = _gateway_objects(URLS)
    assert "Role" not in objects and "RoleBinding" not in objects
    assert objects["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_gateway_and_worker_selectors_never_cross() -> None:
    objects = _gateway_objects(KUBERNETES)
    gateway_pod = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    worker_pod = single({}, "Deployment")["spec"]["template"]["metadata"]["labels"]
    worker_service = next(
        s for s in objects_of_kind(KUBERNETES, "Service") if s["metadata"]["name"] != GATEWAY
    )
    assert _matches(objects["Service"]["spec"]["selector"], gateway_pod)
    assert not _matches(objects["Service"]["spec"]["selector"], worker_pod)
    assert not _matches(worker_service["spec"]["selector"], gateway_pod)
    pdb = single(KUBERNETES, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert not _matches(pdb, gateway_pod)


def test_gateway_service_exposes_openai_http_and_metrics() -> None:
    service = _gateway_objects(KUBERNETES)["Service"]
    ports = {port["name"]: (port["port"], port["targetPort"]) for port in service["spec"]["ports"]}
    assert ports == {"http": (80, "http"), "metrics": (29000, "metrics")}
    container = _gateway_container(KUBERNETES)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 30000, "metrics": 29000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "http"}


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"gateway": {"enabled": True, "discovery": "urls"}}, "/gateway/workerUrls"),
        ({"gateway": {"workerUrls": ["http://x:1"]}}, "/gateway/workerUrls/0"),
        ({"gateway": {"policy": "fastest"}}, "/gateway/policy"),
        ({"gateway": {"discovery": "dns"}}, "/gateway/discovery"),
    ],
)
def test_gateway_schema_rejects_invalid_values(values: dict[str, Any], path: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=path):
        render(values)


def test_discover_all_releases_drops_the_release_from_the_selector() -> None:
    from smg.launch_router import parse_router_args

    values = {"gateway": {"enabled": True, "discoverAllReleases": True}}
    args = parse_router_args(_gateway_container(values)["args"])
    assert args.selector == {"app.kubernetes.io/name": "lil-sparse"}
    other_release_pod = {"app.kubernetes.io/name": "lil-sparse", "app.kubernetes.io/instance": "quest-pool"}
    assert _matches(args.selector, other_release_pod)


def test_notes_show_the_gateway_only_when_enabled() -> None:
    on = notes({"gateway": {"enabled": True}, "server": {"servedModelName": "smollm2-quest"}})
    assert f"svc/{RELEASE}-lil-sparse-gateway 30000:30000" in on
    assert '"model": "smollm2-quest"' in on
    assert "/v1/chat/completions" in on
    assert "/v1/chat/completions" not in notes({})
