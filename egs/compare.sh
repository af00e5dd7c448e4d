#!/usr/bin/env bash
# Run one recipe for several upstreams (and interfaces), then compare the runs side by side.
#   bash egs/compare.sh egs/iemocap --upstreams hubert_base,wavlm_base_plus --iemocap_root /data/IEMOCAP_full_release
#   bash egs/compare.sh egs/mini --upstreams fbank,tiny_hubert --interfaces weighted_sum,hconv --stage 1 --stop_stage 1
# Every option other than --upstreams, --interfaces and --out goes to the recipe's run.sh, as do strata overrides
# after `--`. A configuration whose results already exist is skipped by run.sh, so an interrupted comparison picks
# up where it stopped. The runs compared are the ones run.sh made or found done in this call, by their folders as
# `strata run-dir` names them (never older runs whose names merely start alike). Writes <exp_dir>/compare/compare.md
# (best of each metric in bold) and compare.png (grouped bars), or into --out.
set -euo pipefail

usage="usage: bash egs/compare.sh <egs dir> --upstreams a,b[,c] [--interfaces weighted_sum[,hconv]] [--out DIR]
       [run.sh options] [-- strata overrides]"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "${usage}" >&2; exit 1; }
recipe=$1; shift
[ -f "${recipe}/run.sh" ] || { echo "$0: ${recipe}/run.sh not found: give a recipe folder such as egs/mini" >&2; exit 1; }

upstreams=
interfaces=weighted_sum
out=
exp_dir=exp
passed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --upstreams) upstreams=$2; shift 2 ;;
        --interfaces) interfaces=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --exp_dir|--exp-dir) exp_dir=$2; passed+=("$1" "$2"); shift 2 ;;
        --) passed+=("$@"); break ;;
        *) passed+=("$1"); shift ;;
    esac
done
[ -n "${upstreams}" ] || { echo "$0: --upstreams is required (comma-separated)" >&2; echo "${usage}" >&2; exit 1; }

[ -z "${out}" ] || out=$(realpath -m "${out}")  # given from here, used from the recipe's folder
cd "${recipe}"  # run.sh resolves its relative paths (data, exp) in its own folder: so does this script
log() { echo "$(date '+%F %T') (compare.sh) $*"; }
# run.sh lists each run it trains, tests or finds done in this file (egs/utils/recipe.sh fit_and_test).
export STRATA_RUN_LIST
STRATA_RUN_LIST=$(mktemp)
trap 'rm -f "${STRATA_RUN_LIST}"' EXIT
for up in ${upstreams//,/ }; do
    for interface in ${interfaces//,/ }; do
        log "${recipe}: ${up} with ${interface}"
        bash run.sh --upstream "${up}" --interface "${interface}" ${passed[@]+"${passed[@]}"}
    done
done
# A configuration's folder is <exp_dir>/<task>/<run name>: the runs it lists may be folds or sets below it, and
# the folder stands for them (its mean results.json, when the recipe writes one, or each run's).
runs=()
while IFS= read -r folder; do runs+=("${folder}"); done < <(
    while IFS= read -r run; do
        echo "${exp_dir}/$(realpath -m --relative-to="${exp_dir}" "${run}" | cut -d/ -f1-2)"
    done < "${STRATA_RUN_LIST}" | sort -u)
[ ${#runs[@]} -gt 0 ] || { echo "$0: no run folders under ${recipe}/${exp_dir} to compare" >&2; exit 1; }
strata compare "${runs[@]}" --out "${out:-${exp_dir}/compare}"
