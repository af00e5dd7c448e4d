#!/usr/bin/env bash
# VoxCeleb1 speaker identification (SUPERB SID: accuracy over 1,251 speakers) and speaker verification
# (VoxCeleb1-O cleaned: EER, minDCF), on one tree holding wav/<speaker>/<video>/<NNNNN>.wav.
# Stages: -1 download the public lists (the audio needs VoxCeleb's request form), 0 prepare manifests,
# 1 fit, 2 test, 3 report.
#   bash run.sh --voxceleb1_root /data/VoxCeleb1
#   bash run.sh --stage 1 --tasks sv --upstream wavlm_base_plus
set -euo pipefail
cd "$(dirname "$0")"

stage=-1
stop_stage=3
voxceleb1_root=            # holds wav/ (dev and test unpacked together); the lists go there too
data_dir=data/voxceleb1
exp_dir=exp
upstream=hubert_base
interface=weighted_sum
trainable=frozen
tag=
seed=0
tasks="sid sv"             # speaker identification, speaker verification, or both
sv_valid_speakers=20       # training speakers held out to validate verification
usage="usage: bash run.sh --voxceleb1_root DIR [--stage N] [--stop_stage N] [--tasks 'sid sv'] [--upstream NAME]
       [--interface NAME] [--trainable frozen|all|top:K] [--tag TAG] [-- strata overrides]"
. ../utils/parse_options.sh
. ../utils/recipe.sh

if stage_on -1; then
    require_option voxceleb1_root
    log "Stage -1: the public lists iden_split.txt and veri_test2.txt into ${voxceleb1_root}"
    python ../utils/download.py --list local/checksums.txt --out "${voxceleb1_root}"
    [ -d "${voxceleb1_root}/wav" ] || log "the audio is not there yet: request VoxCeleb1 at" \
        "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/ and unpack the dev and test wav/ into ${voxceleb1_root}/wav"
fi

if stage_on 0; then
    require_option voxceleb1_root
    log "Stage 0: manifests (${tasks}) of ${voxceleb1_root} into ${data_dir}"
    python local/prepare.py --root "${voxceleb1_root}" --out "${data_dir}" --tasks "${tasks// /,}" --seed "${seed}" \
        --sv-valid-speakers "${sv_valid_speakers}"
fi

for task in ${tasks}; do
    if stage_on 1 || stage_on 2; then
        if [ "${task}" = sid ]; then
            require "${data_dir}/sid/train.jsonl" 0
            log "Stages 1-2: speaker identification with ${upstream}"
            run=$(run_dir speaker_id)
            fit_and_test "${run}" "${data_dir}/sid/train.jsonl" "${data_dir}/sid/valid.jsonl" \
                "${data_dir}/sid/test.jsonl" -- ../../recipes/configs/speaker_id.yaml conf/speaker_id.yaml
        else
            require "${data_dir}/sv/trials.txt" 0
            log "Stages 1-2: speaker verification with ${upstream}"
            run=$(run_dir speaker_verification)
            fit_and_test "${run}" "${data_dir}/sv/train.jsonl" \
                "${data_dir}/sv/valid.jsonl" "${data_dir}/sv/test.jsonl" \
                -- ../../recipes/configs/speaker_verification.yaml conf/speaker_verification.yaml \
                -- --data.trials "${data_dir}/sv/trials.txt"
        fi
    fi
done

if stage_on 3; then
    log "Stage 3: results under ${exp_dir}"
    strata report "${exp_dir}"
fi
