#!/usr/bin/env bash
# Sourced by egs/<dataset>/run.sh after parse_options.sh: the helpers every recipe shares.
#   log MESSAGE...                  timestamped progress line
#   require FILE STAGE              a later stage needs an earlier one's output
#   require_option NAME             an option the stage cannot do without (e.g. --iemocap_root)
#   stage_on N                      true when stage N is between --stage and --stop_stage
#   run_dir TASK [VARIANT]          the folder of this configuration's TASK run, as `strata run-dir` (and `strata fit`)
#                                   names it: <exp_dir>/<task>/<upstream>_<interface>[_<trainable>][_<tag>], the
#                                   trainable left out when frozen; a VARIANT (e.g. featex) is appended to the tag
#   fit_and_test RUN_DIR TRAIN VALID 'TEST...' -- CONFIGS... [-- FIT/TEST OVERRIDES... [-- TEST OVERRIDES...]]
#                                   strata fit (resuming from the run's last checkpoint) then strata test with its
#                                   best checkpoint on each test manifest (results in RUN_DIR for one, in
#                                   RUN_DIR/<manifest name>/ for several); a run whose results exist is skipped.
#                                   The fit is stage ${fit_stage:-1}, the tests stage ${test_stage:-2} (a recipe
#                                   whose one stage trains and tests a task sets both). With no_fit=true, no fit and
#                                   no checkpoint: a test of what needs no training. When STRATA_RUN_LIST names a
#                                   file, RUN_DIR is appended to it (egs/compare.sh collects the runs so).
# They read the recipe's variables: upstream, interface, trainable, tag, seed, exp_dir, stage/stop_stage, extra_args.

log() { echo "$(date '+%F %T') ($(basename "$0")) $*"; }

require() {
    [ -f "$1" ] || { echo "$1 not found: run stage $2 first (bash run.sh --stage $2)" >&2; exit 1; }
}

require_option() {
    [ -n "${!1:-}" ] || { echo "$0: --$1 is required for this stage (see bash run.sh --help)" >&2; exit 1; }
}

command -v strata > /dev/null || {
    echo "strata is not on PATH: run 'make install' in the project root and 'source .venv/bin/activate'" >&2
    exit 1
}

stage_on() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }

run_dir() {
    local tag=${tag:-}
    [ -z "${2:-}" ] || tag=${tag:+${tag}_}$2
    strata run-dir --exp_dir "${exp_dir}" --task "$1" --upstream "${upstream}" --interface "${interface}" \
        --trainable "${trainable}" --tag "${tag}"
}

fit_and_test() {
    local run_dir=$1 train=$2 valid=$3 tests=$4; shift 4
    [ "${1:-}" = "--" ] && shift
    local configs=() overrides=() test_overrides=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=(--config "$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do overrides+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    test_overrides=("$@")
    [ -z "${STRATA_RUN_LIST:-}" ] || echo "${run_dir}" >> "${STRATA_RUN_LIST}"
    # One test set: results in the run folder. Several: one sub-folder each, named after the manifest.
    local -a test_sets=(${tests})
    local -A results_dir=()
    local test
    for test in "${test_sets[@]}"; do
        results_dir[${test}]=${run_dir}
        [ ${#test_sets[@]} -gt 1 ] && results_dir[${test}]="${run_dir}/$(basename "${test}" .jsonl)"
    done
    local done=1
    for test in "${test_sets[@]}"; do [ -f "${results_dir[${test}]}/results.json" ] || done=0; done
    if [ ${done} = 1 ]; then
        log "already done: ${run_dir} has its results.json (delete it to run again)"
        return
    fi
    local common=("${configs[@]}" --seed_everything "${seed}" --model.upstream.name "${upstream}"
        --model.upstream.trainable "${trainable}" --model.interface.name "${interface}")
    local started=${SECONDS}
    if stage_on "${fit_stage:-1}" && [ "${no_fit:-false}" != true ]; then
        log "fit ${run_dir} on ${train}"
        strata fit "${common[@]}" --trainer.default_root_dir "${run_dir}" --data.train "${train}" \
            --data.valid "${valid}" --ckpt_path last ${overrides[@]+"${overrides[@]}"} ${extra_args[@]+"${extra_args[@]}"}
    fi
    if stage_on "${test_stage:-2}"; then
        for test in "${test_sets[@]}"; do
            log "test ${run_dir} on ${test} -> ${results_dir[${test}]}"
            local checkpoint=(--ckpt_path best)
            [ "${results_dir[${test}]}" != "${run_dir}" ] && checkpoint=(--ckpt_path "${run_dir}/checkpoints/best.ckpt")
            [ "${no_fit:-false}" = true ] && checkpoint=()
            strata test "${common[@]}" --trainer.default_root_dir "${results_dir[${test}]}" --data.train "${train}" \
                --data.test "${test}" ${checkpoint[@]+"${checkpoint[@]}"} ${overrides[@]+"${overrides[@]}"} \
                ${test_overrides[@]+"${test_overrides[@]}"} ${extra_args[@]+"${extra_args[@]}"}
        done
    fi
    log "${run_dir}: $((SECONDS - started)) s"
}
