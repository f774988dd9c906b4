"""The Helm chart, rendered offline for several value sets and checked against the real server.

What the server accepts is read from the server itself: the container args are parsed by the
server's own argparse flags and turned into a ``ServerConfig`` by ``build_server_config``, the
readiness service name comes from the servicer, the queue gauge from ``ServerMetrics``, the policy
and model names from the engine. A renamed flag or a changed default fails here, not in a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
from typing import Any

import pytest

pytest.importorskip("helm_python", reason="pip install -r requirements-helm-test.txt")
pytest.importorskip("kubernetes_validate", reason="pip install -r requirements-helm-test.txt")

import helm_python
import kubernetes_validate
from chart_render import (
    CHART_DIR,
    VALUE_SETS,
    load_chart,
    manifests,
    named_container_port,
    notes,
    objects_of_kind,
    render,
    server_container,
    single,
)

from lil_sparse.cli.models import add_models_parser
from lil_sparse.config import BACKENDS, DEFAULT_MODEL, DTYPES
from lil_sparse.loading.fetcher import CACHE_ENV, KNOWN_MODELS
from lil_sparse.options import POLICY_NAMES, RequestOptions
from server.cli import add_serve_arguments
from server.config import ServerConfig
from server.settings import DEFAULT_OPTION_SETTINGS, SERVER_SETTINGS, all_settings, build_server_config

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes are GA in
# 1.27) and a current one.
KUBE_VERSIONS = ("1.27.0", "1.33.0")
# Kinds from CRDs, which kubernetes-validate has no schema for; checked field by field below.
CRD_KINDS = {"ServiceMonitor"}
# Chart keys under `server` that are not server settings.
NON_SETTING_KEYS = {"logLevel", "extraArgs", "extraEnv", "defaults"}
# Server settings the chart derives from `security` (mounted Secrets), not from `server`.
SECURITY_SETTINGS = {
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "auth_token_file",
    "auth_exempt_health",
    "health_port",
}
# The flush after the grace period during which aborted streams get their final message
# (server/app.py _ABORT_FLUSH_SECONDS); the pod must outlive it.
ABORT_FLUSH_SECONDS = 2.0

ALL_SETS = pytest.mark.parametrize("set_name", sorted(VALUE_SETS))


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def setting_names_of(chart_server: dict[str, Any]) -> dict[str, Any]:
    """Chart ``server`` values -> {server setting name: chart value}, by the chart's naming rule.

    ``server.maxRunning`` is ``max_running``; ``server.defaults.topK`` is ``default_top_k``;
    ``server.defaults.guardian.enabled`` is ``default_guardian`` and its other keys
    ``default_guardian_<key>``.
    """
    named = {snake(key): value for key, value in chart_server.items() if key not in NON_SETTING_KEYS}
    defaults = dict(chart_server["defaults"])
    guardian = defaults.pop("guardian")
    named.update({f"default_{snake(key)}": value for key, value in defaults.items()})
    named["default_guardian"] = guardian.pop("enabled")
    named.update({f"default_guardian_{snake(key)}": value for key, value in guardian.items()})
    return named


def config_value(config: ServerConfig, setting_name: str) -> Any:
    """The value a setting landed on in a built ``ServerConfig``."""
    for setting, group, option_field in DEFAULT_OPTION_SETTINGS:
        if setting.name == setting_name:
            return getattr(getattr(config.default_options, group), option_field)
    return getattr(config, setting_name)


def server_default(setting_name: str) -> Any:
    """The server's own default of a setting, from the dataclasses (not from the chart)."""
    for setting, group, option_field in DEFAULT_OPTION_SETTINGS:
        if setting.name == setting_name:
            return getattr(getattr(RequestOptions(), group), option_field)
    (config_field,) = [f for f in dataclasses.fields(ServerConfig) if f.name == setting_name]
    return config_field.default


def parse_container_args(container: dict[str, Any]) -> ServerConfig:
    """Run the container's args through the server's real flags and config builder."""
    assert container["command"] == ["python", "-m", "server"]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    namespace = parser.parse_args(container["args"])
    flags = {setting.name: getattr(namespace, setting.name) for setting in all_settings()}
    # No environment: the chart must say everything through flags.
    return build_server_config(flags, environ={})


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with load_chart() as chart:
        merged: dict[str, Any] = chart.merge_values(values)
    return merged


@ALL_SETS
def test_lint_is_clean(set_name: str) -> None:
    report = helm_python.lint(CHART_DIR, VALUE_SETS[set_name], strict=True, namespace="inference")
    assert report["errors"] == []
    assert report["messages"] == []


