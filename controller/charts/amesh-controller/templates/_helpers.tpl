{{- define "amesh-controller.fullname" -}}
{{- .Values.fullnameOverride | default (printf "%s-%s" .Release.Name .Chart.Name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "amesh-controller.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "amesh-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "amesh-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "amesh-controller.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The controller image: image.repository:tag when set, else what `make prepare-images` built. */}}
{{- define "amesh-controller.image" -}}
{{- $built := .Files.Get "built-image" | trim -}}
{{- if .Values.image.repository -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- else if $built -}}
{{- $built -}}
{{- else -}}
{{- printf "localhost:5000/amesh-controller:%s" (toString .Values.image.tag) -}}
{{- end -}}
{{- end -}}
