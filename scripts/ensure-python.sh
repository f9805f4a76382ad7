#!/usr/bin/env bash
# ensure-python.sh - make a CPython >= 3.12 (with headers, pip and venv)
# available for building bocpy, and print its absolute path.
#
# Usage:
#   PY=$(bash scripts/ensure-python.sh [--free-threaded] [--force-build] [--rebuild] [--quiet])
#
# Output contract: the LAST line of stdout is the absolute path of a suitable
# interpreter; every progress/diagnostic message goes to stderr. Exit status
# is non-zero (and nothing is printed on stdout) when no interpreter could be
# found or built.
#
# Search order (first hit wins):
#   1. $BOCPY_PYTHON, if set (must qualify, otherwise this is a hard error).
#   2. Installed interpreters, 3.13 preferred, then 3.12, then 3.14:
#      python3.X on PATH, pyenv versions, /usr/local/bin, /usr/bin, and the
#      private build prefix below (only once its completion marker exists).
#   3. Debian packages pythonX.Y{,-dev,-venv} if the configured apt sources
#      offer them (not the case on bookworm).
#   4. Build Debian trixie's python3.13 source package (upstream sources) into
#      $BOCPY_PYTHON_PREFIX.
#
# Options:
#   --free-threaded  provide a free-threaded interpreter (3.13t/3.14t, built
#                  with --disable-gil) instead of a GIL build; the same steps
#                  apply with "t" names (python3.13t, Debian's python3.13-nogil,
#                  a private build configured with --disable-gil into
#                  ~/.cache/bocpy/python3.13t).
#   --force-build  skip steps 1-3 and use/build the private prefix (step 4);
#                  an already completed build is reused.
#   --rebuild      with --force-build (implies it): rebuild even if the
#                  prefix is complete (the old one stays usable until the new
#                  one is ready).
#   --quiet        no progress messages (errors are still reported).
#
# Environment:
#   BOCPY_PYTHON          explicit interpreter to use (step 1).
#   BOCPY_PYTHON_PREFIX   build prefix (default $HOME/.cache/bocpy/python3.13).
#   BOCPY_PYTHON_WORKDIR  download/build dir (default "$PREFIX.build"); the
#                         build log is $BOCPY_PYTHON_WORKDIR/build.log.
#   BOCPY_DEBIAN_MIRROR   Debian mirror for deb-src (default: taken from the
#                         system apt sources, else http://deb.debian.org/debian).
#   PYENV_ROOT            pyenv root to search (default $HOME/.pyenv).
set -euo pipefail

# Minor versions in order of preference: 3.13 is what CI targets, 3.12 is the
# minimum bocpy supports, 3.14 is accepted but is the newest/least tested.
PREFERRED_MINORS=(3.13 3.12 3.14)
# What step 4 builds, and where the source comes from.
SRC_PKG=python3.13
SRC_SUITE=trixie
BUILD_MINOR=3.13
MARKER_NAME=.bocpy-build-complete
INFO_NAME=BOCPY-BUILD-INFO

QUIET=0
FORCE_BUILD=0
REBUILD=0
FREE_THREADED=0
for arg in "$@"; do
    case "$arg" in
        --free-threaded) FREE_THREADED=1 ;;
        --force-build) FORCE_BUILD=1 ;;
        --rebuild) FORCE_BUILD=1; REBUILD=1 ;;
        --quiet|-q) QUIET=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) echo "ensure-python: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

# The free-threaded flavour: executables carry a "t" suffix (python3.13t),
# the private prefix is a separate one, and configure gets --disable-gil.
ABI_SUFFIX=""
CONFIGURE_EXTRA=()
if [[ $FREE_THREADED == 1 ]]; then
    ABI_SUFFIX=t
    CONFIGURE_EXTRA=(--disable-gil)
    # 3.12 has no free-threaded build.
    PREFERRED_MINORS=(3.13 3.14)
    MARKER_NAME=.bocpy-build-complete-ft
fi
BUILD_EXE=python$BUILD_MINOR$ABI_SUFFIX

log() { if [[ $QUIET == 0 ]]; then echo "ensure-python: $*" >&2; fi; }
die() { echo "ensure-python: error: $*" >&2; exit 1; }

# Absolute paths without requiring the target to exist (realpath -m).
PREFIX=$(realpath -m -- "${BOCPY_PYTHON_PREFIX:-$HOME/.cache/bocpy/python$BUILD_MINOR$ABI_SUFFIX}")
WORKDIR=$(realpath -m -- "${BOCPY_PYTHON_WORKDIR:-$PREFIX.build}")
MARKER="$PREFIX/$MARKER_NAME"
PYENV_DIR="${PYENV_ROOT:-$HOME/.pyenv}"

