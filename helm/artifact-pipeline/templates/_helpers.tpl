{{/* vim: set filetype=mustache: */}}

{{- define "ap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource name prefix. Kept at most 40 characters so that component suffixes fit in 63. */}}
{{- define "ap.fullname" -}}
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

{{- define "ap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries. */}}
{{- define "ap.labels" -}}
helm.sh/chart: {{ include "ap.chart" . }}
app.kubernetes.io/name: {{ include "ap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: artifact-pipeline
{{- end -}}

{{- define "ap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The components: values key, component name (label value, resource suffix, stage name),
binary, and kind (stage or api). Stage components also name their consumer group and
input topic suffix.
*/}}
{{- define "ap.components" -}}
- key: mimeDetector
  component: mime-detector
  binary: mime-detector
  kind: stage
  input: created
- key: locationLogger
  component: location-logger
  binary: location-logger
  kind: stage
  input: mime-detected
- key: pdfParser
  component: pdf-parser
  binary: pdf-parser
  kind: stage
  input: location-verified
- key: summarizer
  component: summarizer
  binary: summarizer
  kind: stage
  input: parsed
- key: api
  component: api
  binary: artifact-api
  kind: api
  input: ""
{{- end -}}

{{/* The components as a list of dicts: include "ap.componentList" . | fromYamlArray */}}
{{- define "ap.componentList" -}}
{{- include "ap.components" . -}}
{{- end -}}

{{/*
Settings of one component: `common` with the component's own block on top. A key the
component sets replaces the common one; when both are maps they are merged one level deep
(so `keda: {minReplicaCount: 0}` keeps the other keda settings of `common`). Lists and
scalars replace. Call with (list $ "mimeDetector"); returns YAML.
*/}}
{{- define "ap.settings" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $common := $root.Values.common -}}
{{- $own := index $root.Values $key | default dict -}}
{{- $out := dict -}}
{{- range $k, $v := $common -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- range $k, $v := $own -}}
{{- $base := index $common $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $base) -}}
{{- $merged := dict -}}
{{- range $ck, $cv := $base -}}
{{- $_ := set $merged $ck $cv -}}
{{- end -}}
{{- range $ok, $ov := $v -}}
{{- $_ := set $merged $ok $ov -}}
{{- end -}}
{{- $_ := set $out $k $merged -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "ap.componentName" -}}
{{- printf "%s-%s" (include "ap.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{- define "ap.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ap.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "ap.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether the blob store is the volume (blobStore.url empty) rather than S3. */}}
{{- define "ap.blobsOnVolume" -}}
{{- if not .Values.blobStore.url -}}true{{- end -}}
{{- end -}}

{{- define "ap.blobClaimName" -}}
{{- if .Values.blobStore.persistence.existingClaim -}}
{{- .Values.blobStore.persistence.existingClaim -}}
{{- else -}}
{{- printf "%s-blobs" (include "ap.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* An env var from the Secret, absent when the Secret lacks the key. (list $ "KEY") */}}
{{- define "ap.secretEnv" -}}
{{- include "ap.secretEnvNamed" (list (include "ap.secretName" (index . 0)) (index . 1)) -}}
{{- end -}}

{{/* An env var from the named Secret, absent when it lacks the key. (list "secret-name" "KEY") */}}
{{- define "ap.secretEnvNamed" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 0 }}
      key: {{ index . 1 }}
      optional: true
{{- end -}}

{{/* An env var from the Secret that must hold the key: the pod does not start without it. (list $ "KEY") */}}
{{- define "ap.secretEnvRequired" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ap.secretName" (index . 0) }}
      key: {{ index . 1 }}
      optional: false
{{- end -}}

{{/* Refuses an API without tokens unless it is explicitly anonymous, with reads open. */}}
{{- define "ap.checkApiAuth" -}}
{{- $api := .Values.api -}}
{{- if $api.enabled -}}
{{- $tokens := or .Values.secrets.apiTokens .Values.secrets.existingSecret -}}
{{- if and (not $api.allowAnonymous) (not $tokens) -}}
{{- fail "artifact-api needs bearer tokens: set secrets.apiTokens, or secrets.existingSecret with an API_TOKENS key; or set api.allowAnonymous=true and api.protectReads=false to run it open to anyone" -}}
{{- end -}}
{{- if and $api.allowAnonymous .Values.secrets.apiTokens -}}
{{- fail "api.allowAnonymous=true and secrets.apiTokens are both set: drop one" -}}
{{- end -}}
{{- if and $api.allowAnonymous (ne (toString $api.protectReads) "false") -}}
{{- fail "api.allowAnonymous=true needs api.protectReads=false: without tokens no read can be authorised" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart's Secret would hold anything. */}}
{{- define "ap.secretHasData" -}}
{{- with .Values.secrets -}}
{{- if or .kafkaProperties .apiTokens .schemaRegistryUrl .llmApiKey .awsAccessKeyId .awsSecretAccessKey -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether the stage's autoscaling is on (KEDA or HPA): the Deployment then leaves replicas alone. */}}
{{- define "ap.autoscaled" -}}
{{- $s := index . 0 -}}
{{- $c := index . 1 -}}
{{- if or (and (eq $c.kind "stage") $s.keda.enabled) $s.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/* A value as an env var string: whole numbers without exponent notation. */}}
{{- define "ap.envValue" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- . | int64 | toString | quote -}}
{{- else -}}
{{- . | toString | quote -}}
{{- end -}}
{{- end -}}

{{/* The non-secret env of one component, as ConfigMap data. (list $ $component $settings) */}}
{{- define "ap.configData" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $s := index . 2 -}}
{{- $data := dict -}}
{{- $_ := set $data "KAFKA_BOOTSTRAP_SERVERS" $root.Values.kafka.bootstrapServers -}}
{{- $_ := set $data "SCHEMA_REGISTRY_URL" $root.Values.schemaRegistry.url -}}
{{- $_ := set $data "TOPIC_PREFIX" $root.Values.kafka.topicPrefix -}}
{{- with $root.Values.blobStore -}}
{{- if .url -}}
{{- $_ := set $data "BLOB_STORE_URL" .url -}}
{{- with .s3.endpoint }}{{ $_ := set $data "AWS_ENDPOINT_URL" . }}{{ end -}}
{{- with .s3.region }}{{ $_ := set $data "AWS_REGION" . }}{{ end -}}
{{- if .s3.allowHttp }}{{ $_ := set $data "AWS_ALLOW_HTTP" "true" }}{{ end -}}
{{- else -}}
{{- $_ := set $data "BLOB_STORE_URL" (printf "file://%s" .mountPath) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $data "HTTP_ADDR" "0.0.0.0:8080" -}}
{{- $_ := set $data "RUST_LOG" $s.logLevel -}}
{{- with $root.Values.tracing -}}
{{- if .otlpEndpoint -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" .otlpEndpoint -}}
{{- $_ := set $data "OTEL_SERVICE_NAME" $c.binary -}}
{{- with .sampler }}{{ $_ := set $data "OTEL_TRACES_SAMPLER" . }}{{ end -}}
{{- with .samplerArg }}{{ $_ := set $data "OTEL_TRACES_SAMPLER_ARG" . }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if eq $c.kind "stage" -}}
{{- $_ := set $data "CONSUMER_GROUP" $c.component -}}
{{- $names := dict "delivery" "DELIVERY" "transactionMaxRecords" "TRANSACTION_MAX_RECORDS" "transactionMaxMs" "TRANSACTION_MAX_MS" "transactionLingerMs" "TRANSACTION_LINGER_MS" "transactionLingerMaxMs" "TRANSACTION_LINGER_MAX_MS" "transactionTargetRecords" "TRANSACTION_TARGET_RECORDS" "concurrency" "STAGE_CONCURRENCY" "processingTimeoutMs" "PROCESSING_TIMEOUT_MS" "retryInlineAttempts" "RETRY_INLINE_ATTEMPTS" "retryInlineBackoffMs" "RETRY_INLINE_BACKOFF_MS" "retryMaxDeliveries" "RETRY_MAX_DELIVERIES" "retryDelayMs" "RETRY_DELAY_MS" "retryDelayMaxMs" "RETRY_DELAY_MAX_MS" "dedupRetentionMs" "DEDUP_RETENTION_MS" "poisonMaxCrashes" "POISON_MAX_CRASHES" "maxInflightBytes" "STAGE_MAX_INFLIGHT_BYTES" "shutdownTimeoutMs" "SHUTDOWN_TIMEOUT_MS" -}}
{{- range $k, $v := $s.runner -}}
{{- $_ := set $data (index $names $k) $v -}}
{{- end -}}
{{- end -}}
{{- if eq $c.key "pdfParser" -}}
{{- $names := dict "maxBytes" "PARSE_MAX_BYTES" "maxPages" "PARSE_MAX_PAGES" "maxChars" "PARSE_MAX_CHARS" "maxContentBytes" "PARSE_MAX_CONTENT_BYTES" "timeoutMs" "PARSE_TIMEOUT_MS" -}}
{{- range $k, $v := ($s.parse | default dict) -}}
{{- $_ := set $data (index $names $k) $v -}}
{{- end -}}
{{- end -}}
{{- if eq $c.key "summarizer" -}}
{{- $names := dict "maxSentences" "SUMMARY_MAX_SENTENCES" "maxChars" "SUMMARY_MAX_CHARS" "maxTextBytes" "SUMMARY_MAX_TEXT_BYTES" -}}
{{- range $k, $v := ($s.summary | default dict) -}}
{{- $_ := set $data (index $names $k) $v -}}
{{- end -}}
{{- end -}}
{{- if eq $c.kind "api" -}}
{{- if $s.maxUploadBytes -}}
{{- $_ := set $data "MAX_UPLOAD_BYTES" $s.maxUploadBytes -}}
{{- end -}}
{{- $_ := set $data "API_PROTECT_READS" (ternary "false" "true" (eq (toString $s.protectReads) "false")) -}}
{{- if $s.allowAnonymous -}}
{{- $_ := set $data "API_ALLOW_ANONYMOUS" "true" -}}
{{- end -}}
{{- $names := dict "maxConcurrentUploads" "API_MAX_CONCURRENT_UPLOADS" "maxEventStreams" "API_MAX_EVENT_STREAMS" "uploadDeadlineMs" "API_UPLOAD_DEADLINE_MS" "bodyIdleTimeoutMs" "API_BODY_IDLE_TIMEOUT_MS" "headerTimeoutMs" "API_HEADER_TIMEOUT_MS" "rateLimitPerSecond" "API_RATE_LIMIT_PER_SECOND" "rateLimitBurst" "API_RATE_LIMIT_BURST" -}}
{{- range $k, $v := ($s.limits | default dict) -}}
{{- $_ := set $data (index $names $k) $v -}}
{{- end -}}
{{- if $s.projectorGroup -}}
{{- $_ := set $data "PROJECTOR_GROUP" $s.projectorGroup -}}
{{- end -}}
{{- $_ := set $data "READ_MODEL_DIR" "/var/lib/artifact-api" -}}
{{- end -}}
{{- range $k, $v := $s.env -}}
{{- $_ := set $data $k $v -}}
{{- end -}}
{{- range $k := keys $data | sortAlpha }}
{{ $k }}: {{ include "ap.envValue" (index $data $k) }}
{{- end -}}
{{- end -}}
