#!/usr/bin/env bash
# Removes the pack: registry-sync first (so nothing publishes again), then every
# function it published (label cvat-gdrive-pack/managed=true in project `cvat`),
# then its own project and, on Kubernetes, the node DaemonSet and the key Secret.
# Keeps the `cvat` project (CVAT's own models live there too), the model cache
# and the images; the commands to remove those are printed at the end.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/remove.sh [--platform local|kube] [--settings FILE] [--dry-run]
EOF
}

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common "$@"
PURPOSE=remove
load_settings remove
nuctl_where
require_tool nuctl "install the nuctl matching CVAT's Nuclio dashboard"

if [ "$DRY_RUN" = 1 ]; then
    say "+ nuctl delete function registry-sync ${WHERE[*]}   (when deployed)"
elif nuctl get function registry-sync "${WHERE[@]}" >/dev/null 2>&1; then
    run nuctl delete function registry-sync "${WHERE[@]}"
fi

# The published functions: those the pack manages, read from nuctl's JSON (one object
# when exactly one function exists, a list otherwise).
published=()
if [ "$DRY_RUN" = 0 ]; then
    listing="$(nuctl get function "${WHERE[@]}" -o json 2>/dev/null || printf '[]')"
    while read -r name; do
        [ -n "$name" ] && published+=("$name")
    done < <(printf '%s' "$listing" | "$PY" -c '
import json, sys
data = json.loads(sys.stdin.read() or "[]")
for fn in data if isinstance(data, list) else [data]:
    meta = fn.get("metadata", {})
    if meta.get("labels", {}).get("cvat-gdrive-pack/managed") == "true":
        print(meta["name"])
')
else
    say "+ nuctl get function ${WHERE[*]} -o json   (then delete each with label cvat-gdrive-pack/managed=true)"
fi
for name in "${published[@]}"; do
    run nuctl delete function "$name" "${WHERE[@]}"
done

PACK_PROJECT="$(setting pack_project)"
if [ "$DRY_RUN" = 1 ]; then
    say "+ nuctl delete project $PACK_PROJECT ${WHERE[*]}   (when it exists)"
elif nuctl get project "$PACK_PROJECT" "${WHERE[@]}" >/dev/null 2>&1; then
    run nuctl delete project "$PACK_PROJECT" "${WHERE[@]}"
fi

if [ "$PLATFORM" = kube ]; then
    run kubectl -n "$NAMESPACE" delete daemonset cvat-gdrive-node-prep --ignore-not-found
    run kubectl -n "$NAMESPACE" delete secret "$(setting secret_name)" --ignore-not-found
fi

say "== removed ${#published[@]} published function(s) and registry-sync."
say "The model cache stays in $(setting cache_host_dir) (on every node on Kubernetes); remove it with:"
say "   sudo rm -rf '$(setting cache_host_dir)'"
say "The runner images stay; list them with: docker image ls 'cvat.gdrive-runner.*'"