# --- candidate check -------------------------------------------------------
# Actually run the interpreter (pyenv shims for unselected versions exist but
# fail, so existence on PATH proves nothing). The probe is plain Python that
# also parses on old interpreters; -I keeps PYTHONPATH/PYTHONHOME/user site
# from skewing the result. It prints "OK <sys.executable>" or "FAIL <why>".
PROBE='
import os, sys, sysconfig
def fail(why):
    sys.stdout.write("FAIL " + why + "\n"); sys.exit(0)
if sys.version_info < (3, 12):
    fail("version %d.%d < 3.12" % sys.version_info[:2])
want_ft = os.environ.get("BOCPY_WANT_FREE_THREADED") == "1"
if bool(sysconfig.get_config_var("Py_GIL_DISABLED")) != want_ft:
    fail("GIL build, not free-threaded" if want_ft else "free-threaded build (Py_GIL_DISABLED)")
inc = sysconfig.get_paths()["include"]
if not os.path.isfile(os.path.join(inc, "Python.h")):
    fail("no Python.h in " + inc + " (development headers missing)")
try:
    import venv
except Exception as e:
    fail("cannot import venv: %r" % (e,))
try:
    import ensurepip
    ensurepip.version()
except Exception:
    try:
        import pip
    except Exception:
        fail("neither ensurepip nor pip is usable")
