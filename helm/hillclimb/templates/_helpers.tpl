{{- define "hillclimb.labels" -}}
app.kubernetes.io/name: hillclimb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image the Ray pods and the reaper run: Ray with hillclimb[k8s] installed. */}}
{{- define "hillclimb.image" -}}
{{- $repository := required "image.repository: name an image with Ray and hillclimb[k8s] installed (or set ray.mode=none for the sandbox side only)" .Values.image.repository -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* A container that keeps nothing it does not need: no root, no capability, no escalation. */}}
{{- define "hillclimb.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A pod of the Ray image: its non-root user, the restricted profile's seccomp. */}}
{{- define "hillclimb.podSecurity" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where a run started by the chart finds its sandboxes and is scraped: merged over job.config. */}}
{{- define "hillclimb.runConfig" -}}
{{- $options := dict "namespace" .Values.sandboxes.namespace -}}
{{- with .Values.sandboxes.image }}{{ $_ := set $options "image" . }}{{ end -}}
{{- with .Values.sandboxes.runtimeClass }}{{ $_ := set $options "runtime_class" . }}{{ end -}}
{{- $chart := dict
    "provider" (dict "type" "kubernetes" "options" $options)
    "ray" (dict "worker_resources" (dict "rollout_worker" 1))
    "run" (dict "metrics_host" "0.0.0.0" "metrics_port" .Values.metrics.port "dir" "/var/lib/hillclimb/runs") -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.job.config) $chart) -}}
{{- end -}}

{{/* What `hillclimb train` needs to train on the learner group's GPUs, as --set flags: Ray hands
     a rank a GPU only if it reserves one, and a rank trains on one device, so each reserves one,
     one rank per learner-pod GPU, and the `learner_gpu` resource only learner pods offer, so no
     rank takes an engine pod's GPU. The learners reserve theirs before the engine asks for its
     own (orchestrator.train), so the engine's GPUs are the engine pod's. A key job.config names
     itself is left to it. */}}
{{- define "hillclimb.trainSettings" -}}
{{- $learners := .Values.ray.learners -}}
{{- $engines := .Values.ray.engines -}}
{{- $settings := list -}}
{{- if and $learners.replicas $learners.gpus -}}
{{- $named := .Values.job.config.learner | default dict -}}
{{- range $key, $value := dict "device" "cuda" "gpus_per_learner" 1 "num_learners" (mul $learners.replicas $learners.gpus) "resources_per_learner.learner_gpu" 1 -}}
{{- if not (hasKey $named (first (splitList "." $key))) }}{{ $settings = append $settings (printf "--set learner.%s=%v" $key $value) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $policy := .Values.job.config.policy | default dict -}}
{{- $type := $policy.type | default "scripted" -}}
{{- if and $engines.replicas $engines.gpus -}}
{{- if not (has $type (list "hf" "vllm")) -}}
{{- fail (printf "ray.engines.replicas: job.config's policy engine (type %s) holds no model on this cluster; give it none (ray.engines.replicas: 0) or use policy.type hf or vllm" $type) -}}
{{- end -}}
{{- if gt (float64 ($policy.gpus | default 0)) (float64 $engines.gpus) -}}
{{- fail (printf "job.config.policy.gpus (%v) is more than the engine pod has (ray.engines.gpus: %v): the engine could never be placed" $policy.gpus $engines.gpus) -}}
{{- end -}}
{{- $wanted := dict "gpus" $engines.gpus "engines" $engines.replicas -}}
{{- if eq $type "hf" }}{{ $_ := set $wanted "device" "cuda" }}{{ end -}}
{{- range $key, $value := $wanted -}}
{{- if not (hasKey $policy $key) }}{{ $settings = append $settings (printf "--set policy.%s=%v" $key $value) }}{{ end -}}
{{- end -}}
{{- else if and (eq $type "vllm") (not (hasKey (.Values.job.config.learner | default dict) "num_learners")) -}}
{{- fail "ray.engines.replicas: policy.type vllm needs a GPU of its own, and every learner-pod GPU is a learner rank's: give the engine a pod (ray.engines.replicas: 1, ray.engines.gpus: its GPUs)" -}}
{{- end -}}
{{- join " " $settings -}}
{{- end -}}

