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
[ "$PLATFORM" = kube ] && require_tool kubectl "needed on Kubernetes for the key Secret and the node DaemonSet"

# A dry run still asks nuctl what is deployed (read-only `nuctl get` calls), so that it can
# list what it would remove; without nuctl it says what it cannot know.
ASK=1
if [ "$DRY_RUN" = 1 ] && ! command -v nuctl >/dev/null 2>&1; then
    ASK=0
    say "note: nuctl is not on PATH, so this dry run cannot ask what is deployed"
fi

# nuctl's stderr of the last query, shown or read when it fails.
NUCTL_ERR="$(mktemp)"
trap 'rm -f "$NUCTL_ERR"' EXIT

# project_exists NAME: yes, no, or unknown (not asked). Only nuctl's not-found answer
# means no; any other failure (the dashboard gone meanwhile) stops with nuctl's words.
project_exists() {
    if [ "$ASK" = 0 ]; then
        echo unknown
    elif nuctl get project "$1" "${WHERE[@]}" >/dev/null 2>"$NUCTL_ERR"; then
        echo yes
    elif grep -qiE "not found|no projects found" "$NUCTL_ERR"; then
        echo no
    else
        say "nuctl get project $1 ${WHERE[*]} failed: $(head -c 400 "$NUCTL_ERR")"
        return 1
    fi
}

# ask_nuctl: nuctl's JSON listing of every function, on stdout; when nuctl fails, says
# nuctl's own words and fails.
ask_nuctl() {
    nuctl get function "${WHERE[@]}" -o json 2>"$NUCTL_ERR" && return 0
    say "nuctl get function ${WHERE[*]} -o json failed: $(head -c 400 "$NUCTL_ERR")"
    return 1
}

# listed sync|managed LISTING: registry-sync in the pack's project, or the published
# functions, in a listing (deploy/nuctl_listing.py); fails, saying why, on what is not one.
listed() {
    printf '%s' "$2" | "$PY" -m deploy.nuctl_listing "$1" --project "$PACK_PROJECT"
}

# Ask first, before deleting anything: a dashboard nuctl cannot reach, or a listing this
# script does not understand, stops a real run here.
PACK_PROJECT="$(setting pack_project)"
SYNC=unknown
LISTING=""
if [ "$ASK" = 1 ]; then
    if LISTING="$(ask_nuctl)" && names="$(listed sync "$LISTING")"; then
        SYNC=no
        [ -n "$names" ] && SYNC=yes
    elif [ "$DRY_RUN" = 0 ]; then
        die "cannot tell what is deployed, so nothing was removed; check that \`nuctl get function ${WHERE[*]}\` works here"
    else
        ASK=0
        say "note: nuctl's listing cannot be read, so this dry run cannot say which functions are deployed"
    fi
fi

RUN_FAILED_HINT="what was removed stays removed; run deploy/remove.sh again for the rest"
case "$SYNC" in
    yes) run nuctl delete function registry-sync "${WHERE[@]}" ;;
    unknown) say "+ nuctl delete function registry-sync ${WHERE[*]}   (when deployed)" ;;
esac

# The published functions: a real run lists again once registry-sync is gone (it may have
# published one meanwhile); a dry run reads the first listing.
published=()
if [ "$ASK" = 1 ]; then
    if [ "$DRY_RUN" = 0 ]; then
        LISTING="$(ask_nuctl)" || die "cannot list the published functions; $RUN_FAILED_HINT"
    fi
    names="$(listed managed "$LISTING")" || die "cannot read the published functions; $RUN_FAILED_HINT"
    mapfile -t published < <(printf '%s' "$names")
else
    say "+ nuctl get function ${WHERE[*]} -o json   (then delete each with label cvat-gdrive-pack/managed=true)"
fi
for name in "${published[@]}"; do
    run nuctl delete function "$name" "${WHERE[@]}"
done

PROJECT="$(project_exists "$PACK_PROJECT")" || die "cannot tell whether project $PACK_PROJECT exists; $RUN_FAILED_HINT"
case "$PROJECT" in
    yes) run nuctl delete project "$PACK_PROJECT" "${WHERE[@]}" ;;
    unknown) say "+ nuctl delete project $PACK_PROJECT ${WHERE[*]}   (when it exists)" ;;
esac

if [ "$PLATFORM" = kube ]; then
    run kubectl -n "$NAMESPACE" delete daemonset cvat-gdrive-node-prep --ignore-not-found
    run kubectl -n "$NAMESPACE" delete secret "$(setting secret_name)" --ignore-not-found
fi

sync_note="registry-sync"
[ "$SYNC" = no ] && sync_note="registry-sync (not deployed: nothing to remove)"
project_note="project $PACK_PROJECT"
[ "$PROJECT" = no ] && project_note="project $PACK_PROJECT (not found: nothing to remove)"
if [ "$DRY_RUN" = 0 ]; then
    say "== removed ${#published[@]} published function(s), $sync_note and $project_note."
elif [ "$ASK" = 1 ]; then
    if [ "${#published[@]}" -gt 0 ]; then
        say "== dry run: would remove ${#published[@]} published function(s) (${published[*]}), $sync_note and $project_note."
    else
        say "== dry run: would remove 0 published function(s), $sync_note and $project_note."
    fi
else
    say "== dry run: would remove registry-sync and every function labelled cvat-gdrive-pack/managed=true;"
    say "   which ones cannot be known without asking nuctl (run the dry run where nuctl works)."
fi
say "The model cache stays in $(setting cache_host_dir) (on every node on Kubernetes); remove it with:"
say "   sudo rm -rf $(printf %q "$(setting cache_host_dir)")"
say "The images stay; list them with: docker image ls --filter reference='cvat.gdrive-runner.*' --filter reference='cvat.registry-sync'"
