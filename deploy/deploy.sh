#!/usr/bin/env bash
# Deploys the pack onto CVAT's Nuclio: the `cvat` project, one runner image per runtime
# family (nuctl build: Nuclio's own build, so the image has Nuclio's processor and SDK),
# and registry-sync in its own project, which then publishes every registry model into
# `cvat` as a function that reuses those images. Settings: deploy/settings.env.
# Admin guide: docs/admin-guide.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/deploy.sh [--gpu] [--platform local|kube] [--settings FILE] [--dry-run]

  --gpu        also build the GPU runner images (models that need a GPU run on them)
  --platform   local (Docker, CVAT's serverless compose file) or kube (CVAT's Helm chart);
               default: NUCLIO_PLATFORM from the settings, else local
  --settings   the settings file (default deploy/settings.env; see settings.env.example)
  --dry-run    print the commands, run none of them (the configs they use are still
               written to build/deploy/, so they can be run as printed)
EOF
}

# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common "$@"
PURPOSE=deploy
load_settings deploy
nuctl_where
GPU_FLAG=()
[ "$GPU" = 1 ] && GPU_FLAG=(--gpu)

# The Drive key: a file readable by its owner only; its content is never read here.
# A dry run runs nothing, so a key not yet in place is a warning there, not a stop.
key_problem() {
    if [ "$DRY_RUN" = 1 ]; then
        say "warning: $* (a real deploy stops here)"
    else
        die "$*"
    fi
}
KEY_FILE="$(setting drive_key_file)"
if [ -n "$KEY_FILE" ]; then
    if [ -d "$KEY_FILE" ]; then
        key_problem "DRIVE_KEY_FILE $KEY_FILE is a folder; give the service account's JSON key file"
    elif [ ! -e "$KEY_FILE" ]; then
        case "$(setting registry)" in
            local:*) key_problem "DRIVE_KEY_FILE $KEY_FILE does not exist (a local: registry needs no key: leave DRIVE_KEY_FILE empty)" ;;
            *) key_problem "DRIVE_KEY_FILE $KEY_FILE does not exist" ;;
        esac
    elif [ ! -f "$KEY_FILE" ]; then
        key_problem "DRIVE_KEY_FILE $KEY_FILE is not a regular file"
    elif [ ! -r "$KEY_FILE" ]; then
        key_problem "DRIVE_KEY_FILE $KEY_FILE cannot be read by $(id -un)"
    elif [ ! -s "$KEY_FILE" ]; then
        key_problem "DRIVE_KEY_FILE $KEY_FILE is empty"
    else
        # -L: a key reached through a symlink is judged by the file itself.
        mode="$(stat -L -c '%a' "$KEY_FILE")"
        if (( 8#$mode & 8#044 )); then   # the group's or others' read bit
            key_problem "DRIVE_KEY_FILE $KEY_FILE is readable by others (mode $mode): chmod 600 $(printf %q "$KEY_FILE")"
        fi
    fi
fi

require_tool nuctl "install the nuctl matching CVAT's Nuclio dashboard (docs/admin-guide.md, Versions)"
[ "$PLATFORM" = kube ] && require_tool kubectl "needed on Kubernetes for the Drive key Secret and the node DaemonSet"

# Generated configs go here in a dry run too, so that the printed commands can be run as printed.
OUT="$BUILD_DIR/deploy"
mkdir -p "$OUT"

say "== cvat-gdrive-pack $("$PY" -c 'import common; print(common.__version__)') on $PLATFORM"

# 1. Build folders: each function's files plus common/ and its family's requirements (make stage).
run "$PY" -m tools.stage gdrive-runner --all "$BUILD_DIR"
run "$PY" -m tools.stage registry-sync "$BUILD_DIR/registry-sync"

# 2. Configs generated from the settings.
"$PY" -m deploy.pack_config sync-config --platform "$PLATFORM" "${GPU_FLAG[@]}" --out "$OUT/registry-sync.yaml"
if [ "$DRY_RUN" = 1 ]; then
    say "registry-sync config ($OUT/registry-sync.yaml, deployed with --file):"
    cat "$OUT/registry-sync.yaml" >&2
else
    say "registry-sync config: $OUT/registry-sync.yaml"
fi

# 3. Projects: CVAT lists `cvat`; registry-sync lives in its own.
PACK_PROJECT="$(setting pack_project)"
for project in cvat "$PACK_PROJECT"; do
    if [ "$DRY_RUN" = 1 ]; then
        say "+ nuctl create project $project ${WHERE[*]}   (when missing)"
    elif ! nuctl get project "$project" "${WHERE[@]}" >/dev/null 2>&1; then
        run nuctl create project "$project" "${WHERE[@]}"
    fi
done

# 4. One runner image per family (and per GPU variant with --gpu), each built once.
REGISTRY_FLAGS=()
if [ "$PLATFORM" = kube ]; then
    REGISTRY_FLAGS=(--registry "$(setting image_registry)")
fi
IMAGES="$("$PY" -m deploy.pack_config images --platform "$PLATFORM" "${GPU_FLAG[@]}")"
while read -r variant image; do
    run nuctl build "gdrive-runner-$variant" --path "$BUILD_DIR/gdrive-runner-$variant" \
        --file "$BUILD_DIR/gdrive-runner-$variant/function.yaml" --image "$image" \
        "${REGISTRY_FLAGS[@]}" "${WHERE[@]}"
done <<<"$IMAGES"

# 5. Kubernetes: the Drive key as a Secret, and each node's cache folder and key copy.
if [ "$PLATFORM" = kube ]; then
    "$PY" -m deploy.pack_config node-prep --platform kube --out "$OUT/node-prep.yaml"
    if [ -n "$KEY_FILE" ]; then
        SECRET="$(setting secret_name)"
        run kubectl -n "$NAMESPACE" delete secret "$SECRET" --ignore-not-found
        run kubectl -n "$NAMESPACE" create secret generic "$SECRET" "--from-file=service-account.json=$KEY_FILE"
    fi
    run kubectl -n "$NAMESPACE" apply -f "$OUT/node-prep.yaml"
    run kubectl -n "$NAMESPACE" rollout status daemonset/cvat-gdrive-node-prep --timeout=300s
fi

# 6. registry-sync, in its own project, on CVAT's network (Docker) or namespace (Kubernetes).
DEPLOY_FLAGS=()
if [ "$PLATFORM" = local ]; then
    DEPLOY_FLAGS=(--platform-config "{\"attributes\": {\"network\": \"$(setting network)\"}}")
else
    DEPLOY_FLAGS=(--registry "$(setting image_registry)" --run-registry "$(setting run_registry)")
fi
run nuctl deploy registry-sync --project-name "$PACK_PROJECT" --path "$BUILD_DIR/registry-sync" \
    --file "$OUT/registry-sync.yaml" "${DEPLOY_FLAGS[@]}" "${WHERE[@]}"

# 7. The first sync now, instead of after the first interval; then what is deployed.
if ! run nuctl invoke registry-sync "${WHERE[@]}" -m POST -c application/json -b '{"reason": "deploy"}' -t 900s; then
    say "warning: the first sync failed; its report is above. docs/admin-guide.md, Troubleshooting."
fi
run nuctl get function "${WHERE[@]}"
if [ "$DRY_RUN" = 1 ]; then
    say "== dry run: nothing was run. The commands above, run in order from $REPO, deploy the pack;"
    say "   the configs they name are in $OUT."
else
    say "== done: open CVAT's Models page; registry-sync publishes again every $(setting interval) $(setting schedule)"
fi