@ALL_SETS
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates(set_name: str, kube_version: str) -> None:
    validated = set()
    for obj in manifests(VALUE_SETS[set_name]):
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)
        validated.add(obj["kind"])
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= validated


@ALL_SETS
def test_container_args_build_the_configured_server(set_name: str) -> None:
    values = merged_values(VALUE_SETS[set_name])
    container = server_container(VALUE_SETS[set_name])
    config = parse_container_args(container)
    for name, chart_value in setting_names_of(values["server"]).items():
        if name == "device" and chart_value == "":
            continue  # derived from gpu.enabled, checked in test_gpu_*
        assert config_value(config, name) == chart_value, name
    assert named_container_port(container, "grpc") == config.port
    assert named_container_port(container, "metrics") == config.metrics_port


def test_chart_covers_every_server_setting() -> None:
    chart_settings = setting_names_of(merged_values({})["server"])
    real_settings = {setting.name for setting in all_settings()}
    assert set(chart_settings) | {"model"} | SECURITY_SETTINGS == real_settings


def test_chart_defaults_are_the_server_defaults() -> None:
    """Besides model, device and host, the default release runs the server as its defaults do.

    The server alone binds 127.0.0.1; in a pod it must listen on the pod's interface.
    """
    config = parse_container_args(server_container({}))
    expected = dataclasses.replace(ServerConfig(model=config.model), device="cuda", host="0.0.0.0")
    assert config == expected
    for name, chart_value in setting_names_of(merged_values({})["server"]).items():
        if name not in ("device", "host"):
            assert chart_value == server_default(name), name


def test_tuned_values_reach_the_server() -> None:
    config = parse_container_args(server_container(VALUE_SETS["tuned"]))
    assert config.port == 6000 and config.metrics_port == 9500
    assert config.kv_cache_tokens == 65536 and config.max_model_len == 8192
    assert config.chunked_prefill is False and config.max_num_batched_tokens == 4096
    assert config.reflection is False
    assert config.default_options.sparse.policy == "quest"
    assert config.default_options.guardian.enabled is True
    assert config.default_options.guardian.mode == "incremental"


