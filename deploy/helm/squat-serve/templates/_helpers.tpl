{{- define "squat-serve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-squat-serve, or the release name alone when it already contains the chart name. */}}
{{- define "squat-serve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "squat-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "squat-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "squat-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "squat-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "squat-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "squat-serve.claimName" -}}
{{- default (printf "%s-models" (include "squat-serve.fullname" .)) .Values.model.volume.pvc.existingClaim -}}
{{- end -}}

{{- define "squat-serve.modelPath" -}}
{{- if .Values.model.subPath -}}
{{- printf "/models/%s" (trimPrefix "/" .Values.model.subPath) -}}
{{- else -}}
/models
{{- end -}}
{{- end -}}

{{/* preStop sleep + drain + the server's 5 s shutdown grace must fit in the grace period. */}}
{{- define "squat-serve.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.server.preStopSleepSeconds .Values.server.drainTimeoutSeconds 5 -}}
{{- if kindIs "invalid" .Values.server.terminationGracePeriodSeconds -}}
{{- add $needed 15 -}}
{{- else if le (int .Values.server.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "server.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + drainTimeoutSeconds + 5 = %d" .Values.server.terminationGracePeriodSeconds (int $needed)) -}}
{{- else -}}
{{- int .Values.server.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* A flag value as absl parses it: whole numbers without an exponent (values files give floats). */}}
{{- define "squat-serve.flagValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* The absl flag file of squat-server: --name=value, one a line, absl's underscore names. */}}
{{- define "squat-serve.flagfile" -}}
# squat-server flags written by the squat-serve Helm chart (absl flag file).
--model={{ include "squat-serve.modelPath" . }}
--address=0.0.0.0:{{ .Values.server.grpcPort }}
--metrics_port={{ .Values.server.metricsPort }}
--metrics_address=0.0.0.0
--drain_timeout_s={{ .Values.server.drainTimeoutSeconds }}
{{- if .Values.tls.enabled }}
--tls_cert=/etc/squat-serve/tls/tls.crt
--tls_key=/etc/squat-serve/tls/tls.key
{{- if .Values.tls.clientCA }}
--tls_client_ca=/etc/squat-serve/tls/ca.crt
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
--auth_token_file=/etc/squat-serve/auth/{{ .Values.auth.key }}
{{- end }}
{{- range $name, $value := .Values.serverFlags }}
{{- if not (kindIs "invalid" $value) }}
--{{ $name }}={{ include "squat-serve.flagValue" $value }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "squat-serve.validate" -}}
{{- if and .Values.auth.enabled (not .Values.tls.enabled) -}}
{{- fail "auth.enabled needs tls.enabled: the server sends bearer tokens only over TLS" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.secretName) -}}
{{- fail "auth.enabled needs auth.secretName" -}}
{{- end -}}
{{- $liveness := mul .Values.probes.liveness.periodSeconds .Values.probes.liveness.failureThreshold -}}
{{- if le (int $liveness) (int (add .Values.server.drainTimeoutSeconds 5)) -}}
{{- fail (printf "probes.liveness periodSeconds x failureThreshold (%d s) must outlast the drain (drainTimeoutSeconds + 5 = %d s)" (int $liveness) (int (add .Values.server.drainTimeoutSeconds 5))) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
