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
     one rank per GPU asked for. A key job.config names itself is left to it. */}}
{{- define "hillclimb.learnerGpuSettings" -}}
{{- $learners := .Values.ray.learners -}}
{{- if and $learners.replicas $learners.gpus -}}
{{- $named := .Values.job.config.learner | default dict -}}
{{- $settings := list -}}
{{- range $key, $value := dict "device" "cuda" "gpus_per_learner" 1 "num_learners" (mul $learners.replicas $learners.gpus) -}}
{{- if not (hasKey $named $key) }}{{ $settings = append $settings (printf "--set learner.%s=%v" $key $value) }}{{ end -}}
{{- end -}}
{{- join " " $settings -}}
{{- end -}}
{{- end -}}

{{/* One Ray node's pod: the head (driver and metrics), a rollout worker or a learner. */}}
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
      volumeMounts:
        - {name: runs, mountPath: /var/lib/hillclimb/runs}
        {{- if eq $root.Values.ray.mode "job" }}
        - {name: run-config, mountPath: /etc/hillclimb, readOnly: true}
        {{- end }}
  volumes:
    - name: runs
      {{- with $root.Values.job.runsClaim }}
      persistentVolumeClaim:
        claimName: {{ . }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- if eq $root.Values.ray.mode "job" }}
    - name: run-config
      configMap:
        name: {{ $root.Release.Name }}-run-config
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The RayCluster both modes run: a head (the driver), CPU rollout workers, GPU learners. */}}
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
    rayStartParams: {}
    template:
      {{- include "hillclimb.rayPod" (dict "root" . "role" "learner" "container" "ray-worker" "resources" $ray.learners "gpus" $ray.learners.gpus) | nindent 6 }}
  {{- end }}
{{- end -}}
