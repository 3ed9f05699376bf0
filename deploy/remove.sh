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

# deployed NAME...: yes, no, or unknown (not asked) for `nuctl get NAME...`; only asked once
# the listing below has shown that nuctl reaches the dashboard, so a failure means "not found".
deployed() {
    if [ "$ASK" = 0 ]; then
        echo unknown
    elif nuctl get "$@" "${WHERE[@]}" >/dev/null 2>&1; then
        echo yes
    else
        echo no
    fi
}

# functions all|managed: the names in nuctl's JSON listing (one object when exactly one
# function exists, a list otherwise), every one or only those the pack published. Fails,
# saying why, when nuctl cannot list or answers something that is not a listing.
functions() {
    local listing err
    # nuctl's own words, for when it cannot list
    err="$(mktemp)"
    if ! listing="$(nuctl get function "${WHERE[@]}" -o json 2>"$err")"; then
        say "nuctl get function ${WHERE[*]} -o json failed: $(head -c 400 "$err")"
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
    printf '%s' "$listing" | "$PY" -c '
import json, sys
text = sys.stdin.read().strip()
try:
    data = json.loads(text) if text else []
except ValueError:
    sys.exit(f"nuctl get function -o json answered what is not JSON: {text[:200]!r}")
for fn in data if isinstance(data, list) else [data]:
    meta = fn.get("metadata", {}) if isinstance(fn, dict) else {}
    if sys.argv[1] == "all" or meta.get("labels", {}).get("cvat-gdrive-pack/managed") == "true":
        print(meta.get("name", ""))
' "$1"
}

# Ask first, before deleting anything: a dashboard nuctl cannot reach stops a real run here.
ALL=()
if [ "$ASK" = 1 ]; then
    if names="$(functions all)"; then
        mapfile -t ALL <<<"$names"
    elif [ "$DRY_RUN" = 0 ]; then
        die "cannot ask nuctl what is deployed, so nothing was removed; check that nuctl reaches the Nuclio dashboard (NUCTL_* settings, --platform)"
    else
        ASK=0
        say "note: nuctl cannot list the functions, so this dry run cannot say which are deployed"
    fi
fi

SYNC=unknown
if [ "$ASK" = 1 ]; then
    SYNC=no
    for name in "${ALL[@]}"; do
        if [ "$name" = registry-sync ]; then SYNC=yes; fi
    done
fi
case "$SYNC" in
    yes) run nuctl delete function registry-sync "${WHERE[@]}" ;;
    unknown) say "+ nuctl delete function registry-sync ${WHERE[*]}   (when deployed)" ;;
esac

# The published functions, listed again once registry-sync is gone (it may have published
# one meanwhile).
published=()
if [ "$ASK" = 1 ]; then
    names="$(functions managed)" || die "cannot list the published functions; registry-sync is removed, run deploy/remove.sh again"
    mapfile -t published < <(printf '%s' "$names" | grep -v '^$' || true)
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

sync_note="registry-sync"
[ "$SYNC" = no ] && sync_note="registry-sync (not deployed: nothing to remove)"
if [ "$DRY_RUN" = 0 ]; then
    say "== removed ${#published[@]} published function(s) and $sync_note."
elif [ "$ASK" = 1 ]; then
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
say "   sudo rm -rf $(printf %q "$(setting cache_host_dir)")"
say "The runner images stay; list them with: docker image ls 'cvat.gdrive-runner.*'"
