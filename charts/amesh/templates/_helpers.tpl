{{/* The image a pilot value names, completed the way istiod's chart does (hub/image:tag), docker.io/ dropped. */}}
{{- define "amesh.pilotImage" -}}
{{- $g := .global -}}
{{- $p := .pilot | default dict -}}
{{- $image := toString ($p.image | default "pilot") -}}
{{- if not (contains "/" $image) -}}
{{- $image = printf "%s/%s:%s" (toString ($p.hub | default $g.hub)) $image (toString ($p.tag | default $g.tag)) -}}
{{- end -}}
{{- trimPrefix "docker.io/" $image -}}
{{- end -}}
