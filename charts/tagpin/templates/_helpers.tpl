{{/* Names: "tagpin" for a release named tagpin (or containing it), else <release>-tagpin. */}}
{{- define "tagpin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tagpin.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tagpin.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tagpin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tagpin
{{- end }}

{{/* The pods, as the Deployment, Service, PDB and NetworkPolicy select them. */}}
{{- define "tagpin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tagpin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "tagpin.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret holding tls.crt and tls.key, mounted by the Deployment. */}}
{{- define "tagpin.tlsSecret" -}}
{{- .Values.certificates.existingSecret | default (printf "%s-tls" (include "tagpin.fullname" .)) }}
{{- end }}

{{/* Where the serving certificate comes from: certManager, existingSecret or generated. */}}
{{- define "tagpin.certMode" -}}
{{- $cm := toString .Values.certManager.enabled }}
{{- if .Values.certificates.existingSecret }}
{{- if eq $cm "true" }}
{{- fail "certManager.enabled=true and certificates.existingSecret are exclusive: choose one" }}
{{- end }}
{{- if not .Values.certificates.caBundle }}
{{- fail "certificates.existingSecret needs certificates.caBundle: the CA (PEM, or PEM in base64) that signed its tls.crt, e.g. --set-file certificates.caBundle=ca.crt" }}
{{- end }}
{{- print "existingSecret" }}
{{- else if eq $cm "true" }}
{{- print "certManager" }}
{{- else if eq $cm "false" }}
{{- print "generated" }}
{{- else if .Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate" }}
{{- print "certManager" }}
{{- else }}
{{- print "generated" }}
{{- end }}
{{- end }}

{{/* certificates.caBundle in base64, as caBundle holds it, whether given as PEM or base64. */}}
{{- define "tagpin.caBundle" -}}
{{- $ca := .Values.certificates.caBundle | trim }}
{{- if hasPrefix "-----BEGIN" $ca }}
{{- $ca = printf "%s\n" $ca | b64enc }}
{{- end }}
{{- $ca = $ca | replace "\n" "" | replace " " "" }}
{{- if not (hasPrefix "-----BEGIN CERTIFICATE-----" (b64dec $ca)) }}
{{- fail "certificates.caBundle is neither a PEM certificate nor one in base64" }}
{{- end }}
{{- $ca }}
{{- end }}

{{/* The API server's names for the Service: the serving certificate's DNS names. */}}
{{- define "tagpin.dnsNames" -}}
{{- $svc := printf "%s.%s.svc" (include "tagpin.fullname" .) .Release.Namespace }}
{{- list $svc (printf "%s.cluster.local" $svc) | toJson }}
{{- end }}

{{/* Seconds of a "<N>s" duration, or -1 for any other form (not checked then). */}}
{{- define "tagpin.seconds" -}}
{{- if regexMatch "^[0-9]+s$" (toString .) }}{{ trimSuffix "s" (toString .) }}{{ else }}-1{{ end }}
{{- end }}
