{{/* The SMG gateway's resource name. */}}
{{- define "lil-sparse.gateway.fullname" -}}
{{- printf "%s-gateway" (include "lil-sparse.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Gateway pod labels. Their name label differs from the workers' so the worker Service, PDB and
the gateway's own discovery never select a gateway pod.
*/}}
{{- define "lil-sparse.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lil-sparse.name" . }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lil-sparse.gateway.labels" -}}
helm.sh/chart: {{ include "lil-sparse.chart" . }}
{{ include "lil-sparse.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.gateway.image.tag | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* `smg launch` arguments (the image's entrypoint is `python3 -m smg.launch_router`). */}}
{{- define "lil-sparse.gateway.args" -}}
- "--host=0.0.0.0"
- {{ printf "--port=%d" (int .Values.gateway.port) | quote }}
- {{ printf "--prometheus-port=%d" (int .Values.gateway.metricsPort) | quote }}
- {{ printf "--policy=%s" .Values.gateway.policy | quote }}
{{- if eq .Values.gateway.discovery "kubernetes" }}
- "--service-discovery"
- "--selector"
{{- range $key, $value := (include "lil-sparse.selectorLabels" . | fromYaml) }}
{{- if not (and $.Values.gateway.discoverAllReleases (eq $key "app.kubernetes.io/instance")) }}
- {{ printf "%s=%s" $key $value | quote }}
{{- end }}
{{- end }}
- {{ printf "--service-discovery-port=%d" (int .Values.server.port) | quote }}
- {{ printf "--service-discovery-namespace=%s" .Release.Namespace | quote }}
{{- else }}
- "--worker-urls"
{{- range .Values.gateway.workerUrls }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- range .Values.gateway.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
