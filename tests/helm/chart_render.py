"""Render the lil-sparse chart offline and pick rendered objects apart, for the chart's tests.

Rendering and linting go through Helm's own Go SDK (``helm-python-sdk``), so the templates,
``values.schema.json`` and ``helm lint`` behave as the ``helm`` binary would; no cluster and no
network are involved. Pins: requirements-helm-test.txt.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "lil-sparse"
RELEASE = "demo"
NAMESPACE = "inference"

# Value sets the issue asks for, plus one that moves every server setting off its default.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
    },
    "pvc": {"model": {"source": "pvc", "pvc": {"claimName": "models", "path": "smollm2/model.gguf"}}},
    "no-gpu": {"gpu": {"enabled": False}, "resources": {"requests": {"cpu": "4", "memory": "4Gi"}}},
    "headless": {"service": {"headless": True}, "replicaCount": 3},
    "secure": {
        "security": {
            "tls": {"enabled": True, "secretName": "lil-tls", "clientCASecretName": "lil-client-ca"},
            "auth": {"enabled": True, "secretName": "lil-token", "secretKey": "bearer"},
        }
    },
    "tuned": {
        "server": {
            "host": "[::]",
            "port": 6000,
            "metricsPort": 9500,
            "maxRunning": 32,
            "maxWaiting": 7,
            "gracePeriodSeconds": 90.5,
            "reflection": False,
            "guardianWorkers": 0,
            "device": "cuda:0",
            "backend": "flashinfer",
            "dtype": "bfloat16",
            "pageSize": 32,
            "kvCacheTokens": 65536,
            "maxModelLen": 8192,
            "chunkedPrefill": False,
            "overlapScheduling": "off",
            "warmUp": "off",
            "maxNumBatchedTokens": 4096,
            "selection": "when_faster",
            "maxNewTokensLimit": 1024,
            "maxPromptBytes": 262144,
            "tokenizerThreads": 4,
            "servedModelName": "smollm2-quest",
            "torchThreads": 4,
            "defaults": {
                "temperature": 0.7,
                "topK": 50,
                "topP": 0.9,
                "maxNewTokens": 1024,
                "policy": "quest",
                "budgetTokens": 256,
                "sinkTokens": 8,
                "recentTokens": 32,
                "denseLayers": 1,
                "guardian": {
                    "enabled": True,
                    "intervalTokens": 100,
                    "thresholdBytes": 12,
                    "mode": "incremental",
                    "source": "token_ids",
                },
            },
        },
        "lifecycle": {"preStopSleepSeconds": 12},
    },
}


def load_chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART_DIR)


@functools.cache
def _render_cached(values_json: str) -> dict[str, str]:
    with load_chart() as chart:
        rendered: dict[str, str] = chart.render(
            values=json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return rendered


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path (``lil-sparse/templates/x.yaml``) -> rendered text, NOTES.txt included."""
    return _render_cached(json.dumps(values, sort_keys=True))


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for ``values`` (NOTES.txt and empty files skipped)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def objects_of_kind(values: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in manifests(values) if obj["kind"] == kind]


def single(values: dict[str, Any], kind: str) -> dict[str, Any]:
    found = objects_of_kind(values, kind)
    if len(found) != 1:
        raise LookupError(f"expected one {kind}, the chart rendered {len(found)}")
    return found[0]


def server_container(values: dict[str, Any]) -> dict[str, Any]:
    pod = single(values, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "server"]
    return container


def named_container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def notes(values: dict[str, Any]) -> str:
    (text,) = [text for path, text in render(values).items() if path.endswith("NOTES.txt")]
    return text
