{{/* vim: set filetype=mustache: */}}

{{/* kindling.name: the chart's name, or nameOverride. */}}
{{- define "kindling.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* kindling.fullname: the prefix of every object's name (the release name when it already holds the chart's). */}}
{{- define "kindling.fullname" -}}
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

{{/* kindling.chart: chart name and version, for the helm.sh/chart label. */}}
{{- define "kindling.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* kindling.namespace: every object's namespace (set explicitly, so nothing lands in "default" by accident). */}}
{{- define "kindling.namespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* kindling.selectorLabels: the labels that select a release's pods; add app.kubernetes.io/component per workload. */}}
{{- define "kindling.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kindling.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* kindling.commonPodLabels: commonLabels for a pod template, less the keys its selector labels set (those win). */}}
{{- define "kindling.commonPodLabels" -}}
{{- with omit (default dict .Values.commonLabels) "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "kindling.dev/model" }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* kindling.securityContext: a pod's or container's securityContext as YAML; takes (dict "root" $ "context" .); with global.openshift, without the fixed user, group and fsGroup (OpenShift's restricted SCC assigns them from the namespace's range and refuses others). */}}
{{- define "kindling.securityContext" -}}
{{- $context := default dict .context -}}
{{- if .root.Values.global.openshift -}}
{{- $context = omit $context "runAsUser" "runAsGroup" "fsGroup" -}}
{{- end -}}
{{- toYaml $context -}}
{{- end -}}

{{/* kindling.labels: the standard labels (Kubernetes recommended labels) plus commonLabels. */}}
{{- define "kindling.labels" -}}
{{ include "kindling.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kindling
helm.sh/chart: {{ include "kindling.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* kindling.annotations: commonAnnotations as a metadata block indented under metadata, or nothing; call it as `{{- include "kindling.annotations" . }}`. */}}
{{- define "kindling.annotations" -}}
{{- with .Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* kindling.image: "registry/repository:tag" or "...@digest"; takes (dict "image" . "root" $), global.imageRegistry wins over the image's registry, the tag defaults to appVersion. */}}
{{- define "kindling.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .image.registry -}}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne (toString $registry) "") -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* kindling.imagePullSecrets: global.imagePullSecrets as a pod spec block, or nothing. */}}
{{- define "kindling.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* kindling.deepSet: merge (dict "dst" D "src" S) into D in place; maps merge key by key, anything else replaces, null removes (Sprig's merge cannot set false or 0 over a default). */}}
{{- define "kindling.deepSet" -}}
{{- range $key, $value := .src -}}
{{- if kindIs "invalid" $value -}}
{{- $_ := unset $.dst $key -}}
{{- else if and (kindIs "map" $value) (kindIs "map" (get $.dst $key)) -}}
{{- include "kindling.deepSet" (dict "dst" (get $.dst $key) "src" $value) -}}
{{- else -}}
{{- $_ := set $.dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* kindling.models: every entry of `models` over modelDefaults, as a YAML list (read back with fromYamlArray). */}}
{{- define "kindling.models" -}}
{{- $models := list -}}
{{- range .Values.models -}}
{{- $model := deepCopy $.Values.modelDefaults -}}
{{- include "kindling.deepSet" (dict "dst" $model "src" (deepCopy .)) -}}
{{- $models = append $models $model -}}
{{- end -}}
{{- toYaml $models -}}
{{- end -}}

{{/* kindling.model.name: a model's object name, "<fullname>-<model name with _ as ->" (DNS-1035); takes (dict "root" $ "model" .). */}}
{{- define "kindling.model.name" -}}
{{- printf "%s-%s" (include "kindling.fullname" .root) (.model.name | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* kindling.model.selectorLabels: the labels that select one model's pods. */}}
{{- define "kindling.model.selectorLabels" -}}
{{ include "kindling.selectorLabels" .root }}
app.kubernetes.io/component: runtime
kindling.dev/model: {{ .model.name }}
{{- end -}}

{{/* kindling.model.image: the model's own image, else the GPU pool's image for a gpu model, else the runtime image. */}}
{{- define "kindling.model.image" -}}
{{- $image := .root.Values.runtime.image -}}
{{- if .model.gpu -}}
{{- $image = .root.Values.gpuPool.image -}}
{{- end -}}
{{- if .model.image.repository -}}
{{- $image = .model.image -}}
{{- end -}}
{{- include "kindling.image" (dict "image" $image "root" .root) -}}
{{- end -}}

{{/* kindling.model.repository: where the model's folder is: the ConfigMap of a modelUri model, else the image's repository. */}}
{{- define "kindling.model.repository" -}}
{{- ternary "/etc/kindling/models" .root.Values.runtime.modelRepository (ne .model.modelUri "") -}}
{{- end -}}

{{/* kindling.model.config: the config.yaml of a modelUri model: its `config`, with name, model_uri, model_sha256 and the embedding table filled in. */}}
{{- define "kindling.model.config" -}}
{{- $config := deepCopy .model.config -}}
{{- $_ := set $config "name" .model.name -}}
{{- $_ := set $config "model_uri" .model.modelUri -}}
{{- with .model.modelSha256 }}{{ $_ := set $config "model_sha256" . }}{{ end -}}
{{- if and .model.embeddingTable (kindIs "map" $config.preprocess) -}}
{{- $_ := set $config.preprocess "table" .model.embeddingTable -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* kindling.number: a value as an environment string; whole numbers without Go's float notation (6.7108864e+07). */}}
{{- define "kindling.number" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else if kindIs "slice" . -}}
{{- join "," . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* kindling.settingsEnv: env entries for (dict "values" V "names" N): each key of V that is set, under its variable name from N. */}}
{{- define "kindling.settingsEnv" -}}
{{- range $key := keys .names | sortAlpha }}
{{- $value := get $.values $key }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- name: {{ get $.names $key }}
  value: {{ include "kindling.number" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* kindling.runtimeSettingNames: runtime.settings keys -> the runtime's variables (runtime/settings.py, ServerSettings.from_env). */}}
{{- define "kindling.runtimeSettingNames" -}}
logLevel: KINDLING_LOG_LEVEL
maxBodyBytes: KINDLING_MAX_BODY_BYTES
maxJsonBytes: KINDLING_MAX_JSON_BYTES
maxBodyMemoryBytes: KINDLING_MAX_BODY_MEMORY_BYTES
maxConnections: KINDLING_MAX_CONNECTIONS
headerTimeoutS: KINDLING_HEADER_TIMEOUT_S
bodyTimeoutS: KINDLING_BODY_TIMEOUT_S
downloadTimeoutS: KINDLING_DOWNLOAD_TIMEOUT_S
gracefulTimeoutS: KINDLING_GRACEFUL_TIMEOUT_S
inlineMaxMs: KINDLING_INLINE_MAX_MS
maxBatchSize: KINDLING_MAX_BATCH_SIZE
maxQueueDelayMs: KINDLING_MAX_QUEUE_DELAY_MS
optimizedCache: KINDLING_OPTIMIZED_CACHE
optimizedCacheDelayS: KINDLING_OPTIMIZED_CACHE_DELAY_S
providers: KINDLING_PROVIDERS
modelUriSchemes: KINDLING_MODEL_URI_SCHEMES
modelUriRoot: KINDLING_MODEL_URI_ROOT
{{- end -}}

{{/* kindling.embeddingSettingNames: embeddings.settings keys -> the store's variables (embeddings/settings.py, EmbeddingSettings.from_env). */}}
{{- define "kindling.embeddingSettingNames" -}}
cacheSize: KINDLING_EMBEDDINGS_CACHE_SIZE
oov: KINDLING_EMBEDDINGS_OOV
unkToken: KINDLING_EMBEDDINGS_UNK_TOKEN
aliasTtl: KINDLING_EMBEDDINGS_ALIAS_TTL
maxWords: KINDLING_EMBEDDINGS_MAX_WORDS
redisConnectTimeout: KINDLING_REDIS_CONNECT_TIMEOUT
redisSocketTimeout: KINDLING_REDIS_SOCKET_TIMEOUT
redisRetries: KINDLING_REDIS_RETRIES
redisBackoff: KINDLING_REDIS_BACKOFF
redisCooldown: KINDLING_REDIS_COOLDOWN
{{- end -}}

{{/* kindling.redis.fullname: the built-in Redis's StatefulSet and Service name. */}}
{{- define "kindling.redis.fullname" -}}
{{- printf "%s-redis" (include "kindling.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* kindling.redis.enabled: "true" when models read word vectors from Redis (built-in or external), else empty. */}}
{{- define "kindling.redis.enabled" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.url }}true{{ end -}}
{{- end -}}

{{/* kindling.redis.secretName: the Secret holding the Redis password (existingSecret, or the chart's). */}}
{{- define "kindling.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecret | default (include "kindling.redis.fullname" .) -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* kindling.redis.passwordKey: the key of the password in that Secret. */}}
{{- define "kindling.redis.passwordKey" -}}
{{- if not .Values.redis.enabled -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- else if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end -}}

{{/* kindling.redis.auth: "true" when clients must send a password, else empty. */}}
{{- define "kindling.redis.auth" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled }}true{{ end -}}
{{- else if .Values.externalRedis.existingSecret }}true{{ end -}}
{{- end -}}

{{/* kindling.redis.url: KINDLING_REDIS_URL; the password is $(REDIS_PASSWORD), which the kubelet expands from the Secret, so it never appears in a manifest. */}}
{{- define "kindling.redis.url" -}}
{{- $url := .Values.externalRedis.url -}}
{{- if .Values.redis.enabled -}}
{{- $url = printf "redis://%s:%d/0" (include "kindling.redis.fullname" .) (int .Values.redis.service.port) -}}
{{- end -}}
{{- if include "kindling.redis.auth" . -}}
{{- $parts := regexSplit "://" $url 2 -}}
{{- $user := ternary "" .Values.externalRedis.username .Values.redis.enabled -}}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s" (index $parts 0) $user (index $parts 1) -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* kindling.redis.env: the store's env entries (password from its Secret, URL, store settings) for runtimes and the loader; empty without Redis. */}}
{{- define "kindling.redis.env" -}}
{{- if include "kindling.redis.enabled" . }}
{{- if include "kindling.redis.auth" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kindling.redis.secretName" . }}
      key: {{ include "kindling.redis.passwordKey" . }}
{{- end }}
- name: KINDLING_REDIS_URL
  value: {{ include "kindling.redis.url" . | quote }}
{{- include "kindling.settingsEnv" (dict "values" .Values.embeddings.settings "names" (include "kindling.embeddingSettingNames" . | fromYaml)) }}
{{- end }}
{{- end -}}

{{/* kindling.redis.password: the built-in Redis's password: auth.password, else the one already in the release's Secret (kept across upgrades), else a new random one; computed once per render so the Secret and the checksums agree. */}}
{{- define "kindling.redis.password" -}}
{{- $auth := .Values.redis.auth -}}
{{- if not (hasKey $auth "resolvedPassword") -}}
{{- $password := $auth.password -}}
{{- if not $password -}}
{{- $existing := lookup "v1" "Secret" (include "kindling.namespace" .) (include "kindling.redis.fullname" .) -}}
{{- if and $existing $existing.data -}}
{{- $password = index $existing.data "redis-password" | default "" | b64dec -}}
{{- end -}}
{{- end -}}
{{- $_ := set $auth "resolvedPassword" ($password | default (randAlphaNum 32)) -}}
{{- end -}}
{{- $auth.resolvedPassword -}}
{{- end -}}

{{/* kindling.redis.ping: the Redis probes' shell command, with the password read from its file when auth is on; (dict "root" $ "loading" true) also passes while Redis is LOADING its snapshot (alive, not yet ready). */}}
{{- define "kindling.redis.ping" -}}
{{- $port := .root.Values.redis.service.port -}}
{{- if .root.Values.redis.auth.enabled -}}
REDISCLI_AUTH="$(cat /etc/redis-auth/password)" && export REDISCLI_AUTH && {{/**/ -}}
{{- end -}}
{{- if .loading -}}
case "$(redis-cli -p {{ $port }} ping)" in PONG|LOADING*) ;; *) exit 1 ;; esac
{{- else -}}
[ "$(redis-cli -p {{ $port }} ping)" = PONG ]
{{- end -}}
{{- end -}}

{{/* kindling.withScratch: a container's resources (a map) as YAML, with an ephemeral-storage request for what its pod's emptyDirs may hold (their sizeLimits, a list) unless it sets one: the scheduler counts an emptyDir only through that request. Takes (dict "resources" . "scratch" list). */}}
{{- define "kindling.withScratch" -}}
{{- $resources := deepCopy (default dict .resources) -}}
{{- $_ := set $resources "requests" (merge (default dict $resources.requests) (dict "ephemeral-storage" (include "kindling.mebibytes" .scratch))) -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* kindling.mebibytes: the sum of a list of quantities, as a quantity in Mi (rounded up). */}}
{{- define "kindling.mebibytes" -}}
{{- $total := 0 -}}
{{- range . -}}
{{- $total = add $total (include "kindling.bytes" . | int64) -}}
{{- end -}}
{{- printf "%dMi" (div (add $total 1048575) 1048576) -}}
{{- end -}}

{{/* kindling.bytes: a Kubernetes memory quantity ("1Gi", "512Mi", "4G", "1000") in bytes. */}}
{{- define "kindling.bytes" -}}
{{- $quantity := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- mulf (float64 $number) (get $units (trimPrefix $number $quantity)) | int64 -}}
{{- end -}}

{{/* kindling.redis.checksum: a hash of the chart-made Redis Secret, so clients roll when the password changes; empty with an existingSecret. */}}
{{- define "kindling.redis.checksum" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled (not .Values.redis.auth.existingSecret) -}}
{{- include (print .Template.BasePath "/redis/secret.yaml") . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* kindling.controller.fullname: the controller's Deployment, ServiceAccount, Role and lease name. */}}
{{- define "kindling.controller.fullname" -}}
{{- printf "%s-controller" (include "kindling.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* kindling.controller.serviceAccountName: the ServiceAccount the controller runs as. */}}
{{- define "kindling.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- .Values.controller.serviceAccount.name | default (include "kindling.controller.fullname" .) -}}
{{- else -}}
{{- .Values.controller.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* kindling.cacheVolume: the volume at runtime.cacheDir: the node-level model cache when enabled, else an emptyDir. */}}
{{- define "kindling.cacheVolume" -}}
- name: cache
{{- if not .Values.modelCache.enabled }}
  emptyDir:
    sizeLimit: {{ .Values.runtime.cacheSizeLimit }}
{{- else if eq .Values.modelCache.type "hostPath" }}
  hostPath:
    path: {{ .Values.modelCache.hostPath.path }}
    type: {{ .Values.modelCache.hostPath.type }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- end }}
{{- end -}}

{{/* kindling.controller.workloads: raw mode's Deployments for the controller, as JSON (its Role may scale them by name, not list them). */}}
{{- define "kindling.controller.workloads" -}}
{{- $workloads := list -}}
{{- range $model := include "kindling.models" . | fromYamlArray -}}
{{- $ctx := dict "root" $ "model" $model -}}
{{- $workloads = append $workloads (dict "deployment" (include "kindling.model.name" $ctx) "model" $model.name "hpa" $model.autoscaling.hpa.enabled) -}}
{{- end -}}
{{- toJson $workloads -}}
{{- end -}}
