#!/usr/bin/env bash
# Prints the path of a working Python 3.12 (pyenv's versions first, then
# python3.12 on PATH), or exits 1 when there is none.  A pyenv shim is on
# PATH even when it cannot run 3.12, so each candidate is tried.
for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python "$(command -v python3.12 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
        echo "$candidate"
        exit 0
    fi
done
exit 1
