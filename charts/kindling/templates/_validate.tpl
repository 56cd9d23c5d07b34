{{/*
kindling.validateValues: every check values.schema.json cannot express (it sees one value
at a time), collected into one list, so a bad install fails once with all its messages.
*/}}
{{- define "kindling.validateValues" -}}
{{- $messages := list -}}
{{- $models := include "kindling.models" . | fromYamlArray -}}
{{- $redis := include "kindling.redis.enabled" . -}}
{{- $raw := eq .Values.serving.mode "raw" -}}
{{- $seen := dict -}}
{{- $loaded := default list .Values.embeddings.externalTables -}}
{{- range .Values.embeddings.loader.tables -}}
{{- $loaded = append $loaded .name -}}
{{- end -}}
{{- range $model := $models -}}
{{- $where := printf "models[%s]" $model.name -}}
{{- $object := include "kindling.model.name" (dict "root" $ "model" $model) -}}
{{- if hasKey $seen $object -}}
{{- $messages = append $messages (printf "%s: object name %s is taken by model %s (names are compared with _ as - and cut to 63 characters)" $where $object (get $seen $object)) -}}
{{- end -}}
{{- $_ := set $seen $object $model.name -}}
{{- if and $model.modelUri (not (and $model.config.inputs $model.config.outputs)) -}}
{{- $messages = append $messages (printf "%s: a modelUri model needs config.inputs and config.outputs (its config.yaml, modelzoo/README.md)" $where) -}}
{{- end -}}
{{- if and $model.modelUri $model.embeddingTable (not $redis) -}}
{{- $messages = append $messages (printf "%s: a modelUri text model reads its table %s from Redis: set redis.enabled=true or externalRedis.url" $where $model.embeddingTable) -}}
{{- end -}}
{{- if and $model.gpu (not $model.modelUri) (not $model.image.repository) -}}
{{- $messages = append $messages (printf "%s: a gpu model runs the GPU pool's image, which holds no model: set modelUri (with config) or image" $where) -}}
{{- end -}}
{{- if and $model.embeddingTable $.Values.redis.enabled (not (has $model.embeddingTable $loaded)) -}}
{{- $messages = append $messages (printf "%s: reads table %s from the built-in Redis, which nothing loads: add it to embeddings.loader.tables, list it in embeddings.externalTables if you load it yourself, or set redis.enabled=false to read the image's built-in tables" $where $model.embeddingTable) -}}
{{- end -}}
{{- $scale := $model.autoscaling -}}
{{- if and (gt (int $scale.maxScale) 0) (gt (int $scale.minScale) (int $scale.maxScale)) -}}
{{- $messages = append $messages (printf "%s: autoscaling.minScale %d is above maxScale %d" $where (int $scale.minScale) (int $scale.maxScale)) -}}
{{- end -}}
{{- if and $raw $scale.hpa.enabled -}}
{{- if $.Values.controller.enabled -}}
{{- $messages = append $messages (printf "%s: raw mode: the controller and the model's HPA would both set its replicas; set controller.enabled=false or autoscaling.hpa.enabled=false" $where) -}}
{{- end -}}
{{- if lt (int $scale.maxScale) (max 1 (int $scale.minScale)) -}}
{{- $messages = append $messages (printf "%s: raw mode: the HPA needs autoscaling.maxScale >= max(minScale, 1), got %d" $where (int $scale.maxScale)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* A switch of serving.mode under one release: the other mode's objects of the same
names (a Knative Service and its Route's Service, or a Deployment and its Service) are
still there, and the upgrade would half fail on them. lookup sees nothing under helm
template, and Knative's kind only where its CRDs are served. */ -}}
{{- with $models -}}
{{- $name := include "kindling.model.name" (dict "root" $ "model" (first $models)) -}}
{{- $namespace := include "kindling.namespace" $ -}}
{{- $other := dict -}}
{{- if $raw -}}
{{- if $.Capabilities.APIVersions.Has "serving.knative.dev/v1/Service" -}}
{{- $other = lookup "serving.knative.dev/v1" "Service" $namespace $name -}}
{{- end -}}
{{- else -}}
{{- $other = lookup "apps/v1" "Deployment" $namespace $name -}}
{{- end -}}
{{- if and $other (eq (dig "metadata" "labels" "app.kubernetes.io/instance" "" $other) $.Release.Name) -}}
{{- $messages = append $messages (printf "serving.mode: this release runs in %s mode (%s %s); a mode cannot change under a release: helm uninstall it first, or install the other mode under another release name" (ternary "knative" "raw" $raw) (ternary "Knative Service" "Deployment" $raw) $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.url -}}
{{- $messages = append $messages "redis.enabled and externalRedis.url are both set: choose the built-in Redis or an external one" -}}
{{- end -}}
{{- if contains "@" .Values.externalRedis.url -}}
{{- $messages = append $messages "externalRedis.url: no credentials in the URL; put the password in a Secret (externalRedis.existingSecret) and the user in externalRedis.username" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled .Values.redis.auth.existingSecret .Values.redis.auth.password -}}
{{- $messages = append $messages "redis.auth: set password or existingSecret, not both" -}}
{{- end -}}
{{- $tables := dict -}}
{{- range $table := .Values.embeddings.loader.tables -}}
{{- $where := printf "embeddings.loader.tables[%s]" $table.name -}}
{{- if hasKey $tables $table.name -}}
{{- $messages = append $messages (printf "%s: listed twice" $where) -}}
{{- end -}}
{{- $_ := set $tables $table.name true -}}
{{- if or (and $table.url $table.pvc) (not (or $table.url $table.pvc)) -}}
{{- $messages = append $messages (printf "%s: give exactly one source, url or pvc" $where) -}}
{{- end -}}
{{- if and $table.vocab (not $table.pvc) -}}
{{- $messages = append $messages (printf "%s: vocab is a file on the table's pvc; a url table has none" $where) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.embeddings.loader.tables (not $redis) -}}
{{- $messages = append $messages "embeddings.loader.tables: the loader writes to Redis: set redis.enabled=true or externalRedis.url" -}}
{{- end -}}
{{- $knative := .Values.controller.knativeVersion | toString -}}
{{- if and .Values.controller.enabled (not $raw) (ne $knative "auto") (not .Values.controller.podAutoscalerAccess) -}}
{{- if semverCompare "<1.21-0" (printf "%s.0" $knative) -}}
{{- $messages = append $messages (printf "controller.knativeVersion %s: before 1.21 the controller patches PodAutoscalers; set controller.podAutoscalerAccess=true" $knative) -}}
{{- end -}}
{{- end -}}
{{- if .Values.modelCache.enabled -}}
{{- if and (eq .Values.modelCache.type "pvc") (not .Values.modelCache.existingClaim) -}}
{{- $messages = append $messages "modelCache: type pvc needs modelCache.existingClaim" -}}
{{- end -}}
{{- if and (eq .Values.modelCache.type "hostPath") (not .Values.modelCache.hostPath.path) -}}
{{- $messages = append $messages "modelCache: type hostPath needs modelCache.hostPath.path" -}}
{{- end -}}
{{- end -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n  - %s" (join "\n  - " $messages) | fail -}}
{{- end -}}
{{- end -}}
