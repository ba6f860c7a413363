{{/* The release's full name, at most 63 characters. */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component ("agent" or "webhook"). */}}
{{- define "sluice.selector" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the org CA (tls.crt, tls.key). */}}
{{- define "sluice.caSecret" -}}
{{- default (printf "%s-ca" (include "sluice.fullname" .)) .Values.ca.existingSecret -}}
{{- end -}}

{{/* The Sluice configuration the agent runs with: the chart's part, then `config`. */}}
{{- define "sluice.config" -}}
{{- $port := int .Values.agent.port -}}
{{- $base := dict
  "listen" (list (printf "127.0.0.1:%d" $port) (printf "${NODE_IP}:%d" $port))
  "metrics_listen" (printf "${NODE_IP}:%d" (int .Values.agent.metricsPort))
  "state_dir" "/var/lib/sluice"
  "ca" (dict "cert" "/etc/sluice/ca/tls.crt" "key" "/etc/sluice/ca/tls.key")
  "redirect" (dict
    "enabled" true
    "cgroup" "/run/sluice/cgroup"
    "pod_facing_v4" (printf "${NODE_IP}:%d" $port)
    "on_proxy_down" .Values.agent.onProxyDown
    "heartbeat_timeout_ms" (mul (int .Values.agent.heartbeatTimeoutSeconds) 1000)
    "pin_dir" "/sys/fs/bpf/sluice"
    "on_stop" (ternary "detach" "keep" .Values.agent.detachOnStop))
  "kubernetes" (dict "pod_logs" "/run/sluice/kubelet/pods" "container_logs" "/run/sluice/kubelet/containers" "api" (ternary "auto" "off" .Values.agent.podMetadataFromAPI))
  "ledger" (dict
    "retention_days" (int .Values.ledger.retentionDays)
    "content_mode" .Values.ledger.contentMode
    "witnesses" .Values.ledger.witnesses)
-}}
{{- if gt (int .Values.agent.threads) 0 -}}
{{- $_ := set $base "threads" (int .Values.agent.threads) -}}
{{- end -}}
{{- if .Values.fleet.redis.urlSecret -}}
{{- $_ := set $base "fleet" (dict
  "node_id" "${NODE_NAME}"
  "nodes" (int .Values.fleet.nodes)
  "redis" (dict
    "url" "${REDIS_URL}"
    "timeout_ms" (int .Values.fleet.redis.timeoutMs)
    "lease_ttl_ms" (int .Values.fleet.redis.leaseTtlMs)
    "connections" (int .Values.fleet.redis.connections))) -}}
{{- end -}}
{{- if .Values.fleet.central.urlSecret -}}
{{- $_ := set $base.ledger "central" (dict "url" "${DATABASE_URL}") -}}
{{- if not .Values.fleet.redis.urlSecret -}}
{{- $_ := set $base "fleet" (dict "node_id" "${NODE_NAME}") -}}
{{- end -}}
{{- end -}}
{{- if .Values.ledger.keysSecret -}}
{{- $_ := set $base.ledger "hmac_key_file" "/etc/sluice/ledger-keys/hmac.key" -}}
{{- $_ := set $base.ledger "signing_key_file" "/etc/sluice/ledger-keys/checkpoint.key" -}}
{{- end -}}
{{- toYaml (mergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end -}}
