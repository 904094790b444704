{{/* Names ---------------------------------------------------------------- */}}

{{- define "outflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "outflow.aggregator.fullname" -}}{{ include "outflow.fullname" . }}-aggregator{{- end -}}
{{- define "outflow.aggregator.headless" -}}{{ include "outflow.fullname" . }}-aggregator-headless{{- end -}}
{{- define "outflow.collector.fullname" -}}{{ include "outflow.fullname" . }}-collector{{- end -}}
{{- define "outflow.collector.headless" -}}{{ include "outflow.fullname" . }}-collector-headless{{- end -}}
{{- define "outflow.agent.fullname" -}}{{ include "outflow.fullname" . }}-agent{{- end -}}

{{/* Labels --------------------------------------------------------------- */}}

{{- define "outflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "outflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "collector"). */}}
{{- define "outflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "outflow.componentLabels" -}}
{{ include "outflow.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Images --------------------------------------------------------------- */}}

{{- define "outflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "outflow.agentImage" -}}
{{- printf "%s:%s" .Values.agentImage.repository (default .Chart.AppVersion .Values.agentImage.tag) -}}
{{- end -}}

{{/* Cluster topology ------------------------------------------------------ */}}

{{/* Raft quorum of the aggregator group: floor(n/2)+1. */}}
{{- define "outflow.aggregator.quorum" -}}
{{- add (div (int .Values.aggregator.replicas) 2) 1 -}}
{{- end -}}

{{/* Stable DNS name of aggregator pod i (include with (list $ i)). */}}
{{- define "outflow.aggregator.podHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "outflow.aggregator.fullname" $ctx) (index . 1) (include "outflow.aggregator.headless" $ctx) $ctx.Release.Namespace $ctx.Values.clusterDomain -}}
{{- end -}}

{{/* --peers: 1=<pod-0>:port,2=<pod-1>:port,… (Raft id = ordinal + 1). */}}
{{- define "outflow.aggregator.peers" -}}
{{- $ctx := . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.aggregator.replicas) -}}
{{- $out = append $out (printf "%d=%s:%d" (add $i 1) (include "outflow.aggregator.podHost" (list $ctx $i)) (int $ctx.Values.aggregator.grpcPort)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* --aggregators for collectors: every aggregator pod's gRPC address. */}}
{{- define "outflow.aggregator.addresses" -}}
{{- $ctx := . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.aggregator.replicas) -}}
{{- $out = append $out (printf "%s:%d" (include "outflow.aggregator.podHost" (list $ctx $i)) (int $ctx.Values.aggregator.grpcPort)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The collector endpoint agents dial. */}}
{{- define "outflow.agent.collectorEndpoint" -}}
{{- if .Values.agent.collectorEndpoint -}}
{{- .Values.agent.collectorEndpoint -}}
{{- else -}}
{{- printf "https://%s.%s.svc.%s:%d" (include "outflow.collector.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.collector.grpcPort) -}}
{{- end -}}
{{- end -}}

{{/* Secrets holding each component's certificate. */}}
{{- define "outflow.aggregator.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "outflow.aggregator.fullname" . }}-tls{{- else -}}{{ .Values.tls.secrets.aggregator }}{{- end -}}
{{- end -}}
{{- define "outflow.collector.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "outflow.collector.fullname" . }}-tls{{- else -}}{{ .Values.tls.secrets.collector }}{{- end -}}
{{- end -}}
{{- define "outflow.admin.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "outflow.fullname" . }}-admin-tls{{- else -}}{{ .Values.tls.secrets.admin }}{{- end -}}
{{- end -}}
{{- define "outflow.agent.tlsSecret" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.tls.certManager.enabled -}}
{{- printf "%s-%s" (include "outflow.agent.fullname" $ctx) (index . 1) | trunc 253 -}}
{{- else -}}
{{- printf "%s%s" $ctx.Values.agent.identity.secretPrefix (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* The certificate directory of a server pod as the binaries expect it
(ca.pem, server.pem, server-key.pem), projected from a tls Secret. */}}
{{- define "outflow.serverCertsVolume" -}}
- name: certs
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ . }}
          items:
            - {key: ca.crt, path: ca.pem}
            - {key: tls.crt, path: server.pem}
            - {key: tls.key, path: server-key.pem}
{{- end -}}

{{/* Pod and container hardening shared by collectors and aggregators. */}}
{{- define "outflow.serverPodSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "outflow.serverContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Anti-affinity: include with (dict "ctx" $ "component" "aggregator" "mode" "hard"). */}}
{{- define "outflow.antiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "outflow.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "outflow.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end -}}

{{/* TOML ------------------------------------------------------------------
Helm reads every number in values as a float64, which toToml would write as
4.194304e+06 and the binaries (u64 fields) would refuse. These helpers write
whole numbers as integers, skip nulls (= the option's None) and recurse into
tables. */}}

{{- define "outflow.tomlValue" -}}
{{- $v := . -}}
{{- $k := kindOf $v -}}
{{- if eq $k "bool" -}}
{{- ternary "true" "false" $v -}}
{{- else if or (eq $k "float64") (eq $k "int") (eq $k "int64") -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if eq $k "string" -}}
{{- toJson $v -}}
{{- else if eq $k "slice" -}}
[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "outflow.tomlValue" $e -}}{{- end -}}]
{{- else -}}
{{- fail (printf "cannot write a %s as a TOML value" $k) -}}
{{- end -}}
{{- end -}}

{{/* A bare key when it can be one, else a quoted key. */}}
{{- define "outflow.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* include with (dict "table" $map "prefix" ""). */}}
{{- define "outflow.toml" -}}
{{- $t := .table -}}
{{- $prefix := .prefix -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- if and (ne (kindOf $v) "map") (ne (kindOf $v) "invalid") }}
{{ include "outflow.tomlKey" $k }} = {{ include "outflow.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- if eq (kindOf $v) "map" }}
{{- $name := ternary (include "outflow.tomlKey" $k) (printf "%s.%s" $prefix (include "outflow.tomlKey" $k)) (eq $prefix "") }}

[{{ $name }}]
{{- include "outflow.toml" (dict "table" $v "prefix" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
