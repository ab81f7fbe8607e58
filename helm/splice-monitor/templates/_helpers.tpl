{{/* Names, labels and the pieces shared by the driver, the Ray head and the Ray workers. */}}

{{- define "splice-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Capped at 40 characters: KubeRay derives pod and service names from the RayCluster name and adds suffixes. */}}
{{- define "splice-monitor.fullname" -}}
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

{{- define "splice-monitor.rayClusterName" -}}
{{- include "splice-monitor.fullname" . -}}
{{- end -}}

{{- define "splice-monitor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "splice-monitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "splice-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "splice-monitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Selects the pod that serves the monitor's /metrics. The exporter and the history writer live in the pipeline's
aggregator actor, which runs on the Ray head (see the chart README), in both driver modes.
*/}}
{{- define "splice-monitor.metricsSelectorLabels" -}}
{{ include "splice-monitor.selectorLabels" . }}
app.kubernetes.io/component: ray-head
{{- end -}}

{{- define "splice-monitor.monitoringLabels" -}}
{{- with .Values.monitoring.release }}
release: {{ . | quote }}
{{- end }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "splice-monitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "splice-monitor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "splice-monitor.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "splice-monitor.historyClaim" -}}
{{- default (printf "%s-history" (include "splice-monitor.fullname" .)) .Values.history.pvc.existingClaim -}}
{{- end -}}

{{- define "splice-monitor.vocabConfigMap" -}}
{{- default (printf "%s-vocab" (include "splice-monitor.fullname" .)) .Values.vocabulary.existingConfigMap -}}
{{- end -}}

{{- define "splice-monitor.hasVocab" -}}
{{- if or .Values.vocabulary.inline .Values.vocabulary.existingConfigMap }}true{{ end -}}
{{- end -}}

{{/* GPUs per worker actor: a CPU-only worker group cannot satisfy a GPU request, so it forces 0. */}}
{{- define "splice-monitor.gpusPerWorker" -}}
{{- if eq (int .Values.ray.worker.gpus) 0 -}}0{{- else -}}{{ .Values.monitor.gpusPerWorker }}{{- end -}}
{{- end -}}

{{/*
Checks that span several values, which the JSON schema cannot express; a failure names the values and what is
allowed.
*/}}
{{- define "splice-monitor.validate" -}}
{{- $w := .Values.ray.worker -}}
{{- if or (gt (int $w.minReplicas) (int $w.replicas)) (gt (int $w.replicas) (int $w.maxReplicas)) -}}
{{- fail (printf "ray.worker: need minReplicas <= replicas <= maxReplicas, got %d, %d, %d" (int $w.minReplicas) (int $w.replicas) (int $w.maxReplicas)) -}}
{{- end -}}
{{- if and (gt (int $w.gpus) 0) (gt (float64 .Values.monitor.gpusPerWorker) (float64 $w.gpus)) -}}
{{- fail (printf "monitor.gpusPerWorker=%v exceeds ray.worker.gpus=%v: a worker actor must fit on one worker pod" .Values.monitor.gpusPerWorker $w.gpus) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: enable one, or the exporter is scraped twice" -}}
{{- end -}}
{{- if and (eq .Values.history.type "objectStore") (not .Values.history.objectStore.uri) -}}
{{- fail "history.type=objectStore needs history.objectStore.uri (e.g. s3://bucket/prefix)" -}}
{{- end -}}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.existingClaim) -}}
{{- fail "model.source=pvc needs model.pvc.existingClaim (a claim holding the checkpoints)" -}}
{{- end -}}
{{- if and (eq .Values.model.source "initContainer") (not .Values.model.initContainer.command) -}}
{{- fail "model.source=initContainer needs model.initContainer.command (it must write the weights to model.mountPath)" -}}
{{- end -}}
{{- if and .Values.vocabulary.inline .Values.vocabulary.existingConfigMap -}}
{{- fail "set vocabulary.inline or vocabulary.existingConfigMap, not both" -}}
{{- end -}}
{{- $managed := dict "port" "gcs" "ray-client-server-port" "client" "dashboard-port" "dashboard" "metrics-export-port" "metrics" "node-manager-port" "nodeManager" "object-manager-port" "objectManager" "runtime-env-agent-port" "runtimeEnvAgent" "dashboard-agent-grpc-port" "dashboardAgentGrpc" "dashboard-agent-listen-port" "dashboardAgentListen" "min-worker-port" "minWorker" "max-worker-port" "maxWorker" -}}
{{- range $group := list "head" "worker" -}}
{{- range $key, $_ := (index $.Values.ray $group).rayStartParams -}}
{{- if hasKey $managed $key -}}
{{- fail (printf "ray.%s.rayStartParams.%s: set ray.ports.%s instead, so the NetworkPolicy admits the same port" $group $key (index $managed $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not .Values.source.uri -}}
{{- fail "source.uri is empty: the monitor needs a source" -}}
{{- end -}}
{{- if and (eq .Values.driver.mode "backfill") (regexMatch "^rediss?://" .Values.source.uri) -}}
{{- fail (printf "driver.mode=backfill needs a finite file source (parquet:// or a directory), got source.uri=%s; use driver.mode=stream for Redis" .Values.source.uri) -}}
{{- end -}}
{{- $ref := .Values.monitor.reference -}}
{{- if and (eq $ref.mode "history") (or (not $ref.from) (not $ref.to)) -}}
{{- fail "monitor.reference.mode=history needs monitor.reference.from and monitor.reference.to" -}}
{{- end -}}
{{- if and (ne $ref.mode "history") (or $ref.from $ref.to $ref.store) -}}
{{- fail (printf "monitor.reference.from/to/store need monitor.reference.mode=history (got mode=%s)" $ref.mode) -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every container that runs the package. */}}
{{- define "splice-monitor.env" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /cache
- name: HF_HOME
  value: /cache/huggingface
- name: TORCH_HOME
  value: /cache/torch
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- if ne .Values.model.source "download" }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- if eq .Values.history.type "objectStore" }}
{{- with .Values.history.objectStore.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.history.objectStore.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Object-store credentials reach only the Ray head, where the aggregator writes history. */}}
{{- define "splice-monitor.envFrom" -}}
{{- if and (eq .Values.history.type "objectStore") .Values.history.objectStore.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.history.objectStore.credentialsSecret }}
{{- end }}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "splice-monitor.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSize }}
{{- if .Values.scratch.cacheExistingClaim }}
- name: cache
  persistentVolumeClaim:
    claimName: {{ .Values.scratch.cacheExistingClaim }}
{{- else }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.scratch.cacheSize }}
{{- end }}
{{- end -}}

{{- define "splice-monitor.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- end -}}

{{/* Model weights and vocabulary: the worker actors load the encoder and build the dictionary, so only Ray worker
pods mount them. */}}
{{- define "splice-monitor.dataVolumes" -}}
{{- if eq .Values.model.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.existingClaim }}
    readOnly: true
{{- else if eq .Values.model.source "initContainer" }}
- name: model
  emptyDir: {}
{{- end }}
{{- if include "splice-monitor.hasVocab" . }}
- name: vocab
  configMap:
    name: {{ include "splice-monitor.vocabConfigMap" . }}
{{- end }}
{{- end -}}

{{- define "splice-monitor.dataMounts" -}}
{{- if ne .Values.model.source "download" }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
  {{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath }}
  subPath: {{ .Values.model.pvc.subPath }}
  {{- end }}
{{- end }}
{{- if include "splice-monitor.hasVocab" . }}
- name: vocab
  mountPath: /etc/splice-monitor/vocab
  readOnly: true
{{- end }}
{{- end -}}

{{- define "splice-monitor.modelInitContainers" -}}
{{- if eq .Values.model.source "initContainer" }}
- name: fetch-model
  image: {{ default (include "splice-monitor.image" .) .Values.model.initContainer.image }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    {{- toYaml .Values.model.initContainer.command | nindent 4 }}
  {{- with .Values.model.initContainer.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    - name: MODEL_DIR
      value: {{ .Values.model.mountPath }}
    {{- with include "splice-monitor.env" . | trim }}{{ . | nindent 4 }}{{ end }}
    {{- with .Values.model.initContainer.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.model.initContainer.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ .Values.model.mountPath }}
    {{- include "splice-monitor.scratchMounts" . | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
The driver's command line after `splice-monitor`, one list item each: `run` (stream) or `backfill` (a finite source,
resumable from its checkpoint). No item carries a credential: passwords reach the process through the environment.
*/}}
{{- define "splice-monitor.runArgs" -}}
{{- $backfill := eq .Values.driver.mode "backfill" -}}
{{- $m := .Values.monitor -}}
{{- if $backfill }}
- backfill
- --job-id
- {{ default .Release.Name .Values.driver.jobId | quote }}
- --no-progress
{{- else }}
- run
{{- end }}
- --source
- {{ .Values.source.uri | quote }}
- --workers
- {{ $m.workers | quote }}
- --aggregators
- {{ $m.aggregators | quote }}
- --gpus-per-worker
- {{ include "splice-monitor.gpusPerWorker" . | quote }}
- --cpus-per-worker
- {{ $m.cpusPerWorker | quote }}
- --model
- {{ $m.model | quote }}
- --pretrained
- {{ $m.pretrained | quote }}
- --l1
- {{ $m.l1 | quote }}
- --cache-dir
- /cache/splice-monitor
{{- if not $backfill }}
- --metrics-port
- {{ $m.metricsPort | quote }}
- --metrics-host
- {{ $m.metricsHost | quote }}
{{- end }}
- --window
- {{ $m.window | quote }}
{{- if gt (float64 $m.ert) 0.0 }}
- --ert
- {{ $m.ert | quote }}
{{- end }}
- --reference
- {{ $m.reference.mode | quote }}
- --reference-images
- {{ $m.reference.images | quote }}
{{- if eq $m.reference.mode "history" }}
- --reference-from
- {{ $m.reference.from | quote }}
- --reference-to
- {{ $m.reference.to | quote }}
{{- with $m.reference.store }}
- --reference-store
- {{ . | quote }}
{{- end }}
{{- end }}
- --history
{{- if eq .Values.history.type "objectStore" }}
- {{ .Values.history.objectStore.uri | quote }}
{{- else }}
- {{ .Values.history.pvc.mountPath | quote }}
{{- end }}
{{- if include "splice-monitor.hasVocab" . }}
- --vocab
- {{ printf "/etc/splice-monitor/vocab/%s" .Values.vocabulary.key | quote }}
{{- end }}
{{- with $m.mean }}
- --mean
- {{ . | quote }}
{{- end }}
{{- with .Values.source.deadLetter }}
- --dead-letter
- {{ . | quote }}
{{- end }}
{{- with .Values.pushgateway.url }}
- --pushgateway
- {{ . | quote }}
{{- end }}
{{- /* The entrypoint runs on the head of its own cluster. */}}
- --ray-address
- auto
{{- range $m.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "splice-monitor.sourceMounts" -}}
{{- if .Values.source.pvc.existingClaim }}
- name: source
  mountPath: {{ .Values.source.pvc.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "splice-monitor.sourceVolumes" -}}
{{- if .Values.source.pvc.existingClaim }}
- name: source
  persistentVolumeClaim:
    claimName: {{ .Values.source.pvc.existingClaim }}
    readOnly: true
{{- end }}
{{- end -}}

{{/*
Environment only the driver needs (it runs on the Ray head): the Redis password, from a Secret, under the name the
monitor reads when a redis:// or rediss:// URI carries none. The URI itself never holds it.
*/}}
{{- define "splice-monitor.driverEnv" -}}
{{- if .Values.source.passwordSecret.name }}
- name: SPLICE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.source.passwordSecret.name }}
      key: {{ .Values.source.passwordSecret.key }}
{{- end }}
{{- with .Values.driver.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Probes, KubeRay's own checks written out so they are visible and testable: the head is ready once its raylet and
the GCS (through the dashboard) answer, which also gates the RayJob's submission and the metrics Service; every
node is alive while its raylet answers its agent. exec + wget to localhost, as KubeRay does, so no NetworkPolicy and
no CNI's handling of kubelet traffic can fail them; both endpoints are health checks token authentication leaves
open.
*/}}
{{- define "splice-monitor.rayProbes" -}}
{{- $p := .root.Values.ray.ports -}}
{{- $raylet := printf "wget -T 2 -q -O- http://localhost:%d/api/local_raylet_healthz | grep success" (int $p.dashboardAgentListen) -}}
{{- $gcs := printf "wget -T 2 -q -O- http://localhost:%d/api/gcs_healthz | grep success" (int $p.dashboard) -}}
livenessProbe:
  exec:
    command:
      - sh
      - -c
      - {{ $raylet | quote }}
  initialDelaySeconds: 30
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 120
readinessProbe:
  exec:
    command:
      - sh
      - -c
      {{- if .head }}
      - {{ printf "%s && %s" $raylet $gcs | quote }}
      {{- else }}
      - {{ $raylet | quote }}
      {{- end }}
  initialDelaySeconds: 10
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 10
{{- end -}}

{{/* Ray start parameters that pin every port, so the NetworkPolicy can name them. */}}
{{- define "splice-monitor.rayNodePorts" -}}
{{- $p := .Values.ray.ports -}}
node-manager-port: {{ $p.nodeManager | quote }}
object-manager-port: {{ $p.objectManager | quote }}
runtime-env-agent-port: {{ $p.runtimeEnvAgent | quote }}
dashboard-agent-grpc-port: {{ $p.dashboardAgentGrpc | quote }}
dashboard-agent-listen-port: {{ $p.dashboardAgentListen | quote }}
metrics-export-port: {{ $p.metrics | quote }}
min-worker-port: {{ $p.minWorker | quote }}
max-worker-port: {{ $p.maxWorker | quote }}
{{- end -}}

{{- define "splice-monitor.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
serviceAccountName: {{ include "splice-monitor.serviceAccountName" . }}
automountServiceAccountToken: false
{{- include "splice-monitor.pullSecrets" . }}
{{- end -}}

{{- define "splice-monitor.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The RayJob's own Ray cluster. The entrypoint (the driver) runs on the head, and so does the aggregator, so the head
serves
/metrics and mounts the history volume.
*/}}
{{- define "splice-monitor.rayClusterSpec" -}}
{{- $p := .Values.ray.ports -}}
{{- $gpus := int .Values.ray.worker.gpus -}}
rayVersion: {{ .Values.ray.version | quote }}
{{- if .Values.ray.auth.enabled }}
{{- /* Every GCS, dashboard and job-API call must carry the token; KubeRay sets RAY_AUTH_MODE/RAY_AUTH_TOKEN on every
Ray container from the Secret. */}}
authOptions:
  mode: token
  {{- with .Values.ray.auth.existingSecret }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
enableInTreeAutoscaling: {{ .Values.ray.enableInTreeAutoscaling }}
{{- if .Values.ray.enableInTreeAutoscaling }}
autoscalerOptions:
  upscalingMode: Default
  idleTimeoutSeconds: 300
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: kube-api-access
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
{{- end }}
headGroupSpec:
  {{- /*
  No CPU work on the head: worker actors land on worker pods; the zero-CPU aggregator, which serves /metrics and
  writes history, is meant to stay here (see the chart README). User parameters override these, key by key.
  */}}
  {{- /* dashboard-host 0.0.0.0: the KubeRay operator submits the job over it; the NetworkPolicy admits only the
  operator and the release's own pods, and token authentication guards every call. */}}
  {{- $head := dict "port" (toString $p.gcs) "ray-client-server-port" (toString $p.client) "dashboard-port" (toString $p.dashboard) "dashboard-host" "0.0.0.0" "num-cpus" "0" }}
  {{- $head = mustMergeOverwrite $head (include "splice-monitor.rayNodePorts" . | fromYaml) (deepCopy .Values.ray.head.rayStartParams) }}
  rayStartParams:
    {{- toYaml $head | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "splice-monitor.labels" . | nindent 8 }}
        app.kubernetes.io/component: ray-head
    spec:
      {{- if .Values.ray.enableInTreeAutoscaling }}
      {{- /*
      The autoscaler sidecar patches the RayCluster through the Kubernetes API. With no serviceAccountName KubeRay
      creates and binds its own account for it; the token is mounted into the autoscaler container alone, never
      into the Ray head.
      */}}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      automountServiceAccountToken: false
      {{- with include "splice-monitor.pullSecrets" . | trim }}{{ . | nindent 6 }}{{ end }}
      {{- else }}
      {{- include "splice-monitor.podSecurity" . | nindent 6 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ .Values.driver.terminationGracePeriodSeconds }}
      {{- with .Values.ray.head.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.ray.head.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.ray.head.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-head
          image: {{ include "splice-monitor.image" . }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          ports:
            - name: gcs-server
              containerPort: {{ $p.gcs }}
            - name: client
              containerPort: {{ $p.client }}
            - name: dashboard
              containerPort: {{ $p.dashboard }}
            - name: metrics
              containerPort: {{ $p.metrics }}
            - name: monitor-metrics
              containerPort: {{ .Values.monitor.metricsPort }}
            {{- /* aggregator i > 0 serves on metricsPort + i (port names are at most 15 characters) */}}
            {{- range $i := untilStep 1 (int .Values.monitor.aggregators) 1 }}
            - name: {{ printf "agg-metrics-%d" $i }}
              containerPort: {{ add $.Values.monitor.metricsPort $i }}
            {{- end }}
          env:
            {{- with include "splice-monitor.env" . | trim }}{{ . | nindent 12 }}{{ end }}
            {{- with include "splice-monitor.driverEnv" . | trim }}{{ . | nindent 12 }}{{ end }}
          {{- include "splice-monitor.rayProbes" (dict "root" . "head" true) | nindent 10 }}
          {{- with include "splice-monitor.envFrom" . | trim }}{{ . | nindent 10 }}{{ end }}
          resources:
            {{- toYaml .Values.ray.head.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "splice-monitor.scratchMounts" . | nindent 12 }}
            - name: dshm
              mountPath: /dev/shm
            {{- if eq .Values.history.type "pvc" }}
            - name: history
              mountPath: {{ .Values.history.pvc.mountPath }}
            {{- end }}
            {{- with include "splice-monitor.sourceMounts" . | trim }}{{ . | nindent 12 }}{{ end }}
      volumes:
        {{- include "splice-monitor.scratchVolumes" . | nindent 8 }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ .Values.ray.shmSize }}
        {{- if .Values.ray.enableInTreeAutoscaling }}
        - name: kube-api-access
          projected:
            sources:
              - serviceAccountToken:
                  path: token
                  expirationSeconds: 3607
              - configMap:
                  name: kube-root-ca.crt
                  items:
                    - key: ca.crt
                      path: ca.crt
              - downwardAPI:
                  items:
                    - path: namespace
                      fieldRef:
                        fieldPath: metadata.namespace
        {{- end }}
        {{- if eq .Values.history.type "pvc" }}
        - name: history
          persistentVolumeClaim:
            claimName: {{ include "splice-monitor.historyClaim" . }}
        {{- end }}
        {{- with include "splice-monitor.sourceVolumes" . | trim }}{{ . | nindent 8 }}{{ end }}
workerGroupSpecs:
  - groupName: {{ .Values.ray.worker.groupName }}
    replicas: {{ .Values.ray.worker.replicas }}
    minReplicas: {{ .Values.ray.worker.minReplicas }}
    maxReplicas: {{ .Values.ray.worker.maxReplicas }}
    {{- $worker := mustMergeOverwrite (include "splice-monitor.rayNodePorts" . | fromYaml) (deepCopy .Values.ray.worker.rayStartParams) }}
    rayStartParams:
      {{- toYaml $worker | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "splice-monitor.labels" . | nindent 10 }}
          app.kubernetes.io/component: ray-worker
      spec:
        {{- include "splice-monitor.podSecurity" . | nindent 8 }}
        {{- with .Values.ray.worker.nodeSelector }}
        nodeSelector:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with .Values.ray.worker.tolerations }}
        tolerations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with .Values.ray.worker.affinity }}
        affinity:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with include "splice-monitor.modelInitContainers" . | trim }}
        initContainers:
          {{- . | nindent 10 }}
        {{- end }}
        containers:
          - name: ray-worker
            image: {{ include "splice-monitor.image" . }}
            imagePullPolicy: {{ .Values.image.pullPolicy }}
            ports:
              - name: metrics
                containerPort: {{ $p.metrics }}
            env:
              {{- with include "splice-monitor.env" . | trim }}{{ . | nindent 14 }}{{ end }}
            {{- include "splice-monitor.rayProbes" (dict "root" . "head" false) | nindent 12 }}
            resources:
              {{- $res := deepCopy .Values.ray.worker.resources }}
              {{- if gt $gpus 0 }}
              {{- $limits := default (dict) $res.limits }}
              {{- $_ := set $limits "nvidia.com/gpu" $gpus }}
              {{- $_ := set $res "limits" $limits }}
              {{- end }}
              {{- toYaml $res | nindent 14 }}
            securityContext:
              {{- toYaml .Values.securityContext | nindent 14 }}
            volumeMounts:
              {{- include "splice-monitor.scratchMounts" . | nindent 14 }}
              - name: dshm
                mountPath: /dev/shm
              {{- with include "splice-monitor.dataMounts" . | trim }}{{ . | nindent 14 }}{{ end }}
        volumes:
          {{- include "splice-monitor.scratchVolumes" . | nindent 10 }}
          - name: dshm
            emptyDir:
              medium: Memory
              sizeLimit: {{ .Values.ray.shmSize }}
          {{- with include "splice-monitor.dataVolumes" . | trim }}{{ . | nindent 10 }}{{ end }}
{{- end -}}

{{/* The fixed Ray ports, as NetworkPolicy ports. */}}
{{- define "splice-monitor.rayPortList" -}}
{{- $p := .Values.ray.ports -}}
- port: {{ $p.gcs }}
- port: {{ $p.client }}
- port: {{ $p.dashboard }}
- port: {{ $p.metrics }}
- port: {{ $p.nodeManager }}
- port: {{ $p.objectManager }}
- port: {{ $p.runtimeEnvAgent }}
- port: {{ $p.dashboardAgentGrpc }}
- port: {{ $p.dashboardAgentListen }}
- port: {{ $p.minWorker }}
  endPort: {{ $p.maxWorker }}
{{- end -}}

{{/* A NetworkPolicy peer from {namespace, podLabels}: a namespace (by name; empty = the release's) AND pods. */}}
{{- define "splice-monitor.peer" -}}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ default .root.Release.Namespace .peer.namespace }}
podSelector:
  matchLabels:
    {{- toYaml .peer.podLabels | nindent 4 }}
{{- end -}}

{{/* An egress rule to address blocks on ports; no blocks means the ports on any address. */}}
{{- define "splice-monitor.cidrRule" -}}
{{- with .cidrs }}
to:
  {{- range . }}
  - ipBlock:
      cidr: {{ . }}
  {{- end }}
{{- end }}
ports:
  {{- range .ports }}
  - port: {{ . }}
  {{- end }}
{{- end -}}
