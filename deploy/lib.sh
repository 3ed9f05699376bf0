# shellcheck shell=bash
# What deploy.sh and remove.sh share: options, the settings file, and running (or,
# with --dry-run, printing) each command. Sourced, never run.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
SETTINGS="${SETTINGS:-$REPO/deploy/settings.env}"
BUILD_DIR="${BUILD_DIR:-$REPO/build}"
PLATFORM=""
GPU=0
DRY_RUN=0

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Parses the options both scripts take; leaves unknown ones to the caller's usage.
parse_common() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --gpu) GPU=1 ;;
            --platform) [ "$#" -ge 2 ] || die "--platform needs local or kube"; PLATFORM="$2"; shift ;;
            --platform=*) PLATFORM="${1#--platform=}" ;;
            --settings) [ "$#" -ge 2 ] || die "--settings needs a file"; SETTINGS="$2"; shift ;;
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option $1" ;;
        esac
        shift
    done
    # Absolute, then work from the repository root (python -m tools.stage, deploy.pack_config).
    local dir
    dir="$(cd "$(dirname "$SETTINGS")" 2>/dev/null && pwd)" \
        || die "no settings file $SETTINGS (no folder $(dirname "$SETTINGS")): cp deploy/settings.env.example deploy/settings.env and edit it"
    SETTINGS="$dir/$(basename "$SETTINGS")"
    cd "$REPO" || exit 1
}

# Reads the settings file into the environment (the helper reads them there) and checks them.
load_settings() {
    local purpose="$1"
    [ -f "$SETTINGS" ] || die "no settings file $SETTINGS: cp deploy/settings.env.example deploy/settings.env and edit it"
    [ -x "$PY" ] || die "no Python at $PY: run make venv first (or set PYTHON)"
    set -a
    # shellcheck source=/dev/null
    . "$SETTINGS"
    set +a
    PLATFORM="${PLATFORM:-${NUCLIO_PLATFORM:-local}}"
    case "$PLATFORM" in local|kube) ;; *) die "--platform must be local or kube, got '$PLATFORM'" ;; esac
    local gpu_flag=()
    [ "$GPU" = 1 ] && gpu_flag=(--gpu)
    "$PY" -m deploy.pack_config check --platform "$PLATFORM" --for "$purpose" "${gpu_flag[@]}" \
        || die "fix the settings above in $SETTINGS"
    NAMESPACE="$(setting namespace)"
}

# One resolved setting (deploy/pack_config.py DeploySettings field).
setting() {
    "$PY" -m deploy.pack_config get "$1" --platform "$PLATFORM" --for "${PURPOSE:-deploy}"
}

# Runs a command, or prints it (shell-quoted) with --dry-run. Commands carry paths, never secrets.
# A failure stops the script naming the command, then RUN_FAILED_HINT when the caller set one.
run() {
    local arg line="+"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            line+=" $arg"
        else
            line+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    say "$line"
    if [ "$DRY_RUN" = 0 ]; then
        local rc=0
        "$@" || rc=$?
        [ "$rc" = 0 ] || die "${line#+ } failed (exit status $rc)${RUN_FAILED_HINT:+; $RUN_FAILED_HINT}"
    fi
}

# nuctl's flags that say where: platform, and the namespace on Kubernetes.
nuctl_where() {
    WHERE=(--platform "$PLATFORM")
    if [ "$PLATFORM" = kube ]; then
        WHERE+=(--namespace "$NAMESPACE")
    fi
}

require_tool() {
    if [ "$DRY_RUN" = 0 ] && ! command -v "$1" >/dev/null 2>&1; then
        die "$1 is not on PATH: $2"
    fi
}