@ALL_SETS
def test_probes_are_grpc_health_checks_on_the_grpc_port(set_name: str) -> None:
    from server.servicer import SERVICE_NAME  # the proto's full service name

    container = server_container(VALUE_SETS[set_name])
    config = parse_container_args(container)
    # With TLS the probes ask the plaintext health-only port: kubelet probes cannot speak TLS.
    grpc_port = config.health_port if config.tls else config.port
    for probe_name, service in (
        ("startupProbe", ""),
        ("livenessProbe", ""),
        ("readinessProbe", SERVICE_NAME),
    ):
        probe = container[probe_name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe_name
        assert probe["grpc"] == {"port": grpc_port, "service": service}, probe_name


def test_gpu_is_requested_and_tolerated_by_default() -> None:
    container = server_container({})
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = single({}, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert parse_container_args(container).device == "cuda"


def test_gpu_count_and_resource_name_follow_values() -> None:
    values = {"gpu": {"count": 2, "resourceName": "amd.com/gpu"}}
    limits = server_container(values)["resources"]["limits"]
    assert limits["amd.com/gpu"] == 2
    assert "nvidia.com/gpu" not in limits


def test_no_gpu_means_no_gpu_anywhere() -> None:
    values = VALUE_SETS["no-gpu"]
    rendered = "".join(text for path, text in render(values).items() if not path.endswith("NOTES.txt"))
    assert "nvidia.com/gpu" not in rendered
    container = server_container(values)
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"memory": "16Gi"}}
    assert parse_container_args(container).device == "cpu"
    assert "tolerations" not in single(values, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize("set_name", ["defaults", "tuned"])
def test_termination_grace_outlasts_prestop_and_drain(set_name: str) -> None:
    values = VALUE_SETS[set_name]
    pod = single(values, "Deployment")["spec"]["template"]["spec"]
    container = server_container(values)
    config = parse_container_args(container)
    sleep_command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    pre_stop_seconds = int(sleep_command[1])
    assert pre_stop_seconds == merged_values(values)["lifecycle"]["preStopSleepSeconds"]
    needed = pre_stop_seconds + config.grace_period_seconds + ABORT_FLUSH_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_explicit_termination_grace_wins() -> None:
    values = {"lifecycle": {"terminationGracePeriodSeconds": 300}}
    pod = single(values, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 300


def test_fetch_source_fetches_a_known_model_into_the_server_cache() -> None:
    pod = single({}, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    name = merged_values({})["model"]["fetch"]["name"]
    assert name in {model.name for model in KNOWN_MODELS}
    # The init command is the project's console script running its real `models fetch` parser.
    program, *cli_args = init["command"]
    # (tomllib is 3.11+; the project supports 3.10, so read the one table by hand.)
    pyproject = (CHART_DIR.parents[1] / "pyproject.toml").read_text()
    scripts_table = pyproject.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    entry_point = re.search(rf'^{re.escape(program)} = "([\w.]+):(\w+)"', scripts_table, re.MULTILINE)
    assert entry_point is not None, f"{program} is not a console script in pyproject.toml"
    module_name, function_name = entry_point.groups()
    assert callable(getattr(importlib.import_module(module_name), function_name))
    parser = argparse.ArgumentParser(prog=program)
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(cli_args)
    assert (parsed.command, parsed.models_command, parsed.name) == ("models", "fetch", name)
    server = server_container({})
    assert parse_container_args(server).model == name
    # Both containers see the cache volume at the path $LIL_SPARSE_CACHE names.
    for container in (init, server):
        cache = {env["name"]: env["value"] for env in container["env"]}[CACHE_ENV]
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["model"] == cache
    (model_volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert "emptyDir" in model_volume


def test_pvc_source_mounts_the_claim_read_only() -> None:
    values = VALUE_SETS["pvc"]
    pod = single(values, "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (model_volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model_volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    container = server_container(values)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model"]
    assert mount["readOnly"] is True
    assert parse_container_args(container).model == f"{mount['mountPath']}/smollm2/model.gguf"


@ALL_SETS
def test_runs_as_non_root_with_read_only_root_filesystem(set_name: str) -> None:
    pod = single(VALUE_SETS[set_name], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        # With a read-only root, HOME (caches, pip, JIT kernels) must be a writable volume.
        home = {env["name"]: env["value"] for env in container["env"]}["HOME"]
        assert home in {mount["mountPath"] for mount in container["volumeMounts"]}


@ALL_SETS
def test_service_ports_are_named_and_target_the_container(set_name: str) -> None:
    values = VALUE_SETS[set_name]
    service = single(values, "Service")
    assert {(port["name"], port["targetPort"]) for port in service["spec"]["ports"]} == {
        ("grpc", "grpc"),
        ("metrics", "metrics"),
    }
    pod_labels = single(values, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert ("clusterIP" in service["spec"]) == (set_name == "headless")


def test_headless_service_for_client_side_round_robin() -> None:
    service = single(VALUE_SETS["headless"], "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert single(VALUE_SETS["headless"], "Deployment")["spec"]["replicas"] == 3
    assert "round_robin" in notes(VALUE_SETS["headless"])


def test_service_monitor_scrapes_the_metrics_port() -> None:
    values = VALUE_SETS["monitoring"]
    assert objects_of_kind({}, "ServiceMonitor") == []
    monitor = single(values, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["inference"]}
    service = single(values, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The operator scrapes; annotations too would make annotation-based setups scrape twice.
    assert "annotations" not in single(values, "Deployment")["spec"]["template"]["metadata"]
    annotations = single({}, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9400"


def test_hpa_scales_on_the_server_queue_gauge_with_cpu_fallback() -> None:
    from server.metrics import ServerMetrics

    values = VALUE_SETS["monitoring"]
    assert objects_of_kind({}, "HorizontalPodAutoscaler") == []
    hpa = single(values, "HorizontalPodAutoscaler")
    deployment = single(values, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    pods_metric, cpu_metric = hpa["spec"]["metrics"]
    waiting_gauge = next(iter(ServerMetrics(model="m").requests_waiting.describe())).name
    assert pods_metric["type"] == "Pods"
    assert pods_metric["pods"]["metric"]["name"] == waiting_gauge
    assert pods_metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2"}
    assert cpu_metric == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
    }
    # CPU utilization is relative to the request, so the container must request CPU.
    assert "cpu" in server_container(values)["resources"]["requests"]


def test_hpa_cpu_only_without_a_metrics_adapter() -> None:
    values = {"autoscaling": {"enabled": True, "requestsWaiting": {"enabled": False}}}
    (metric,) = single(values, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_hpa_with_no_metric_is_refused() -> None:
    values = {
        "autoscaling": {
            "enabled": True,
            "requestsWaiting": {"enabled": False},
            "targetCPUUtilizationPercentage": None,
        }
    }
    with pytest.raises(helm_python.HelmRenderError, match="autoscaling"):
        render(values)


def test_pod_disruption_budget_selects_the_pods() -> None:
    pdb = single({}, "PodDisruptionBudget")
    pod_labels = single({}, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects_of_kind({"podDisruptionBudget": {"enabled": False}}, "PodDisruptionBudget") == []


def test_notes_show_how_to_stream_and_where_metrics_are() -> None:
    text = notes({})
    assert "lil-client --address localhost:50051 generate" in text
    assert "port-forward svc/demo-lil-sparse 50051:50051" in text
    assert "/metrics" in text and "9400" in text


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"replicaCount": -1}, "/replicaCount"),
        ({"server": {"defaults": {"policy": "lru"}}}, "/server/defaults/policy"),
        ({"server": {"defaults": {"guardian": {"mode": "gzip"}}}}, "/server/defaults/guardian/mode"),
        ({"server": {"port": 70000}}, "/server/port"),
        ({"server": {"maxRunning": 0}}, "/server/maxRunning"),
        ({"model": {"source": "pvc"}}, "/model/pvc/claimName"),
        ({"model": {"fetch": {"name": "gpt-5"}}}, "/model/fetch/name"),
        ({"gpu": {"count": 0}}, "/gpu/count"),
        ({"server": {"pageSize": 48}}, "/server/pageSize"),
        ({"server": {"backend": "triton"}}, "/server/backend"),
        ({"serviceMonitor": {"interval": "soon"}}, "/serviceMonitor/interval"),
        ({"replicas": 2}, "replicas"),  # a typo of replicaCount
        ({"security": {"tls": {"enabled": True}}}, "/security/tls/secretName"),
        ({"security": {"auth": {"enabled": True}}}, "/security/auth/secretName"),
        ({"server": {"maxNewTokensLimit": 0}}, "/server/maxNewTokensLimit"),
    ],
)
def test_schema_rejects_invalid_values(values: dict[str, Any], path: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(path)):
        render(values)


def test_schema_choices_are_the_engine_choices() -> None:
    with load_chart() as chart:
        schema = chart.schema
    defaults = schema["properties"]["server"]["properties"]["defaults"]["properties"]
    assert tuple(defaults["policy"]["enum"]) == POLICY_NAMES
    server = schema["properties"]["server"]["properties"]
    assert tuple(server["backend"]["enum"]) == BACKENDS
    assert tuple(server["dtype"]["enum"]) == DTYPES
    fetch = schema["properties"]["model"]["properties"]["fetch"]["properties"]
    assert fetch["name"]["enum"] == [model.name for model in KNOWN_MODELS]


def test_default_model_is_the_engine_default() -> None:
    assert merged_values({})["model"]["fetch"]["name"] == DEFAULT_MODEL


def test_server_settings_are_not_all_defaults_in_tuned_set() -> None:
    """Guards the tuned value set itself: it must move every server setting off its default."""
    tuned = setting_names_of(merged_values(VALUE_SETS["tuned"])["server"])
    unchanged = sorted(name for name, value in tuned.items() if value == server_default(name))
    assert unchanged == []
    assert {setting.name for setting in SERVER_SETTINGS} - set(tuned) == {"model"} | SECURITY_SETTINGS


def test_security_mounts_the_secrets_and_passes_their_files() -> None:
    container = server_container(VALUE_SETS["secure"])
    config = parse_container_args(container)
    assert (config.tls_cert_file, config.tls_key_file) == (
        "/etc/lil-sparse/tls/tls.crt",
        "/etc/lil-sparse/tls/tls.key",
    )
    assert config.tls_client_ca_file == "/etc/lil-sparse/client-ca/ca.crt"
    assert (config.auth_token_file, config.auth_exempt_health) == ("/etc/lil-sparse/auth/bearer", True)
    assert config.health_port == named_container_port(container, "health") == 8081
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    pod = single(VALUE_SETS["secure"], "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, secret, folder in (
        ("tls", "lil-tls", "/etc/lil-sparse/tls"),
        ("client-ca", "lil-client-ca", "/etc/lil-sparse/client-ca"),
        ("auth", "lil-token", "/etc/lil-sparse/auth"),
    ):
        assert (mounts[name]["mountPath"], mounts[name]["readOnly"]) == (folder, True)
        assert volumes[name]["secret"]["secretName"] == secret
    assert volumes["auth"]["secret"]["items"] == [{"key": "bearer", "path": "bearer"}]


def test_security_off_mounts_nothing_and_passes_no_file() -> None:
    container = server_container({})
    config = parse_container_args(container)
    assert (config.tls, config.auth_token_file, config.health_port) == (False, "", -1)
    assert not {"tls", "client-ca", "auth"} & {m["name"] for m in container["volumeMounts"]}


def test_auth_without_health_exemption_is_refused() -> None:
    values = {"security": {"auth": {"enabled": True, "secretName": "t", "exemptHealth": False}}}
    with pytest.raises(helm_python.HelmRenderError, match="exemptHealth"):
        render(values)
