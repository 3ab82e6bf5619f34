{{/* The name of the release's objects. */}}
{{- define "imagepin.fullname" -}}
{{- if contains "imagepin" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-imagepin" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imagepin.selectorLabels" -}}
app.kubernetes.io/name: imagepin
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller-manager
{{- end -}}

{{- define "imagepin.labels" -}}
{{ include "imagepin.selectorLabels" . }}
app.kubernetes.io/part-of: imagepin
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "imagepin.serviceAccountName" -}}
{{- default (include "imagepin.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "imagepin.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "imagepin.webhookService" -}}
{{ include "imagepin.fullname" . }}-webhook
{{- end -}}

{{- define "imagepin.webhookSecret" -}}
{{- if eq .Values.webhook.certificate.source "secret" -}}
{{ .Values.webhook.certificate.secretName }}
{{- else -}}
{{ include "imagepin.fullname" . }}-webhook-cert
{{- end -}}
{{- end -}}
