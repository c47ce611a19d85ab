#!/usr/bin/env bash
# Renders k8s/snapkv.yaml and k8s/snapkv-alerts.yml from charts/snapkv with k8s/values-plain.yaml.
# tests/k8s checks that both match a fresh render, so run this after changing the chart:
#   k8s/render.sh           # rewrites both files in k8s/
#   k8s/render.sh OUTDIR    # writes them to OUTDIR instead
# Uses $SNAPKV_HELM, else helm on PATH.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here}
helm=${SNAPKV_HELM:-helm}
chart="$here/../charts/snapkv"
render() { "$helm" template snapkv "$chart" --namespace default -f "$here/values-plain.yaml" "$@"; }

{
  echo "# Plain manifests for namespace default, rendered from charts/snapkv by k8s/render.sh"
  echo "# with k8s/values-plain.yaml. Do not edit: change the chart and run k8s/render.sh."
  echo "# Before applying, create the cluster token Secret:"
  echo "#   kubectl create secret generic snapkv-cluster-token --from-literal=token=\"\$(head -c 24 /dev/urandom | base64)\""
  render
} > "$out/snapkv.yaml.tmp"
mv "$out/snapkv.yaml.tmp" "$out/snapkv.yaml"

# The chart's alerts as a plain Prometheus rule file (the PrometheusRule's spec), for prometheus.yml.
{
  echo "# snapkv alerts for release \"snapkv\" in namespace \"default\", rendered from"
  echo "# charts/snapkv/templates/prometheusrule.yaml by k8s/render.sh. Do not edit."
  render --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
    | sed -n '/^spec:/,$p' | tail -n +2 | sed 's/^  //'
} > "$out/snapkv-alerts.yml.tmp"
mv "$out/snapkv-alerts.yml.tmp" "$out/snapkv-alerts.yml"
echo "render.sh: wrote $out/snapkv.yaml and $out/snapkv-alerts.yml" >&2
