#!/usr/bin/env bash
# IEMOCAP emotion recognition, the SUPERB ER protocol: four classes (neu, hap + exc, ang, sad), five
# leave-one-session-out folds, unweighted (UA) and weighted (WA) accuracy averaged over the folds.
# Stages: -1 download (IEMOCAP is licensed: says where to request it), 0 prepare manifests, 1 fit, 2 test,
# 3 report (per fold and mean).
#   bash run.sh --iemocap_root /data/IEMOCAP_full_release
#   bash run.sh --stage 1 --upstream wavlm_base_plus --interface hconv -- --trainer.max_epochs 10
#   bash run.sh --stage 1 --system morais          # Morais et al. 2022: fine-tuned, ECAPA, the 5 best averaged
#   bash run.sh --stage 1 --adversary 0.001 --upstream hubert_large_ll60k --trainable all   # Gat et al. 2022
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=3
iemocap_root=              # the IEMOCAP_full_release folder (Session1 ... Session5)
data_dir=data/iemocap
exp_dir=exp
upstream=hubert_base
interface=weighted_sum
trainable=frozen
tag=
seed=0
folds="1 2 3 4 5"
valid_fraction=0.1         # of each emotion in the four training sessions, held out to validate
system=superb              # superb: recipes/configs/emotion.yaml; morais: emotion_morais.yaml (fine-tuned upstream,
                           # ECAPA aggregator, the average of the 5 best checkpoints tested; trainable all, tag morais)
pooling=                   # mean, mean_std, attentive_stats or ecapa instead of the system's
average_best=              # keep the K best checkpoints and test their average (0: best.ckpt)
adversary=                 # lambda of a speaker adversary behind gradient reversal (Gat et al.), e.g. 0.001
usage="usage: bash run.sh --iemocap_root DIR [--stage N] [--stop_stage N] [--upstream NAME] [--interface NAME]
       [--trainable frozen|all|top:K] [--tag TAG] [--folds '1 2 3 4 5'] [--system superb|morais] [--pooling NAME]
       [--average_best K] [--adversary LAMBDA] [-- strata overrides]"
. ../utils/parse_options.sh
. ../utils/recipe.sh

configs=(../../recipes/configs/emotion.yaml)
task_args=()
test_args=()
case "${system}" in
    superb) ;;
    morais)
        configs=(../../recipes/configs/emotion_morais.yaml)
        trainable=all
        [ -n "${tag}" ] || tag=morais
        [ -n "${average_best}" ] || average_best=5 ;;
    *) echo "run.sh: --system must be superb or morais, got ${system}" >&2; exit 1 ;;
esac
configs+=(conf/emotion.yaml)
if [ -n "${pooling}" ]; then
    task_args+=(--model.task.init_args.pooling "${pooling}")
    tag="${tag:+${tag}_}${pooling}"
fi
if [ -n "${average_best}" ]; then
    task_args+=(--average_best "${average_best}")
    if [ "${average_best}" -gt 0 ]; then test_args+=(--ckpt_path averaged); fi
fi
if [ -n "${adversary}" ]; then
    # The speakers come from the training manifest; fit and test get the same options (the head has the adversary).
    task_args+=(--model.task.init_args.speaker_adversary "{\"weight\": ${adversary}}")
    tag="${tag:+${tag}_}adv${adversary}"
fi

if stage_on -1; then
    log "Stage -1: IEMOCAP cannot be downloaded by a script: request it at https://sail.usc.edu/iemocap/ (a licence"
    log "agreement), unpack IEMOCAP_full_release.tar.gz and pass --iemocap_root <folder>/IEMOCAP_full_release"
fi

if stage_on 0; then
    require_option iemocap_root
    log "Stage 0: manifests of ${iemocap_root} into ${data_dir} (5 folds)"
    python local/prepare.py --root "${iemocap_root}" --out "${data_dir}" --seed "${seed}" \
        --valid-fraction "${valid_fraction}"
fi

run=$(run_dir emotion)
if stage_on 1 || stage_on 2; then
    for k in ${folds}; do
        fold="${data_dir}/fold${k}"
        require "${fold}/train.jsonl" 0
        log "Stages 1-2: fold ${k} (test on Session ${k}) with ${upstream}"
        fit_and_test "${run}/fold${k}" "${fold}/train.jsonl" "${fold}/valid.jsonl" \
            "${fold}/test.jsonl" -- "${configs[@]}" -- ${task_args[@]+"${task_args[@]}"} \
            -- ${test_args[@]+"${test_args[@]}"}
    done
fi

if stage_on 3; then
    log "Stage 3: UA / WA per fold and their mean (${run})"
    python local/mean_over_folds.py "${run}"
fi
