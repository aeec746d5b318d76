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

{{- define "affectflow.s3.secretName" -}}
{{- default (printf "%s-s3" (include "affectflow.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{/*
S3 credentials as JSON {"accessKeyId", "secretAccessKey"}: from values, else the Secret already in
the cluster (so an upgrade keeps them), else generated. Computed once per render and cached in
.Values, so every Secret that carries them gets the same pair.
*/}}
{{- define "affectflow.s3.credentials" -}}
{{- if not (hasKey .Values "generatedS3Credentials") -}}
{{- $ak := .Values.s3.accessKeyId -}}
{{- $sk := .Values.s3.secretAccessKey -}}
{{- if or (not $ak) (not $sk) -}}
{{- if .Values.s3.external.enabled -}}
{{- fail "external S3: set s3.accessKeyId and s3.secretAccessKey, or s3.existingSecret" -}}
{{- end -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "affectflow.s3.secretName" .) -}}
{{- if and $old $old.data -}}
{{- $ak = default (randAlphaNum 20) (b64dec (default "" (index $old.data "AWS_ACCESS_KEY_ID"))) -}}
{{- $sk = default (randAlphaNum 40) (b64dec (default "" (index $old.data "AWS_SECRET_ACCESS_KEY"))) -}}
{{- else -}}
{{- $ak = default (randAlphaNum 20 | upper) $ak -}}
{{- $sk = default (randAlphaNum 40) $sk -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "generatedS3Credentials" (dict "accessKeyId" $ak "secretAccessKey" $sk) -}}
{{- end -}}
{{- toJson .Values.generatedS3Credentials -}}
{{- end -}}

{{/* env entries with the S3 credentials and endpoint (for boto3, MLflow and DVC) */}}
{{- define "affectflow.s3.env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.s3.secretName" . }}
      key: {{ if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.accessKeyId }}{{ else }}AWS_ACCESS_KEY_ID{{ end }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "affectflow.s3.secretName" . }}
      key: {{ if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.secretAccessKey }}{{ else }}AWS_SECRET_ACCESS_KEY{{ end }}
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

{{- define "affectflow.postgres.password" -}}
{{- if not (hasKey .Values "generatedPostgresPassword") -}}
{{- $pw := .Values.postgres.auth.password -}}
{{- if not $pw -}}
{{- if not .Values.postgres.enabled -}}
{{- fail "external Postgres: set postgres.auth.password or postgres.auth.existingSecret" -}}
{{- end -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "affectflow.postgres.secretName" .) -}}
{{- if and $old $old.data (index $old.data "password") -}}
{{- $pw = b64dec (index $old.data "password") -}}
{{- else -}}
{{- $pw = randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "generatedPostgresPassword" $pw -}}
{{- end -}}
{{- .Values.generatedPostgresPassword -}}
{{- end -}}

{{- define "affectflow.mlflow.url" -}}
{{- printf "http://%s-mlflow.%s.svc.cluster.local:%d" (include "affectflow.fullname" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- end -}}

{{- define "affectflow.ray.selector" -}}
ray.io/cluster: {{ include "affectflow.fullname" . }}-ray
{{- end -}}