sys.stdout.write("OK " + (sys.executable or "") + "\n")
'
CHECK_REASON=""
CHECK_PATH=""
# check_python CMD: returns 0 and sets CHECK_PATH when CMD qualifies,
# otherwise returns 1 and sets CHECK_REASON.
check_python() {
    local cmd=$1 resolved out
    CHECK_REASON="" CHECK_PATH=""
    if [[ $cmd == */* ]]; then
        resolved=$cmd
    else
        resolved=$(command -v -- "$cmd" 2>/dev/null) || { CHECK_REASON="not found"; return 1; }
    fi
    [[ -x $resolved && ! -d $resolved ]] || { CHECK_REASON="not an executable file"; return 1; }
    # An interpreter inside our build prefix only counts once the build
    # finished (marker written after install + verification).
    case "$(realpath -m -- "$resolved")/" in
        "$PREFIX"/*) [[ -f $MARKER ]] || { CHECK_REASON="incomplete build in $PREFIX (no marker)"; return 1; } ;;
    esac
    out=$(BOCPY_WANT_FREE_THREADED=$FREE_THREADED timeout 30 "$resolved" -I -c "$PROBE" 2>/dev/null) || { CHECK_REASON="does not run"; return 1; }
    out=$(printf '%s\n' "$out" | tail -n 1)
    case "$out" in
        "OK /"*) CHECK_PATH=${out#OK } ; return 0 ;;
        "OK "*) CHECK_PATH=$(realpath -- "$resolved"); return 0 ;;
        "FAIL "*) CHECK_REASON=${out#FAIL }; return 1 ;;
        *) CHECK_REASON="unexpected probe output"; return 1 ;;
    esac
}

found() {
    log "using $CHECK_PATH"
    printf '%s\n' "$CHECK_PATH"
    exit 0
}

try_candidate() {
    if check_python "$1"; then found; fi
    [[ $QUIET == 1 ]] || echo "ensure-python:   skip $1: $CHECK_REASON" >&2
    return 0
}

# --- root / apt helpers -----------------------------------------------------
SUDO=()
CAN_APT=0
if command -v apt-get >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        CAN_APT=1
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n); CAN_APT=1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return 0
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq >&2 || log "warning: apt-get update failed; using existing lists"
    APT_UPDATED=1
}
apt_install() {
    log "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- step 4: build from source ---------------------------------------------
PRIVATE_APT=()
setup_private_apt() {
    # A private sources list + lists/cache dirs so the trixie deb-src entry
    # never touches (or is seen by) the system's apt configuration.
    local aptdir=$WORKDIR/apt mirror keyring opts=""
    mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
    mirror=${BOCPY_DEBIAN_MIRROR:-$(detect_mirror)}
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $keyring ]] && opts="[signed-by=$keyring] "
    printf 'deb-src %s%s %s main\n' "$opts" "$mirror" "$SRC_SUITE" > "$aptdir/sources.list"
    PRIVATE_APT=(
        -o "Dir::Etc::sourcelist=$aptdir/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::Cache=$aptdir/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=0"
        # Files live in root's private work dir; _apt could not write there.
        -o "APT::Sandbox::User=root"
    )
    log "deb-src $mirror $SRC_SUITE (private apt config in $aptdir)"
}

# First plain Debian archive URI (not -security/ports) from the system
# sources, in either one-line (.list) or deb822 (.sources) format.
detect_mirror() {
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*deb(-src)?[[:space:]]/ {
                for (i = 2; i <= NF; i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue } print $i; break }
            }
            tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }
        ' "$f" | grep -E '^https?://[^ ]*/debian/?$' | head -n 1) || true
        if [[ -n $uri ]]; then printf '%s\n' "${uri%/}"; return 0; fi
    done
    echo http://deb.debian.org/debian
}

BUILD_DEPS=(build-essential pkg-config xz-utils libssl-dev zlib1g-dev libbz2-dev
            libffi-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev
            uuid-dev libgdbm-dev libgdbm-compat-dev)

install_build_deps() {
    local missing=() p
    for p in "${BUILD_DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    if [[ $CAN_APT == 0 ]]; then
        log "warning: cannot install missing build deps (need root): ${missing[*]}"
        return 0
    fi
    # Bookworm's own packages are enough; retry after an update if the
    # local lists are stale or absent (e.g. fresh container).
    apt_install "${missing[@]}" || { apt_update_once; apt_install "${missing[@]}"; }
}

# A prefix we may delete: absent, empty, or one we created (has the info file).
prefix_is_ours() {
    [[ ! -e $1 ]] && return 0
    [[ -d $1 ]] || return 1
    [[ -z $(ls -A -- "$1") || -f $1/$INFO_NAME ]]
}

build_python() {
    [[ $PREFIX != *[[:space:]]* && $WORKDIR != *[[:space:]]* ]] \
        || die "BOCPY_PYTHON_PREFIX/WORKDIR must not contain whitespace"
    command -v apt-get >/dev/null 2>&1 || die "no Python >= 3.12 found and apt-get is unavailable to build one; set BOCPY_PYTHON"
    prefix_is_ours "$PREFIX" || die "$PREFIX exists and was not created by this script; refusing to overwrite it"
    mkdir -p "$WORKDIR"

    # Serialise concurrent invocations; the winner's build is reused.
    exec 9>"$WORKDIR/lock"
    if ! flock -n 9; then
        log "another ensure-python build holds $WORKDIR/lock; waiting"
        flock 9
    fi
    if [[ $REBUILD == 0 ]] && check_python "$PREFIX/bin/$BUILD_EXE"; then found; fi

    # Global (not local): the EXIT trap below runs after this function returns.
    BUILD_LOG=$WORKDIR/build.log
    local log_file=$BUILD_LOG src=$WORKDIR/src stage=$WORKDIR/stage dl=$WORKDIR/download
    : > "$log_file"
    log "building $SRC_PKG from Debian $SRC_SUITE sources into $PREFIX (log: $log_file)"
    local t0=$SECONDS
    # Any failure below: show the end of the log so CI output is useful.
    trap 'rc=$?; if [[ $rc != 0 ]]; then echo "ensure-python: build FAILED (rc=$rc); last lines of $BUILD_LOG:" >&2; tail -n 40 "$BUILD_LOG" >&2; fi' EXIT

    install_build_deps >>"$log_file" 2>&1

    # Fetch the source package via a private apt config (step 4a).
    setup_private_apt
    apt-get "${PRIVATE_APT[@]}" update >>"$log_file" 2>&1
    rm -rf "$dl"; mkdir -p "$dl"
    (cd "$dl" && apt-get "${PRIVATE_APT[@]}" source --download-only "$SRC_PKG") >>"$log_file" 2>&1
    local orig
    orig=$(ls "$dl"/"${SRC_PKG}"_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -n 1) || true
    [[ -n $orig ]] || die "apt-get source did not produce an orig tarball in $dl"
    log "unpacking $(basename "$orig")"
    # Upstream sources only: Debian's patches target /usr multiarch layouts
    # and dist-packages, which would be wrong for a private prefix.
    rm -rf "$src" "$stage"; mkdir -p "$src"
    tar -xf "$orig" -C "$src" --strip-components=1

    # Shared libpython + rpath so the prefix is self-contained; RUNPATH (new
    # dtags) rather than RPATH so the build tree's LD_LIBRARY_PATH wins over
    # an older libpython already in $PREFIX/lib during --rebuild. No PGO/LTO
    # (--enable-optimizations) to keep the build to a few minutes.
    log "configure + make -j$(nproc) (takes a few minutes)"
    (
        cd "$src"
        ./configure --prefix="$PREFIX" --enable-shared --with-ensurepip=install "${CONFIGURE_EXTRA[@]}" \
            LDFLAGS="-Wl,--enable-new-dtags,-rpath,$PREFIX/lib"
        make -j"$(nproc)"
        # Install into a staging root, then move it into place in one rename
        # so a half-installed prefix never appears at $PREFIX.
        make install DESTDIR="$stage"
    ) >>"$log_file" 2>&1
    [[ -x $stage$PREFIX/bin/$BUILD_EXE ]] || die "install did not produce bin/$BUILD_EXE"
    printf 'built by scripts/ensure-python.sh on %s from %s\n' "$(date -u +%FT%TZ)" "$(basename "$orig")" \
        > "$stage$PREFIX/$INFO_NAME"

    # Swap in (the old prefix, if any, is ours per prefix_is_ours).
    rm -f "$MARKER"
    rm -rf "$PREFIX"
    mkdir -p "$(dirname "$PREFIX")"
    mv "$stage$PREFIX" "$PREFIX" 2>/dev/null || cp -a "$stage$PREFIX" "$PREFIX"

    # Verify the modules bocpy/pip need actually built before declaring done.
    "$PREFIX/bin/$BUILD_EXE" -I -c \
        'import ssl, ctypes, sqlite3, zlib, bz2, lzma, venv, ensurepip, _pickle' >>"$log_file" 2>&1 \
        || die "built interpreter is missing required modules"
    touch "$MARKER"
    check_python "$PREFIX/bin/$BUILD_EXE" || die "built interpreter failed the check: $CHECK_REASON"

    # The build tree is large and no longer needed; keep downloads + log.
    rm -rf "$src" "$stage"
    trap - EXIT
    log "built $("$CHECK_PATH" -c 'import sys; print(sys.version.split()[0])') in $((SECONDS - t0))s"
    found
}

# --- main ------------------------------------------------------------------
if [[ $FORCE_BUILD == 1 ]]; then
    build_python
fi

# Step 1: explicit override is authoritative - never silently fall back.
if [[ -n ${BOCPY_PYTHON:-} ]]; then
    check_python "$BOCPY_PYTHON" || die "BOCPY_PYTHON=$BOCPY_PYTHON is not usable: $CHECK_REASON (need CPython >= 3.12, GIL build, with Python.h and venv/pip)"
    found
fi

# Step 2: already-installed interpreters, by preferred minor version.
for minor in "${PREFERRED_MINORS[@]}"; do
    try_candidate "python$minor$ABI_SUFFIX"
done
for minor in "${PREFERRED_MINORS[@]}"; do
    # Newest patch release first; sort -V handles 3.13.10 > 3.13.9.
    while IFS= read -r d; do
        [[ -n $d ]] && try_candidate "$d/bin/python3"
    done < <(ls -d "$PYENV_DIR/versions/$minor".* 2>/dev/null | sort -rV)
    # pyenv names free-threaded builds 3.13.0t; their executable is python3t.
    if [[ $FREE_THREADED == 1 ]]; then
        while IFS= read -r d; do
            [[ -n $d ]] && try_candidate "$d/bin/python${minor}t"
        done < <(ls -d "$PYENV_DIR/versions/$minor".*t 2>/dev/null | sort -rV)
    fi
done
for dir in /usr/local/bin /usr/bin; do
    for minor in "${PREFERRED_MINORS[@]}"; do
        [[ -e $dir/python$minor$ABI_SUFFIX ]] && try_candidate "$dir/python$minor$ABI_SUFFIX"
    done
done
if [[ -e $PREFIX/bin/$BUILD_EXE ]]; then
    try_candidate "$PREFIX/bin/$BUILD_EXE"
fi

# Step 3: distro packages, when the configured sources carry them.
if [[ $CAN_APT == 1 ]]; then
    apt_update_once
    for minor in "${PREFERRED_MINORS[@]:0:2}"; do
        # Debian ships the free-threaded build as pythonX.Y-nogil (/usr/bin/pythonX.Yt).
        pkg=python$minor
        [[ $FREE_THREADED == 1 ]] && pkg=python$minor-nogil
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
        if [[ -n $cand && $cand != "(none)" ]]; then
            log "installing $pkg $cand from apt"
            if apt_install "$pkg" "python$minor-dev" "python$minor-venv" \
                && check_python "/usr/bin/python$minor$ABI_SUFFIX"; then
                found
            fi
            log "warning: apt python$minor unusable: ${CHECK_REASON:-install failed}"
        fi
    done
    log "no suitable python${PREFERRED_MINORS[0]}$ABI_SUFFIX packages in the configured apt sources"
else
    log "skipping apt packages (not root / no apt-get)"
fi

# Step 4: build from Debian's source package.
build_python
