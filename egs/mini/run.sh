#!/usr/bin/env bash
# The mini corpus end to end on a laptop CPU, offline: generate the corpus, train and test each task for
# every upstream asked for, then print the results table. Stages: 0 corpus, 1 emotion, 2 speaker identification,
# 3 speaker verification, 4 speech recognition, 5 anomalous sound detection, 6 layer analysis, 7 pre-training a tiny
# HuBERT on the corpus audio and probing it against its random-initialised twin, 100 report.
#   bash run.sh                                  # everything, fbank and tiny_hubert (about forty minutes, 2 cores)
#   bash run.sh --demo true                      # what `make demo` runs: every task with fbank, one ASD run, a
#                                                # layer probe of tiny_hubert, the results table (<= 15 minutes)
#   bash run.sh --stage 1 --upstream wavlm_base_plus --interface hconv
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=100
upstream="fbank tiny_hubert"   # one or more upstreams (space-separated), see `strata upstreams`
interface=weighted_sum
trainable=frozen
seed=0
demo=false                     # true: every task once with fbank, the emotion probe of tiny_hubert, no pre-training
analysis_upstream=tiny_hubert  # stage 6: the upstream whose layers are analysed
pretrain_epochs=30             # stage 7: epochs of HuBERT pre-training (a few CPU minutes)
num_speakers=48           # 32 train / 8 valid / 8 test speakers for emotion and verification
utterances_per_speaker=8  # 2 per emotion
data_dir=data/mini
exp_dir=exp
usage="usage: bash run.sh [--stage N] [--stop_stage N] [--upstream 'A B'] [--interface NAME] [-- strata overrides]"
. ../utils/parse_options.sh
if [ "${demo}" = true ]; then
    # fbank is the one upstream that learns every task in CPU minutes (tiny_hubert is random-initialised); the
    # probe still needs a multi-layer model, so stage 6 probes tiny_hubert.
    upstream=fbank
fi

log() { echo "$(date '+%F %T') ($(basename "$0")) $*"; }
command -v strata > /dev/null || { echo "strata is not on PATH: run 'make install' and 'source .venv/bin/activate'" >&2; exit 1; }
require() {  # require FILE STAGE: a later stage needs an earlier one's output
    [ -f "$1" ] || { echo "$1 not found: run stage $2 first (bash run.sh --stage $2)" >&2; exit 1; }
}

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "Stage 0: generating the mini corpus with espeak-ng into ${data_dir}"
    python local/make_corpus.py --out "${data_dir}" --seed "${seed}" \
        --num-speakers "${num_speakers}" --utterances-per-speaker "${utterances_per_speaker}"
    log "Stage 0: generating the mini machine sounds (DCASE naming) into ${data_dir}/machines"
    python local/make_machines.py --out "${data_dir}" --seed "${seed}"
fi

