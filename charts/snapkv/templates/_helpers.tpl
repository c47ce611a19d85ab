{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "snapkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, suffixed with the chart name unless it holds it. */}}
{{- define "snapkv.fullname" -}}
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

{{- define "snapkv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource; pass (dict "ctx" $ "component" "store"). */}}
{{- define "snapkv.labels" -}}
helm.sh/chart: {{ include "snapkv.chart" .ctx }}
{{ include "snapkv.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: snapkv
{{- end }}

{{- define "snapkv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "snapkv.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "snapkv.broker.fullname" -}}
{{- printf "%s-broker" (include "snapkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The broker Service stores register through: it lists the broker before it is ready. */}}
{{- define "snapkv.broker.internalName" -}}
{{- printf "%s-broker-internal" (include "snapkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snapkv.store.fullname" -}}
{{- printf "%s-store" (include "snapkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Headless Service that gives each store pod a stable DNS name. */}}
{{- define "snapkv.store.headlessName" -}}
{{- printf "%s-store-headless" (include "snapkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snapkv.brokerUrl" -}}
{{- printf "http://%s:%d/register" (include "snapkv.broker.internalName" .) (int .Values.broker.port) }}
{{- end }}

{{- define "snapkv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "snapkv.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The brokers' ServiceAccount: the Lease and the state ConfigMap, nothing the stores need. */}}
{{- define "snapkv.broker.serviceAccountName" -}}
{{- if .Values.broker.serviceAccount.create }}
{{- default (include "snapkv.broker.fullname" .) .Values.broker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.broker.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The brokers' Lease is named as their Deployment (SNAPKV_LEASE_NAME); the leader keeps the
cluster state in ConfigMap <lease>-state (services/broker/kube.py). */}}
{{- define "snapkv.broker.leaseName" -}}
{{- include "snapkv.broker.fullname" . }}
{{- end }}

{{- define "snapkv.broker.stateName" -}}
{{- printf "%s-state" (include "snapkv.broker.leaseName" .) }}
{{- end }}

{{- define "snapkv.secretName" -}}
{{- default (printf "%s-cluster-token" (include "snapkv.fullname" .)) .Values.clusterToken.existingSecret }}
{{- end }}

{{- define "snapkv.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/* Environment both services share. */}}
{{- define "snapkv.commonEnv" -}}
- name: SNAPKV_HOST
  value: "0.0.0.0"
- name: SNAPKV_DATA_DIR
  value: /data
- name: SNAPKV_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: SNAPKV_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "snapkv.secretName" . }}
      key: {{ .Values.clusterToken.key }}
{{- end }}

{{/* Cluster-scoped names carry the namespace so two releases in two namespaces do not clash. */}}
{{- define "snapkv.nodeReaderName" -}}
{{- printf "%s-%s-node-reader" .Release.Namespace (include "snapkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
