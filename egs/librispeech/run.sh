#!/usr/bin/env bash
# LibriSpeech speech recognition, the SUPERB ASR protocol: train on train-clean-100, validate on dev-clean, WER on
# test-clean and test-other.
# Stages: -1 download and unpack the OpenSLR 12 archives (resumable, checksummed), 0 prepare manifests, 1 fit,
# 2 test, 3 report.
#   bash run.sh --librispeech_root /data            # downloads into /data/LibriSpeech, then everything
#   bash run.sh --stage 1 --upstream wavlm_base_plus -- --model.task.init_args.token_type bpe
set -euo pipefail
cd "$(dirname "$0")"

stage=-1
stop_stage=3
librispeech_root=          # the folder holding LibriSpeech/ (or that the archives are downloaded into)
data_dir=data/librispeech
exp_dir=exp
upstream=hubert_base
interface=weighted_sum
trainable=frozen
tag=
seed=0
train_set=train-clean-100
valid_set=dev-clean
test_sets="test-clean test-other"
usage="usage: bash run.sh --librispeech_root DIR [--stage N] [--stop_stage N] [--upstream NAME] [--interface NAME]
       [--trainable frozen|all|top:K] [--tag TAG] [--train_set NAME] [-- strata overrides]"
. ../utils/parse_options.sh
. ../utils/recipe.sh

splits="${train_set} ${valid_set} ${test_sets}"
if stage_on -1; then
    require_option librispeech_root
    log "Stage -1: downloading ${splits} into ${librispeech_root} (resumes; checksums from local/checksums.txt)"
    python ../utils/download.py --list local/checksums.txt --only "${splits// /,}" --out "${librispeech_root}" --extract
fi

if stage_on 0; then
    require_option librispeech_root
    log "Stage 0: manifests of ${splits} into ${data_dir}"
    python local/prepare.py --root "${librispeech_root}" --out "${data_dir}" --splits "${splits// /,}"
fi

run=$(run_dir asr)
if stage_on 1 || stage_on 2; then
    require "${data_dir}/${train_set}.jsonl" 0
    tests=""
    for test in ${test_sets}; do tests+=" ${data_dir}/${test}.jsonl"; done
    log "Stages 1-2: CTC on ${train_set} with ${upstream}; WER on ${test_sets}"
    fit_and_test "${run}" "${data_dir}/${train_set}.jsonl" "${data_dir}/${valid_set}.jsonl" \
        "${tests}" -- ../../recipes/configs/asr.yaml conf/asr.yaml
fi

if stage_on 3; then
    log "Stage 3: results under ${exp_dir}"
    strata report "${exp_dir}"
fi
