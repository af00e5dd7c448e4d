#!/usr/bin/env bash
# DCASE 2023 Task 2, first-shot unsupervised anomalous sound detection: train on each machine's normal clips, score
# the test clips, and report AUC (source, target), pAUC and the official score as the challenge's evaluator does.
# The development set (dev_data) is scored with its labels; the evaluation set (eval_data) is scored into the
# submission CSVs, and evaluated too when --ground_truth points at the official evaluator's ground-truth folders.
# Stages: -1 download from Zenodo (resumable, md5-checked), 0 prepare manifests, 1 fit, 2 test, 3 report.
#   bash run.sh --dcase_root /data/dcase2023t2
#   bash run.sh --stage 1 --upstream wavlm_base_plus -- --model.task.init_args.embedding featex
#   bash run.sh --stage 1 --frozen true             # pooled upstream features scored directly, no training
set -euo pipefail
cd "$(dirname "$0")"

stage=-1
stop_stage=3
dcase_root=                # holds dev_data/raw/<machine>/ and eval_data/raw/<machine>/
ground_truth=              # optional: dcase2023_task2_evaluator checkout (ground_truth_data/, ground_truth_domain/)
data_dir=data/dcase2023t2
exp_dir=exp
upstream=hubert_base
interface=weighted_sum
trainable=frozen
tag=
seed=0
sets="dev eval"            # which of the two sets to train and score
frozen=false               # true: no training, the pooled upstream features are the embeddings (a baseline)
dev_machines="ToyCar ToyTrain bearing fan gearbox slider valve"
eval_machines="ToyDrone ToyNscale ToyTank Vacuum bandsaw grinder shaker"
usage="usage: bash run.sh --dcase_root DIR [--ground_truth DIR] [--stage N] [--stop_stage N] [--sets 'dev eval']
       [--frozen true] [--upstream NAME] [--interface NAME] [--trainable frozen|all|top:K] [--tag TAG]
       [-- strata overrides]"
. ../utils/parse_options.sh
. ../utils/recipe.sh

if stage_on -1; then
    require_option dcase_root
    only() { local names=() m; for m in $2; do names+=("$1${m}$3"); done; local IFS=,; echo "${names[*]}"; }
    if [[ " ${sets} " == *" dev "* ]]; then
        log "Stage -1: development set into ${dcase_root}/dev_data/raw"
        python ../utils/download.py --list local/checksums.txt --only "$(only dev_ "${dev_machines}" "")" \
            --out "${dcase_root}/dev_data/raw" --extract
    fi
    if [[ " ${sets} " == *" eval "* ]]; then
        log "Stage -1: additional training and evaluation sets into ${dcase_root}/eval_data/raw"
        python ../utils/download.py --list local/checksums.txt \
            --only "$(only eval_data_ "${eval_machines}" _train),$(only eval_data_ "${eval_machines}" _test)" \
            --out "${dcase_root}/eval_data/raw" --extract
    fi
fi

if stage_on 0; then
    require_option dcase_root
    log "Stage 0: manifests of ${dcase_root} into ${data_dir}"
    python local/prepare.py --root "${dcase_root}" --out "${data_dir}" --seed "${seed}" \
        ${ground_truth:+--ground-truth "${ground_truth}"}
fi

task_args=()
if [ "${frozen}" = true ]; then
    tag=${tag:-frozen}; no_fit=true; task_args=(-- --model.task.init_args.embedding frozen)
fi
run=$(run_dir asd)
if stage_on 1 || stage_on 2; then
    for set in ${sets}; do
        require "${data_dir}/${set}_train.jsonl" 0
        if [ ! -f "${data_dir}/${set}_test.jsonl" ]; then
            log "no ${data_dir}/${set}_test.jsonl (evaluation clips not unpacked yet): skipping the ${set} set"
            continue
        fi
        log "Stages 1-2: the ${set} set with ${upstream}"
        fit_and_test "${run}/${set}" "${data_dir}/${set}_train.jsonl" \
            "${data_dir}/${set}_valid.jsonl" "${data_dir}/${set}_test.jsonl" \
            -- ../../recipes/configs/asd.yaml conf/asd.yaml ${task_args[@]+"${task_args[@]}"}
    done
fi

if stage_on 3; then
    log "Stage 3: per-machine AUC / pAUC and the official score (${run})"
    strata report "${run}"
fi
