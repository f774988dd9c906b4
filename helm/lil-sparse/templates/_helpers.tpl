{{/* Chart name, at most 63 characters (a DNS label). */}}
{{- define "lil-sparse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: release-chart, or the release name alone when it already holds the chart name. */}}
{{- define "lil-sparse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lil-sparse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lil-sparse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lil-sparse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lil-sparse.labels" -}}
helm.sh/chart: {{ include "lil-sparse.chart" . }}
{{ include "lil-sparse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lil-sparse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lil-sparse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lil-sparse.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The gRPC service whose health is readiness: the full name of the service in
proto/lil_sparse/v1/service.proto (the server sets it SERVING once the model is loaded and
NOT_SERVING while draining). The chart's tests check it against server.servicer.SERVICE_NAME.
*/}}
{{- define "lil-sparse.readinessService" -}}
lil_sparse.v1.LilSparseService
{{- end }}

{{/* Where the model volume is mounted in both containers; also $LIL_SPARSE_CACHE. */}}
{{- define "lil-sparse.modelDir" -}}
/models
{{- end }}

{{/* The --model argument: a known model name resolved in the fetched cache, or a path on the PVC. */}}
{{- define "lil-sparse.modelArg" -}}
{{- if eq .Values.model.source "pvc" }}
{{- printf "%s/%s" (include "lil-sparse.modelDir" .) (trimPrefix "/" .Values.model.pvc.path) | trimSuffix "/" }}
{{- else }}
{{- .Values.model.fetch.name }}
{{- end }}
{{- end }}

{{- define "lil-sparse.device" -}}
{{- if .Values.server.device }}
{{- .Values.server.device }}
{{- else if .Values.gpu.enabled }}
{{- "cuda" }}
{{- else }}
{{- "cpu" }}
{{- end }}
{{- end }}

{{/* A boolean server flag: --name or --no-name (the server's flags are BooleanOptionalAction). */}}
{{- define "lil-sparse.boolFlag" -}}
{{- if .value }}--{{ .name }}{{ else }}--no-{{ .name }}{{ end }}
{{- end }}

{{/*
Pod termination grace: preStop sleep, then the server's drain (server.gracePeriodSeconds), then
its abort flush and exit, for which 10 s is ample.
*/}}
{{- define "lil-sparse.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.lifecycle.terminationGracePeriodSeconds }}
{{- add (int .Values.lifecycle.preStopSleepSeconds) (int (ceil .Values.server.gracePeriodSeconds)) 10 }}
{{- else }}
{{- int .Values.lifecycle.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}