{{/* The run dir, the same storage at the same path on every Ray pod: a learner rank writes its
     checkpoint shards, the buffer its ledger, wherever Ray placed them. */}}
{{- define "hillclimb.runsVolume" -}}
- name: runs
  {{- with .Values.job.runsClaim }}
  persistentVolumeClaim:
    claimName: {{ . }}
  {{- else }}
  {{- if and (eq .Values.ray.mode "job") .Values.ray.learners.replicas }}
  {{- fail "job.runsClaim: learner pods write checkpoints to the run dir, so it must be storage every Ray pod mounts: name a ReadWriteMany PersistentVolumeClaim" }}
  {{- end }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{/* One Ray node's pod: the head (driver and metrics), a rollout worker, a learner or the policy
     engine; GPU pods get a memory-backed /dev/shm. */}}
{{- define "hillclimb.rayPod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "hillclimb.labels" $root | nindent 4 }}
    hillclimb.dev/role: {{ .role }}
spec:
  {{- if eq .role "rollout-worker" }}
  serviceAccountName: {{ $root.Values.serviceAccount.name }}
  {{- else }}
  automountServiceAccountToken: false
  {{- end }}
  securityContext:
    {{- include "hillclimb.podSecurity" $root | nindent 4 }}
  {{- if .gpus }}
  tolerations:
    - key: nvidia.com/gpu
      operator: Exists
      effect: NoSchedule
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "hillclimb.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      securityContext:
        {{- include "hillclimb.containerSecurity" $root | nindent 8 }}
      resources:
        requests:
          cpu: {{ .resources.cpu | quote }}
          memory: {{ .resources.memory }}
        limits:
          cpu: {{ .resources.cpu | quote }}
          memory: {{ .resources.memory }}
          {{- if .gpus }}
          nvidia.com/gpu: {{ .gpus }}
          {{- end }}
      {{- if eq .role "driver" }}
      ports:
        - {name: gcs, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: run-metrics, containerPort: {{ $root.Values.metrics.port }}}
      {{- end }}
      volumeMounts:
        - {name: runs, mountPath: /var/lib/hillclimb/runs}
        {{- if .gpus }}
        - {name: shm, mountPath: /dev/shm}
        {{- end }}
        {{- if and (eq .role "driver") (eq $root.Values.ray.mode "job") }}
        - {name: run-config, mountPath: /etc/hillclimb, readOnly: true}
        {{- end }}
  volumes:
    {{- include "hillclimb.runsVolume" $root | nindent 4 }}
    {{- if .gpus }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ .resources.shm }}
    {{- end }}
    {{- if and (eq .role "driver") (eq $root.Values.ray.mode "job") }}
    - name: run-config
      configMap:
        name: {{ $root.Release.Name }}-run-config
    {{- end }}
{{- end -}}

{{/* The RayCluster both modes run: a head (the driver), CPU rollout workers, GPU learners and
     the policy engine's GPU pod. */}}
{{- define "hillclimb.rayClusterSpec" -}}
{{- $ray := .Values.ray -}}
rayVersion: {{ $ray.version | quote }}
enableInTreeAutoscaling: false
headGroupSpec:
  serviceType: ClusterIP
  rayStartParams:
    dashboard-host: "0.0.0.0"
  template:
    {{- include "hillclimb.rayPod" (dict "root" . "role" "driver" "container" "ray-head" "resources" $ray.head) | nindent 4 }}
workerGroupSpecs:
  - groupName: rollout-workers
    replicas: {{ $ray.rolloutWorkers.replicas }}
    minReplicas: {{ $ray.rolloutWorkers.minReplicas }}
    maxReplicas: {{ $ray.rolloutWorkers.maxReplicas }}
    rayStartParams:
      # hillclimb's rollout workers ask for this resource (ray.worker_resources): they land
      # only on these pods, the ones the sandbox namespace admits and RBAC binds.
      # (quoted as KubeRay passes it to `ray start --resources` through a shell)
      resources: '"{\"rollout_worker\": 1000}"'
    template:
      {{- include "hillclimb.rayPod" (dict "root" . "role" "rollout-worker" "container" "ray-worker" "resources" $ray.rolloutWorkers) | nindent 6 }}
  {{- if $ray.learners.replicas }}
  - groupName: learners
    replicas: {{ $ray.learners.replicas }}
    minReplicas: {{ $ray.learners.replicas }}
    maxReplicas: {{ $ray.learners.replicas }}
    {{- if $ray.learners.gpus }}
    rayStartParams:
      # hillclimb's learner ranks ask for one each (learner.resources_per_learner in job mode):
      # they land only here, and every GPU here is a rank's.
      resources: '"{\"learner_gpu\": {{ $ray.learners.gpus }}}"'
    {{- else }}
    rayStartParams: {}
    {{- end }}
    template:
      {{- include "hillclimb.rayPod" (dict "root" . "role" "learner" "container" "ray-worker" "resources" $ray.learners "gpus" $ray.learners.gpus) | nindent 6 }}
  {{- end }}
  {{- if $ray.engines.replicas }}
  - groupName: engines
    replicas: {{ $ray.engines.replicas }}
    minReplicas: {{ $ray.engines.replicas }}
    maxReplicas: {{ $ray.engines.replicas }}
    rayStartParams: {}
    template:
      {{- include "hillclimb.rayPod" (dict "root" . "role" "engine" "container" "ray-worker" "resources" $ray.engines "gpus" $ray.engines.gpus) | nindent 6 }}
  {{- end }}
{{- end -}}
