#!/usr/bin/env bash
# Checks that every function or variable one binding file uses from another
# is declared in a binding header, and that everything else is static:
# each binding/*.c compiles with -Wmissing-prototypes and
# -Wmissing-variable-declarations as errors (libboc's build uses
# -Wmissing-prototypes the same way), and no binding/*.c declares an
# extern.  Compilers without -Wmissing-variable-declarations (GCC before
# 14) get the same check from the symbol table instead: every global data
# symbol the binding defines must be named in a binding header.
#
# Usage: scripts/check-prototypes.sh PYTHON   (the venv's python)
set -euo pipefail

py="${1:-python3}"
cc="${CC:-cc}"
pyinc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
# setup.py's include directories and warnings, plus Python's headers.
flags=(-std=gnu11 -D_GNU_SOURCE=1 -Ilibboc/include -Ilibboc/src -Ibinding -Isrc/bocpy/include
       "-I$pyinc" -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
       -Wmissing-prototypes -Werror)

var_flag=()
if echo 'int x;' | "$cc" -x c -Wmissing-variable-declarations -Werror -fsyntax-only - \
    >/dev/null 2>&1; then
    var_flag=(-Wmissing-variable-declarations)
fi

status=0
for f in binding/*.c; do
    "$cc" "${flags[@]}" "${var_flag[@]}" -fsyntax-only "$f" || status=1
done

if [ ${#var_flag[@]} -eq 0 ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for f in binding/*.c; do
        "$cc" "${flags[@]}" -O0 -c "$f" -o "$tmp/$(basename "$f" .c).o" || status=1
    done
    # B, D, R: global (non-static) variables defined by the binding.
    for sym in $(nm --defined-only "$tmp"/*.o | awk '$2 ~ /^[BDRGS]$/ { print $3 }' | sort -u); do
        if ! grep -qw -- "$sym" binding/*.h; then
            echo "check-prototypes: global variable $sym is declared in no binding header" \
                 "(declare it there, or make it static)"
            status=1
        fi
    done
fi

if grep -n '^[[:space:]]*extern[[:space:]]' binding/*.c; then
    echo "check-prototypes: declare these in a binding header, not in a .c file"
    status=1
fi
exit $status
