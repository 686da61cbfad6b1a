{{/* The chart's name, or nameOverride. */}}
{{- define "embeddings-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, at most 63 characters (a DNS label); the release name alone when it
already contains the chart's name.
*/}}
{{- define "embeddings-gateway.fullname" -}}
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

{{- define "embeddings-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "embeddings-gateway.labels" -}}
helm.sh/chart: {{ include "embeddings-gateway.chart" . }}
app.kubernetes.io/name: {{ include "embeddings-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: embeddings-gateway
{{- end }}

{{/* The gateway's pods; the bundled Redis has the same labels with component: redis. */}}
{{- define "embeddings-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embeddings-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "embeddings-gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "embeddings-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "embeddings-gateway.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embeddings-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "embeddings-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "embeddings-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "embeddings-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{- define "embeddings-gateway.registryConfigMap" -}}
{{- default (printf "%s-registry" (include "embeddings-gateway.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{/* The registry's YAML: config.models as text or as a map, else the shipped one. */}}
{{- define "embeddings-gateway.models" -}}
{{- $models := .Values.config.models }}
{{- if kindIs "map" $models }}
{{- toYaml $models }}
{{- else if $models }}
{{- $models }}
{{- else }}
{{- $shipped := .Files.Get "files/models.yaml" }}
{{- if not $shipped }}
{{- fail "files/models.yaml (a link to config/models.yaml) is missing from the chart: set config.models or config.existingConfigMap" }}
{{- end }}
{{- $shipped }}
{{- end }}
{{- end }}

{{/* Where the gateway writes: SQLite files and local batch files. */}}
{{- define "embeddings-gateway.dataDir" -}}/srv/data{{- end }}

{{/* True when /srv/data is a PersistentVolumeClaim. */}}
{{- define "embeddings-gateway.dataClaim" -}}
{{- if and (eq .Values.batch.storage "local") .Values.batch.persistence.enabled }}
{{- default (printf "%s-data" (include "embeddings-gateway.fullname" .)) .Values.batch.persistence.existingClaim }}
{{- end }}
{{- end }}

{{/* True when that claim can be mounted on one node only. */}}
{{- define "embeddings-gateway.dataClaimSingleNode" -}}
{{- if and (include "embeddings-gateway.dataClaim" .) (not (has "ReadWriteMany" .Values.batch.persistence.accessModes)) }}true{{ end }}
{{- end }}

{{/* Whole seconds from SIGTERM to SIGKILL: the gateway's drain and flush, with the margin. */}}
{{- define "embeddings-gateway.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- int (ceil (addf $s.delaySeconds $s.graceSeconds $s.marginSeconds)) }}
{{- end }}

{{/* Variable names whose values are secrets: only existingSecret (or valueFrom) may set them. */}}
{{- define "embeddings-gateway.secretNamePattern" -}}
(^|_)(API_KEYS?|TOKEN|PASSWORD|SECRET|SECRET_ACCESS_KEY)$|^AWS_ACCESS_KEY_ID$|^OTEL_EXPORTER_OTLP(_TRACES)?_HEADERS$
{{- end }}

{{/* A URL with a password in it: scheme://user:password@host. */}}
{{- define "embeddings-gateway.urlPasswordPattern" -}}
^[a-z]+://[^/@]*:[^/@]+@
{{- end }}

{{/*
The variables the chart derives from its values, as a map of name to value. Refuses the
combinations the gateway itself would refuse at start-up, so `helm install` says so first.
*/}}
{{- define "embeddings-gateway.derivedEnv" -}}
{{- $env := dict }}
{{- $_ := set $env "HOST" "0.0.0.0" }}
{{- $_ := set $env "PORT" "8000" }}
{{- $_ := set $env "WORKERS" "2" }}
{{- $_ := set $env "LOG_FORMAT" "json" }}
{{- $_ := set $env "LOG_LEVEL" "info" }}
{{- $_ := set $env "MODELS_CONFIG" "/etc/embeddings-gateway/models.yaml" }}
{{- $_ := set $env "SHUTDOWN_DELAY_SECONDS" (toString .Values.shutdown.delaySeconds) }}
{{- $_ := set $env "SHUTDOWN_GRACE_SECONDS" (toString .Values.shutdown.graceSeconds) }}
{{- $data := include "embeddings-gateway.dataDir" . }}
{{- $_ := set $env "KEYS_DB" (printf "%s/keys.db" $data) }}
{{- $_ := set $env "BATCH_DB" (printf "%s/batches.db" $data) }}
{{- /* Redis */}}
{{- $redis := .Values.redis }}
{{- if and $redis.url (regexMatch (include "embeddings-gateway.urlPasswordPattern" .) $redis.url) }}
{{- fail "redis.url carries a password: put REDIS_PASSWORD (or the whole REDIS_URL) in existingSecret instead" }}
{{- end }}
{{- if $redis.enabled }}
{{- if $redis.url }}
{{- fail "redis.enabled runs a Redis in the release and redis.url names another: set one of them" }}
{{- end }}
{{- if ne $redis.mode "standalone" }}
{{- fail "redis.enabled runs a single standalone Redis: redis.mode must be standalone" }}
{{- end }}
{{- $_ := set $env "REDIS_URL" (printf "redis://%s:6379/0" (include "embeddings-gateway.redis.fullname" .)) }}
{{- else if $redis.url }}
{{- $_ := set $env "REDIS_URL" $redis.url }}
{{- end }}
{{- $_ := set $env "REDIS_MODE" $redis.mode }}
{{- if eq $redis.mode "sentinel" }}
{{- if or (not $redis.sentinels) (not $redis.sentinelMaster) }}
{{- fail "redis.mode sentinel needs redis.sentinels (host:port, ...) and redis.sentinelMaster" }}
{{- end }}
{{- $_ := set $env "REDIS_SENTINELS" (join "," $redis.sentinels) }}
{{- $_ := set $env "REDIS_SENTINEL_MASTER" $redis.sentinelMaster }}
{{- else if and (eq $redis.mode "cluster") (not $redis.url) (not .Values.existingSecret) }}
{{- fail "redis.mode cluster needs redis.url naming any one node (or REDIS_URL in existingSecret)" }}
{{- end }}
{{- /* Batch storage */}}
{{- $batch := .Values.batch }}
{{- $_ := set $env "BATCH_STORAGE" $batch.storage }}
{{- if eq $batch.storage "local" }}
{{- $_ := set $env "BATCH_DIR" (printf "%s/batches" $data) }}
{{- if and (include "embeddings-gateway.dataClaimSingleNode" .) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "batch.storage local with several replicas needs a ReadWriteMany volume (batch.persistence.accessModes): every replica must see every batch's files. Or run one replica (replicaCount 1, no autoscaling), or use batch.storage s3" }}
{{- end }}
{{- else }}
{{- if not $batch.s3.bucket }}
{{- fail "batch.storage s3 needs batch.s3.bucket" }}
{{- end }}
{{- $_ := set $env "BATCH_S3_BUCKET" $batch.s3.bucket }}
{{- with $batch.s3.prefix }}
{{- $_ := set $env "BATCH_S3_PREFIX" . }}
{{- end }}
{{- with $batch.s3.endpointUrl }}
{{- $_ := set $env "BATCH_S3_ENDPOINT_URL" . }}
{{- end }}
{{- with $batch.s3.region }}
{{- $_ := set $env "BATCH_S3_REGION" . }}
{{- end }}
{{- end }}
{{- /* OpenTelemetry */}}
{{- $otel := .Values.otel }}
{{- if $otel.enabled }}
{{- if not $otel.endpoint }}
{{- fail "otel.enabled needs otel.endpoint (the gateway traces only when an endpoint is set)" }}
{{- end }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $otel.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" $otel.protocol }}
{{- $_ := set $env "OTEL_SERVICE_NAME" (default (include "embeddings-gateway.name" .) $otel.serviceName) }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" $otel.sampler }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (toString $otel.samplerArg) }}
{{- if $otel.resourceAttributes }}
{{- $pairs := list }}
{{- range $key, $value := $otel.resourceAttributes }}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value)) }}
{{- end }}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" (join "," $pairs) }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
The container's env: what the chart derives, overridden by `env` (a map, or a list of EnvVar
objects), then OTEL_EXPORTER_OTLP_HEADERS from its Secret. One entry per name, so no variable
silently hides another.
*/}}
{{- define "embeddings-gateway.env" -}}
{{- $derived := include "embeddings-gateway.derivedEnv" . | fromYaml }}
{{- $pattern := include "embeddings-gateway.secretNamePattern" . }}
{{- $userList := list }}
{{- if kindIs "map" .Values.env }}
{{- range $name, $value := .Values.env }}
{{- $userList = append $userList (dict "name" $name "value" (toString $value)) }}
{{- end }}
{{- else }}
{{- $userList = .Values.env | default list }}
{{- end }}
{{- $userNames := list }}
{{- range $userList }}
{{- if and (hasKey . "value") (regexMatch $pattern .name) }}
{{- fail (printf "env.%s looks like a secret: put it in existingSecret (or use valueFrom), never in values" .name) }}
{{- end }}
{{- if and (eq .name "REDIS_URL") (regexMatch (include "embeddings-gateway.urlPasswordPattern" $) (toString .value)) }}
{{- fail "env.REDIS_URL carries a password: put REDIS_PASSWORD (or the whole REDIS_URL) in existingSecret instead" }}
{{- end }}
{{- $userNames = append $userNames .name }}
{{- end }}
{{- $otel := .Values.otel }}
{{- $headers := and $otel.enabled $otel.headersSecret.key (not (has "OTEL_EXPORTER_OTLP_HEADERS" $userNames)) }}
{{- if and $headers (not (or $otel.headersSecret.name .Values.existingSecret)) }}
{{- fail "otel.headersSecret.key needs otel.headersSecret.name or existingSecret" }}
{{- end }}
{{- range $name, $value := $derived }}
{{- if not (has $name $userNames) }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- range $userList }}
- {{ toYaml . | nindent 2 | trim }}
{{- end }}
{{- if $headers }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ default .Values.existingSecret $otel.headersSecret.name }}
      key: {{ $otel.headersSecret.key }}
{{- end }}
{{- end }}
