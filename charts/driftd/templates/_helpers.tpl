{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "driftd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: the release name, or release-chart when they differ. */}}
{{- define "driftd.fullname" -}}
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

{{- define "driftd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "driftd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "driftd.labels" -}}
helm.sh/chart: {{ include "driftd.chart" . }}
{{ include "driftd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "driftd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "driftd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The user name the API server gives the agent's service-account tokens. */}}
{{- define "driftd.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "driftd.serviceAccountName" .) -}}
{{- end -}}

{{- define "driftd.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* PromQL label matchers that select this release's agents. */}}
{{- define "driftd.jobSelector" -}}
{{- if .Values.prometheusRule.selector -}}
{{- .Values.prometheusRule.selector -}}
{{- else -}}
{{- printf "job=%q,namespace=%q" (include "driftd.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The name of the cluster-wide retirement Lease driftd uses (fixed in driftd). */}}
{{- define "driftd.leaseName" -}}driftd-node-retirement{{- end -}}

{{/*
The baselines set, as YAML: {configMapKey: {path: relative path when mounted, content: text}}.
Shipped baselines come from the chart's baselines/ folder (a copy of the repository's
baselines/, kept identical by tests/test_chart.py), then values.extraBaselines and
values.extraBaselineFiles.  ConfigMap keys cannot contain "/", so a source file
files/NAME is stored under the key "files.NAME" and mounted back at files/NAME with
volume items: a baseline's `source:` is resolved relative to its own file, exactly as in
the repository.  PodBaselines get the release namespace appended to
spec.selector.excludeNamespaces (baselines.excludeReleaseNamespace) so that driftd never
evicts its own pods (they need root and host mounts, which a restricted profile forbids).
*/}}
{{- define "driftd.baselineFiles" -}}
{{- $out := dict -}}
{{- $root := . -}}
{{- $docs := dict -}}
{{- if .Values.baselines.shipped.enabled -}}
{{- range $path, $_ := .Files.Glob "baselines/*.yaml" -}}
{{- $name := base $path -}}
{{- $skip := has $name $root.Values.baselines.shipped.exclude -}}
{{- if and (eq $name "sysctl.yaml") (not $root.Values.sysctl.enabled) -}}{{- $skip = true -}}{{- end -}}
{{- if not $skip -}}{{- $_ := set $docs $name ($root.Files.Get $path) -}}{{- end -}}
{{- end -}}
{{- range $path, $_ := .Files.Glob "baselines/files/*" -}}
{{- $name := base $path -}}
{{- $_ := set $out (printf "files.%s" $name) (dict "path" (printf "files/%s" $name) "content" ($root.Files.Get $path)) -}}
{{- end -}}
{{- end -}}
{{- range $name, $content := .Values.extraBaselines -}}
{{- if hasKey $docs $name -}}{{- fail (printf "extraBaselines.%s: a shipped baseline has this name; add it to baselines.shipped.exclude to replace it" $name) -}}{{- end -}}
{{- $_ := set $docs $name $content -}}
{{- end -}}
{{- range $name, $doc := $docs -}}
{{- $content := $doc -}}
{{- if $root.Values.baselines.excludeReleaseNamespace -}}
{{- $parsed := fromYaml $doc -}}
{{- if and (not (hasKey $parsed "Error")) (eq (toString (get $parsed "kind")) "PodBaseline") -}}
{{- $spec := default (dict) $parsed.spec -}}
{{- $sel := default (dict) $spec.selector -}}
{{- $ex := default (list) $sel.excludeNamespaces -}}
{{- if not (has $root.Release.Namespace $ex) -}}
{{- $_ := set $sel "excludeNamespaces" (append $ex $root.Release.Namespace) -}}
{{- $_ := set $spec "selector" $sel -}}
{{- $_ := set $parsed "spec" $spec -}}
{{- $content = printf "# %s, rendered by the driftd chart: namespace %s (driftd's own) added to spec.selector.excludeNamespaces.\n%s" $name $root.Release.Namespace (toYaml $parsed) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out $name (dict "path" $name "content" $content) -}}
{{- end -}}
{{- range $name, $content := .Values.extraBaselineFiles -}}
{{- $key := printf "files.%s" $name -}}
{{- if hasKey $out $key -}}{{- fail (printf "extraBaselineFiles.%s: a shipped source file has this name" $name) -}}{{- end -}}
{{- $_ := set $out $key (dict "path" (printf "files/%s" $name) "content" $content) -}}
{{- end -}}
{{- with .Values.baselines.signature -}}
{{- $_ := set $out ".driftd-baselines.sig" (dict "path" ".driftd-baselines.sig" "content" .) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- /*
driftd.hostMounts: the host directories the baselines in this release manage, derived from them at render
time (least host access). A managed file needs its parent directory (driftd writes a temp file and renames
it over the target in the same directory); a managed directory needs itself. Nested directories collapse
into their ancestor. A directory is mounted read-write only when a baseline that enforces (spec.enforcement
enforce, settings.dryRun false) manages something in it; otherwise read-only: driftd only observes there.
Owner and group names resolve against /etc/passwd and /etc/group, mounted read-only when /etc is not.
Output: YAML {mounts: [{path, rw}], passwd: bool, kernel: bool (a kernel rule reads the running release),
packages: bool (a packages rule reads the node's package database: hostPaths.packageDatabases, read-only)}.
*/ -}}
{{- define "driftd.hostMounts" -}}
{{- $root := . -}}
{{- $files := include "driftd.baselineFiles" . | fromYaml -}}
{{- $want := dict -}}
{{- $kernel := false -}}
{{- $packages := false -}}
{{- range $key, $f := $files -}}
{{- if not (hasPrefix "files." $key) -}}
{{- range $part := splitList "\n---" $f.content -}}
{{- $doc := fromYaml $part -}}
{{- if and (not (hasKey $doc "Error")) (eq (toString (get $doc "kind")) "HostBaseline") -}}
{{- $spec := default (dict) $doc.spec -}}
{{- $rw := and (not $root.Values.settings.dryRun) (eq (toString (default "enforce" $spec.enforcement)) "enforce") -}}
{{- range $e := default (list) $spec.files -}}
{{- $d := dir (toString $e.path) -}}
{{- $_ := set $want $d (or $rw (get $want $d | default false)) -}}
{{- end -}}
{{- if $spec.kernel -}}{{- $kernel = true -}}{{- end -}}
{{- if $spec.packages -}}{{- $packages = true -}}{{- end -}}
{{- range $e := default (list) $spec.directories -}}
{{- $d := clean (toString $e.path) -}}
{{- $_ := set $want $d (or $rw (get $want $d | default false)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $mounts := list -}}
{{- range $d := keys $want | sortAlpha -}}
{{- $rw := get $want $d -}}
{{- $covered := false -}}
{{- range $other := keys $want -}}
{{- if and (ne $other $d) (or (eq $other "/") (hasPrefix (printf "%s/" $other) $d)) -}}{{- $covered = true -}}{{- end -}}
{{- end -}}
{{- if not $covered -}}
{{- range $other := keys $want -}}
{{- if and (ne $other $d) (or (eq $d "/") (hasPrefix (printf "%s/" $d) $other)) (get $want $other) -}}{{- $rw = true -}}{{- end -}}
{{- end -}}
{{- $mounts = append $mounts (dict "path" $d "rw" (eq (toString $rw) "true")) -}}
{{- end -}}
{{- end -}}
{{- $etc := false -}}
{{- range $m := $mounts -}}{{- if or (eq $m.path "/") (eq $m.path "/etc") -}}{{- $etc = true -}}{{- end -}}{{- end -}}
{{- toYaml (dict "mounts" $mounts "passwd" (and (gt (len $mounts) 0) (not $etc)) "kernel" $kernel "packages" $packages) -}}
{{- end -}}
