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

# A dry run still asks nuctl what is deployed (read-only `nuctl get` calls), so that it can
# list what it would remove; without nuctl it says what it cannot know.
ASK=1
if [ "$DRY_RUN" = 1 ] && ! command -v nuctl >/dev/null 2>&1; then
    ASK=0
    say "note: nuctl is not on PATH, so this dry run cannot ask what is deployed"
fi

# deployed NAME...: yes, no, or unknown (not asked) for `nuctl get NAME...`.
deployed() {
    if [ "$ASK" = 0 ]; then
        echo unknown
    elif nuctl get "$@" "${WHERE[@]}" >/dev/null 2>&1; then
        echo yes
    else
        echo no
    fi
}

SYNC="$(deployed function registry-sync)"
case "$SYNC" in
    yes) run nuctl delete function registry-sync "${WHERE[@]}" ;;
    unknown) say "+ nuctl delete function registry-sync ${WHERE[*]}   (when deployed)" ;;
esac

# The published functions: those the pack manages, read from nuctl's JSON (one object
# when exactly one function exists, a list otherwise).
published=()
LISTED=0
if [ "$ASK" = 1 ]; then
    if listing="$(nuctl get function "${WHERE[@]}" -o json 2>/dev/null)"; then
        LISTED=1
    elif [ "$DRY_RUN" = 0 ]; then
        listing='[]'   # nothing listed: nothing to delete
        LISTED=1
    fi
fi
if [ "$LISTED" = 1 ]; then
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
case "$(deployed project "$PACK_PROJECT")" in
    yes) run nuctl delete project "$PACK_PROJECT" "${WHERE[@]}" ;;
    unknown) say "+ nuctl delete project $PACK_PROJECT ${WHERE[*]}   (when it exists)" ;;
esac

if [ "$PLATFORM" = kube ]; then
    run kubectl -n "$NAMESPACE" delete daemonset cvat-gdrive-node-prep --ignore-not-found
    run kubectl -n "$NAMESPACE" delete secret "$(setting secret_name)" --ignore-not-found
fi

if [ "$DRY_RUN" = 0 ]; then
    say "== removed ${#published[@]} published function(s) and registry-sync."
elif [ "$LISTED" = 1 ]; then
    sync_note="registry-sync"
    [ "$SYNC" = no ] && sync_note="registry-sync (not deployed: nothing to remove)"
    if [ "${#published[@]}" -gt 0 ]; then
        say "== dry run: would remove ${#published[@]} published function(s) (${published[*]}) and $sync_note."
    else
        say "== dry run: would remove 0 published function(s) and $sync_note."
    fi
else
    say "== dry run: would remove registry-sync and every function labelled cvat-gdrive-pack/managed=true;"
    say "   which ones cannot be known without asking nuctl (run the dry run where nuctl works)."
fi
say "The model cache stays in $(setting cache_host_dir) (on every node on Kubernetes); remove it with:"
say "   sudo rm -rf '$(setting cache_host_dir)'"
say "The runner images stay; list them with: docker image ls 'cvat.gdrive-runner.*'"
