{{/* The parts of a runtime pod that Knative Services and raw Deployments share. */}}

{{/* kindling.runtime.podLabels: a model's pod labels: its selector labels, runtime.podLabels and its own podLabels. */}}
{{- define "kindling.runtime.podLabels" -}}
{{ include "kindling.model.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- with include "kindling.commonPodLabels" .root }}
{{ . }}
{{- end }}
{{- with mergeOverwrite (deepCopy (default dict .root.Values.runtime.podLabels)) (default dict .model.podLabels) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* kindling.runtime.podAnnotations: scrape annotations, checksums of what the pod reads (so it rolls when they change), runtime.podAnnotations and the model's own. */}}
{{- define "kindling.runtime.podAnnotations" -}}
{{- if .root.Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end }}
{{- if .model.modelUri }}
checksum/model-config: {{ include "kindling.model.config" . | sha256sum }}
{{- end }}
{{- if and .model.embeddingTable (include "kindling.redis.checksum" .root) }}
checksum/redis-secret: {{ include "kindling.redis.checksum" .root }}
{{- end }}
{{- with mergeOverwrite (deepCopy (default dict .root.Values.runtime.podAnnotations)) (default dict .model.podAnnotations) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* kindling.model.marginK: the model's prewarm.marginK as the value of the annotation kindling.dev/prewarm-margin-k (controller/targets.py reads it), or nothing when null. */}}
{{- define "kindling.model.marginK" -}}
{{- $margin := dig "prewarm" "marginK" nil .model -}}
{{- if not (kindIs "invalid" $margin) -}}
{{- include "kindling.number" $margin -}}
{{- end -}}
{{- end -}}

{{/* kindling.runtime.container: the runtime container of a model; takes (dict "root" $ "model" . "knative" bool). */}}
{{- define "kindling.runtime.container" -}}
{{- $root := .root -}}
{{- $model := .model -}}
{{- $settings := deepCopy (default dict $root.Values.runtime.settings) -}}
{{- include "kindling.deepSet" (dict "dst" $settings "src" $model.settings) -}}
{{- $resources := deepCopy (default dict $model.resources) -}}
{{- if include "kindling.runtime.writes" . -}}
{{- $cache := ternary "0" $root.Values.runtime.cacheSizeLimit $root.Values.modelCache.enabled -}}
{{- $scratch := list $root.Values.runtime.tmpSizeLimit $cache -}}
{{- $resources = include "kindling.withScratch" (dict "resources" $resources "scratch" $scratch) | fromYaml -}}
{{- end -}}
{{- if $model.gpu -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits $root.Values.gpuPool.resourceName (int $root.Values.gpuPool.gpusPerPod) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
- name: runtime
  image: {{ include "kindling.model.image" . }}
  imagePullPolicy: {{ $model.image.pullPolicy | default $root.Values.runtime.image.pullPolicy }}
  command: ["kindling", "serve"]
  ports:
    # Knative's runtime contract names the port for its protocol (http1) and passes it
    # in $PORT; the runtime reads $PORT, then defaults to 8080.
    - name: {{ ternary "http1" "http" .knative }}
      containerPort: 8080
      protocol: TCP
  env:
    - name: KINDLING_MODEL_REPOSITORY
      value: {{ include "kindling.model.repository" . | quote }}
    - name: KINDLING_MODELS
      value: {{ $model.name | quote }}
    - name: KINDLING_CACHE_DIR
      value: {{ $root.Values.runtime.cacheDir | quote }}
    {{- with $model.threads }}
    - name: KINDLING_THREADS
      value: {{ include "kindling.number" . | quote }}
    {{- end }}
    {{- with include "kindling.settingsEnv" (dict "values" $settings "names" (include "kindling.runtimeSettingNames" $root | fromYaml)) | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- if $model.embeddingTable }}
    {{- with include "kindling.redis.env" $root | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- end }}
    {{- if hasPrefix "s3://" $model.modelUri }}
    {{- with $root.Values.runtime.s3 }}
    {{- if .endpoint }}
    - name: AWS_ENDPOINT_URL
      value: {{ .endpoint | quote }}
    {{- end }}
    {{- if .region }}
    - name: AWS_REGION
      value: {{ .region | quote }}
    {{- end }}
    {{- if .existingSecret }}
    - name: AWS_ACCESS_KEY_ID
      valueFrom:
        secretKeyRef:
          name: {{ .existingSecret }}
          key: {{ .accessKeyIdKey }}
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .existingSecret }}
          key: {{ .secretAccessKeyKey }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- with $root.Values.runtime.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $model.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml $resources | nindent 4 }}
  # Ready once the model is loaded and can serve (a text model: its table is in the store).
  # No periodSeconds under Knative: unset (0), the queue-proxy probes "aggressively", many
  # times a second, while the pod starts, which is what a cold start needs (knative.dev,
  # "Configuring Probing"); Knative fills in the port itself.
  readinessProbe:
    httpGet:
      path: /v2/health/ready
      {{- if not .knative }}
      port: http
      {{- end }}
    {{- if not .knative }}
    periodSeconds: 2
    {{- end }}
  livenessProbe:
    httpGet:
      path: /v2/health/live
      {{- if not .knative }}
      port: http
      {{- end }}
    periodSeconds: 10
    failureThreshold: 3
  securityContext:
    {{- include "kindling.securityContext" (dict "root" $root "context" $root.Values.runtime.containerSecurityContext) | nindent 4 }}
  {{- if or (include "kindling.runtime.writes" .) $model.modelUri }}
  volumeMounts:
    {{- if include "kindling.runtime.writes" . }}
    - name: tmp
      mountPath: /tmp
    - name: cache
      mountPath: {{ $root.Values.runtime.cacheDir }}
    {{- end }}
    {{- if $model.modelUri }}
    - name: model-config
      mountPath: {{ include "kindling.model.repository" . }}
      readOnly: true
    {{- end }}
  {{- end }}
{{- end -}}

{{/* kindling.runtime.writes: "true" when a model's pod writes files (a download, the node-level cache, a GPU model's engine caches), and so gets its scratch volumes. A model baked into the image writes nothing, and its pod has no volume at all: the kubelet then starts it without waiting on its volume manager, which polls every 300 ms (pkg/kubelet/volumemanager, podAttachAndMountRetryInterval), 0.15-0.3 s of a cold start on the real node (`kindling cluster cold-start`). */}}
{{- define "kindling.runtime.writes" -}}
{{- if or .model.modelUri .model.gpu .root.Values.modelCache.enabled }}true{{ end -}}
{{- end -}}

{{/* kindling.runtime.podSpec: scheduling, volumes and pull secrets of a model's pod (no containers). */}}
{{- define "kindling.runtime.podSpec" -}}
{{- $root := .root -}}
{{- $model := .model -}}
{{- $pool := $root.Values.gpuPool -}}
automountServiceAccountToken: {{ $root.Values.runtime.automountServiceAccountToken }}
# No Docker-link variables for every Service in the namespace (Knative's default too).
enableServiceLinks: false
{{- with $root.Values.runtime.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- include "kindling.imagePullSecrets" $root }}
{{- $nodeSelector := deepCopy (default dict $model.nodeSelector) }}
{{- if $model.gpu }}
{{- $nodeSelector = mergeOverwrite $nodeSelector (default dict $pool.nodeSelector) }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := default list $model.tolerations }}
{{- if $model.gpu }}
{{- $tolerations = concat $tolerations (default list $pool.tolerations) }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $model.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $model.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if $model.affinity }}
affinity:
  {{- toYaml $model.affinity | nindent 2 }}
{{- else if and (not $model.gpu) $pool.keepCpuModelsOff $pool.nodeSelector }}
# Off the GPU pool: a CPU model must not take a GPU node's room.
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            {{- range $key, $value := $pool.nodeSelector }}
            - key: {{ $key }}
              operator: NotIn
              values: [{{ $value | quote }}]
            {{- end }}
{{- end }}
{{- if and $model.gpu $pool.runtimeClassName }}
runtimeClassName: {{ $pool.runtimeClassName }}
{{- end }}
{{- if or (include "kindling.runtime.writes" .) $model.modelUri }}
volumes:
  {{- if include "kindling.runtime.writes" . }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ $root.Values.runtime.tmpSizeLimit }}
  {{- include "kindling.cacheVolume" $root | nindent 2 }}
  {{- end }}
  {{- if $model.modelUri }}
  - name: model-config
    configMap:
      name: {{ include "kindling.model.name" . }}-model
      items:
        - key: config.yaml
          path: {{ $model.name }}/config.yaml
  {{- end }}
{{- end }}
{{- end -}}
