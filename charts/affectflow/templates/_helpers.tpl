{{/* Names, labels, images and the credentials shared by several templates. */}}

{{- define "affectflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "affectflow.fullname" -}}
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

{{- define "affectflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "affectflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "affectflow.selector" (list . "mlflow") */}}
{{- define "affectflow.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "affectflow.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "affectflow.componentLabels" -}}
{{ include "affectflow.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "affectflow.image.cpu" -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .Values.images.registry) .Values.images.repository .Values.images.cpuTag -}}
{{- end -}}

{{- define "affectflow.image.gpu" -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .Values.images.registry) .Values.images.repository .Values.images.gpuTag -}}
{{- end -}}

{{- define "affectflow.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "affectflow.kubeflowNamespace" -}}
{{- default .Release.Namespace .Values.kubeflow.namespace -}}
{{- end -}}

{{/* The namespaces whose pods may reach MLflow, S3 and the Ray head (sorted, unique). */}}
{{- define "affectflow.clientNamespaces" -}}
{{- $ns := list (include "affectflow.kubeflowNamespace" .) .Release.Namespace -}}
{{- toJson (concat $ns .Values.networkPolicy.extraNamespaces | uniq | sortAlpha) -}}
{{- end -}}

{{/* An emptyDir for /tmp (also $HOME): the root filesystems are read-only. */}}
{{- define "affectflow.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .Values.tmp.sizeLimit }}}
{{- end -}}

{{- define "affectflow.tmpMount" -}}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "affectflow.homeEnv" -}}
- name: HOME
  value: /tmp
{{- end -}}

{{/* ------------------------------------------------------------------ S3 */}}
{{- define "affectflow.seaweedfs.enabled" -}}
{{- if and .Values.seaweedfs.enabled (not .Values.s3.external.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "affectflow.s3.endpoint" -}}
{{- if .Values.s3.external.enabled -}}
{{- required "s3.external.endpoint is required when s3.external.enabled" .Values.s3.external.endpoint -}}
{{- else -}}
{{- printf "http://%s-seaweedfs.%s.svc.cluster.local:8333" (include "affectflow.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Where the S3 credentials come from: "existing" (s3.existingSecret), "values" (s3.accessKeyId and
s3.secretAccessKey, rendered into a Secret) or "generated" (created once by the credentials hook;
in-cluster SeaweedFS only).
*/}}
{{- define "affectflow.s3.source" -}}
{{- if .Values.s3.existingSecret -}}existing
{{- else if and .Values.s3.accessKeyId .Values.s3.secretAccessKey -}}values
{{- else if or .Values.s3.accessKeyId .Values.s3.secretAccessKey -}}
{{- fail "s3: set both s3.accessKeyId and s3.secretAccessKey (or neither)" -}}
{{- else if .Values.s3.external.enabled -}}
{{- fail "external S3: set s3.accessKeyId and s3.secretAccessKey, or s3.existingSecret" -}}
{{- else -}}generated
{{- end -}}
{{- end -}}

{{- define "affectflow.s3.secretName" -}}
{{- default (printf "%s-s3" (include "affectflow.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "affectflow.s3.accessKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.accessKeyId }}{{ else }}AWS_ACCESS_KEY_ID{{ end -}}
{{- end -}}

{{- define "affectflow.s3.secretKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.secretAccessKey }}{{ else }}AWS_SECRET_ACCESS_KEY{{ end -}}
{{- end -}}

{{/* The non-secret S3 settings every client gets (and the pipeline's S3 Secret carries). */}}
{{- define "affectflow.s3.settings" -}}
{{- toJson (dict "AWS_ENDPOINT_URL" (include "affectflow.s3.endpoint" .) "MLFLOW_S3_ENDPOINT_URL" (include "affectflow.s3.endpoint" .) "AWS_DEFAULT_REGION" .Values.s3.region) -}}
{{- end -}}

{{/* env entries with the S3 credentials and endpoint (for boto3, MLflow and DVC) */}}
{{- define "affectflow.s3.env" -}}
{{- $_ := include "affectflow.s3.source" . -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.s3.secretName" . }}
      key: {{ include "affectflow.s3.accessKeyKey" . }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.s3.secretName" . }}
      key: {{ include "affectflow.s3.secretKeyKey" . }}
- name: AWS_ENDPOINT_URL
  value: {{ include "affectflow.s3.endpoint" . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "affectflow.s3.endpoint" . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- end -}}

{{/* ------------------------------------------------------------------ Postgres */}}
{{- define "affectflow.postgres.host" -}}
{{- if .Values.postgres.enabled -}}
{{- printf "%s-postgres.%s.svc.cluster.local" (include "affectflow.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "postgres.external.host is required when postgres.enabled is false" .Values.postgres.external.host -}}
{{- end -}}
{{- end -}}

{{- define "affectflow.postgres.port" -}}
{{- if .Values.postgres.enabled -}}5432{{- else -}}{{ .Values.postgres.external.port }}{{- end -}}
{{- end -}}

{{- define "affectflow.postgres.secretName" -}}
{{- default (printf "%s-postgres" (include "affectflow.fullname" .)) .Values.postgres.auth.existingSecret -}}
{{- end -}}

{{/* "existing", "values" or "generated" (in-cluster Postgres only), as for S3. */}}
{{- define "affectflow.postgres.source" -}}
{{- if .Values.postgres.auth.existingSecret -}}existing
{{- else if .Values.postgres.auth.password -}}values
{{- else if not .Values.postgres.enabled -}}
{{- fail "external Postgres: set postgres.auth.password or postgres.auth.existingSecret" -}}
{{- else -}}generated
{{- end -}}
{{- end -}}

{{/*
env entries from which with_backend_uri.py builds MLFLOW_BACKEND_STORE_URI (URL-encoded, never
in a command line).
*/}}
{{- define "affectflow.postgres.env" -}}
- name: DB_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.postgres.secretName" . }}
      key: {{ .Values.postgres.auth.usernameKey }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.postgres.secretName" . }}
      key: {{ .Values.postgres.auth.passwordKey }}
- name: DB_HOST
  value: {{ include "affectflow.postgres.host" . | quote }}
- name: DB_PORT
  value: {{ include "affectflow.postgres.port" . | quote }}
- name: DB_NAME
  value: {{ .Values.postgres.database | quote }}
{{- if and (not .Values.postgres.enabled) .Values.postgres.external.sslmode }}
- name: DB_SSLMODE
  value: {{ .Values.postgres.external.sslmode | quote }}
{{- end }}
{{- end -}}

{{/* command prefix: build MLFLOW_BACKEND_STORE_URI from the env above, then exec the rest */}}
{{- define "affectflow.withBackendUri" -}}
- python
- -c
- {{ .Files.Get "files/with_backend_uri.py" | toJson }}
{{- end -}}

{{/* MLflow authentication: "off", "existing", "values" or "generated" (by the credentials hook). */}}
{{- define "affectflow.mlflowAuth.source" -}}
{{- $a := .Values.mlflow.auth -}}
{{- if not $a.enabled -}}off
{{- else if $a.existingSecret -}}existing
{{- else if $a.password -}}values
{{- else -}}generated
{{- end -}}
{{- end -}}

{{- define "affectflow.mlflowAuth.secretName" -}}
{{- default (printf "%s-mlflow-auth" (include "affectflow.fullname" .)) .Values.mlflow.auth.existingSecret -}}
{{- end -}}

{{/* env entries with the MLflow user of the release's clients (predictor, Ray pods); nothing when auth is off */}}
{{- define "affectflow.mlflow.clientEnv" -}}
{{- if ne (include "affectflow.mlflowAuth.source" .) "off" -}}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.mlflowAuth.secretName" . }}
      key: {{ .Values.mlflow.auth.usernameKey }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.mlflowAuth.secretName" . }}
      key: {{ .Values.mlflow.auth.passwordKey }}
{{- end -}}
{{- end -}}

{{- define "affectflow.mlflow.url" -}}
{{- printf "http://%s-mlflow.%s.svc.cluster.local:%d" (include "affectflow.fullname" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- end -}}

{{/* ------------------------------------------------------------------ Ray */}}
{{- define "affectflow.ray.selector" -}}
ray.io/cluster: {{ include "affectflow.fullname" . }}-ray
{{- end -}}

{{/* The Ray head's dashboard (Jobs API) the pipeline's train task submits its training job to (KubeRay's
head service); not Ray Client, which Ray advises against for Ray Train. */}}
{{- define "affectflow.ray.address" -}}
{{- if .Values.ray.enabled -}}
{{- printf "http://%s-ray-head-svc.%s.svc.cluster.local:8265" (include "affectflow.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "affectflow.ray.storage" -}}
{{- printf "s3://%s/%s" .Values.s3.bucket (trimAll "/" .Values.ray.storagePrefix) -}}
{{- end -}}
