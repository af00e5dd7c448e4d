#!/usr/bin/env bash
# Sourced by egs/*/run.sh after its defaults: turns `--name value` into `name=value` for variables the
# script already defines (dashes become underscores), so a typo is an error instead of a silent default.
# Everything after a bare `--` is left in the array `extra_args` (overrides handed on to `strata`).
# `--help` prints the script's `usage` variable (if set) and the current values.
extra_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --)
            shift
            extra_args=("$@")
            break
            ;;
        --help|-h)
            [ -n "${usage:-}" ] && echo "${usage}"
            echo "options (current values):"
            grep -oE '^[a-z_]+=' "$0" | tr -d '=' | sort -u | while read -r name; do
                echo "  --${name//_/-} ${!name-}"
            done
            exit 0
            ;;
        --*=*)
            name="${1%%=*}"; name="${name#--}"; name="${name//-/_}"; value="${1#*=}"; shift
            ;;
        --*)
            name="${1#--}"; name="${name//-/_}"
            if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
            value="$2"; shift 2
            ;;
        *)
            echo "$0: unexpected argument '$1' (options look like --name value)" >&2
            exit 1
            ;;
    esac
    if [ -z "${!name+set}" ]; then
        echo "$0: unknown option --${name//_/-}" >&2
        exit 1
    fi
    printf -v "${name}" '%s' "${value}"
done