# run_task TASK: fit (resuming from the last checkpoint) and test TASK with conf/TASK.yaml on data/mini/TASK/ for
# every upstream, skipping runs whose results.json exists; arguments after TASK go to `strata test` only (e.g. the
# trials). A variant of the task sets `task_args` (overrides for fit and test) and `suffix` (appended to the run
# folder's name).
task_args=()
suffix=
run_task() {
    local task=$1; shift
    require "${data_dir}/${task}/train.jsonl" 0
    for up in ${upstream}; do
        local run_dir="${exp_dir}/${task}/${up//[:\/]/_}_${interface}${suffix}"
        if [ -f "${run_dir}/results.json" ]; then
            log "already done: ${run_dir}/results.json (delete it to run again)"
            continue
        fi
        log "${task} with ${up} (${interface}, ${trainable}) -> ${run_dir}"
        local started=${SECONDS}
        local common=(--config "conf/${task}.yaml" --seed_everything "${seed}"
            --model.upstream.name "${up}" --model.upstream.trainable "${trainable}"
            --model.interface.name "${interface}" --trainer.default_root_dir "${run_dir}" "${task_args[@]}")
        strata fit "${common[@]}" --data.train "${data_dir}/${task}/train.jsonl" \
            --data.valid "${data_dir}/${task}/valid.jsonl" --ckpt_path last "${extra_args[@]}"
        strata test "${common[@]}" --data.test "${data_dir}/${task}/test.jsonl" --ckpt_path best "$@" "${extra_args[@]}"
        log "${task} with ${up}: $((SECONDS - started)) s"
    done
}

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "Stage 1: emotion recognition (speaker-disjoint splits)"
    run_task emotion
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "Stage 2: speaker identification (every speaker, disjoint utterances)"
    run_task speaker_id
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "Stage 3: speaker verification (held-out test speakers, trials from stage 0)"
    require "${data_dir}/speaker_verification/trials.txt" 0
    run_task speaker_verification --data.trials "${data_dir}/speaker_verification/trials.txt"
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    log "Stage 4: speech recognition (CTC over characters, unseen test speakers)"
    run_task asr
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    log "Stage 5: anomalous sound detection (trained embedding, with FeatEx, then frozen pooled features)"
    run_task asd --data.train "${data_dir}/asd/train.jsonl"
    if [ "${demo}" != true ]; then
        task_args=(--model.task.init_args.embedding featex); suffix=_featex
        run_task asd --data.train "${data_dir}/asd/train.jsonl"
        task_args=(); suffix=
        for up in ${upstream}; do
            run_dir="${exp_dir}/asd/${up//[:\/]/_}_${interface}_frozen"
            log "asd frozen embeddings of ${up} (no training) -> ${run_dir}"
            strata test --config conf/asd.yaml --seed_everything "${seed}" --model.upstream.name "${up}" \
                --model.interface.name "${interface}" --model.task.init_args.embedding frozen \
                --trainer.default_root_dir "${run_dir}" --data.train "${data_dir}/asd/train.jsonl" \
                --data.test "${data_dir}/asd/test.jsonl" "${extra_args[@]}"
        done
    fi
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    up=${analysis_upstream}
    name=${up//[:\/]/_}
    cache="${exp_dir}/cache/${name}"
    out="${exp_dir}/analysis/${name}"
    require "${data_dir}/all.jsonl" 0
    log "Stage 6: layer analysis of ${up}: every layer of every utterance cached once -> ${cache}"
    strata extract --upstream "${up}" --manifest "${data_dir}/all.jsonl" --out "${cache}" --dtype float32
    probe_tasks="emotion speaker_id"
    [ "${demo}" = true ] && probe_tasks=emotion
    for task in ${probe_tasks}; do
        log "probe: which layers of ${up} hold the ${task} label -> ${out}/probe_${task}"
        strata probe --cache "${cache}" --task "${task}" --train "${data_dir}/${task}/train.jsonl" \
            --test "${data_dir}/${task}/test.jsonl" --out "${out}/probe_${task}"
    done
    if [ "${demo}" != true ]; then
        log "CCA of each layer with log-mel -> ${out}/cca"
        strata analyze cca --cache "${cache}" --reference mel --out "${out}/cca"
        log "mutual information of 32-means clusters with the speaker -> ${out}/mi_speaker"
        strata analyze mi --cache "${cache}" --labels speaker --clusters 32 --out "${out}/mi_speaker"
        runs=()
        for task in emotion speaker_id; do
            [ -f "${exp_dir}/${task}/${name}_weighted_sum/checkpoints/best.ckpt" ] \
                && runs+=("${exp_dir}/${task}/${name}_weighted_sum")
        done
        if [ ${#runs[@]} -gt 0 ]; then
            log "learned layer weights of ${runs[*]} -> ${out}/weights"
            strata weights "${runs[@]}" --out "${out}/weights"
        else
            log "no weighted_sum runs of ${up} under ${exp_dir} yet (stages 1-2): no layer-weight plot"
        fi
    fi
    log "Stage 6 wrote: $(find "${out}" -name '*.csv' -o -name '*.png' | sort | tr '\n' ' ')"
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ] && [ "${demo}" != true ]; then
    require "${data_dir}/all.jsonl" 0
    pretrained="${exp_dir}/pretrain/tiny_hubert_it1"
    twin="${exp_dir}/pretrain/tiny_hubert_random"
    log "Stage 7: pre-training a tiny HuBERT on the corpus audio (MFCC k-means targets; labels unused) -> ${pretrained}"
    strata pretrain --config ../../recipes/configs/pretrain_tiny.yaml --data.train "${data_dir}/all.jsonl" \
        --trainer.max_epochs "${pretrain_epochs}" --trainer.default_root_dir "${pretrained}" --ckpt_path last
    log "its random-initialised twin: the same model and seed, no training -> ${twin}"
    strata pretrain --config ../../recipes/configs/pretrain_tiny.yaml --data.train "${data_dir}/all.jsonl" \
        --trainer.max_epochs 0 --trainer.default_root_dir "${twin}"
    for model in "${pretrained}" "${twin}"; do
        cache="${model}/cache"
        strata extract --upstream "hf:${model}/upstream" --manifest "${data_dir}/all.jsonl" --out "${cache}" \
            --dtype float32
        for task in emotion speaker_id; do
            strata probe --cache "${cache}" --task "${task}" --train "${data_dir}/${task}/train.jsonl" \
                --test "${data_dir}/${task}/test.jsonl" --out "${model}/probe_${task}"
        done
    done
    log "Stage 7: best-layer probe scores, pre-trained against random twin"
    strata report "${exp_dir}/pretrain"
fi

if [ "${stage}" -le 100 ] && [ "${stop_stage}" -ge 100 ]; then
    log "Stage 100: results of every run under ${exp_dir}"
    strata report "${exp_dir}"
fi
