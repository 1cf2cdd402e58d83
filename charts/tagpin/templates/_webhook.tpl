{{/* Parts of the webhooks in webhook.yaml. */}}
{{- define "tagpin.webhook.common" -}}
admissionReviewVersions: [v1]
sideEffects: None
matchPolicy: Equivalent
reinvocationPolicy: IfNeeded
timeoutSeconds: {{ .Values.webhooks.timeoutSeconds }}
{{- end }}
{{- define "tagpin.webhook.namespaceSelector" -}}
{{- $ctx := index . 0 }}{{- $key := index . 1 }}{{- $value := index . 2 -}}
namespaceSelector:
  matchExpressions:
    - key: {{ $key }}
      operator: In
      values: [{{ $value }}]
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ concat (list "kube-system" $ctx.Release.Namespace) $ctx.Values.webhooks.excludeNamespaces | uniq | toJson }}
{{- end }}
{{- /* Objects labelled tagpin.io/skip=true are not sent to the webhook that includes this. */}}
{{- define "tagpin.webhook.skipLabel" -}}
objectSelector:
  matchExpressions:
    - key: tagpin.io/skip
      operator: NotIn
      values: ["true"]
{{- end }}
{{- define "tagpin.webhook.clientConfig" -}}
{{- $ctx := index . 0 }}{{- $path := index . 1 }}{{- $caBundle := index . 2 -}}
clientConfig:
  service:
    name: {{ include "tagpin.fullname" $ctx }}
    namespace: {{ $ctx.Release.Namespace }}
    path: {{ $path }}
    port: 443
  {{- with $caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end }}
{{- define "tagpin.webhook.podRules" -}}
rules:
  - apiGroups: [""]
    apiVersions: [v1]
    resources: [pods]
    operations: [CREATE, UPDATE]
    scope: Namespaced
  - apiGroups: [""]
    apiVersions: [v1]
    resources: [pods/ephemeralcontainers]
    operations: [UPDATE]
    scope: Namespaced
{{- end }}
