#!/usr/bin/env bash
# The mini corpus end to end on a laptop CPU, offline: generate the corpus, train and test each task for
# every upstream asked for, then print the results table. Stages: 0 corpus, 1 emotion, 2 speaker identification,
# 3 speaker verification, 4 speech recognition, 5 anomalous sound detection, 6 layer analysis, 7 pre-training a tiny
# HuBERT on the corpus audio and probing it against its random-initialised twin, 8 exporting each task's run of the
# first upstream and predicting its test set with the export, 9 pre-training a tiny TERA and distilling stage 7's
# HuBERT into a 2-layer student, all four probed side by side (and the student's speed against its teacher's),
# 100 report.
#   bash run.sh                                  # everything, fbank and tiny_hubert (about fifty minutes, 2 cores)
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
tag=
seed=0
demo=false                     # true: every task once with fbank, the emotion probe of tiny_hubert, no pre-training
analysis_upstream=tiny_hubert  # stage 6: the upstream whose layers are analysed
pretrain_epochs=30             # stage 7: epochs of HuBERT pre-training (a few CPU minutes)
tera_epochs=30                 # stage 9: epochs of TERA pre-training
distill_epochs=30              # stage 9: epochs of distillation
num_speakers=48           # 32 train / 8 valid / 8 test speakers for emotion and verification
utterances_per_speaker=8  # 2 per emotion
data_dir=data/mini
exp_dir=exp
usage="usage: bash run.sh [--stage N] [--stop_stage N] [--demo true] [--upstream 'A B'] [--interface NAME]
       [--trainable frozen|all|top:K] [--tag TAG] [-- strata overrides]"
. ../utils/parse_options.sh
. ../utils/recipe.sh
if [ "${demo}" = true ]; then
    # fbank is the one upstream that learns every task in CPU minutes (tiny_hubert is random-initialised); the
    # probe still needs a multi-layer model, so stage 6 probes tiny_hubert.
    upstream=fbank
fi

if stage_on 0; then
    log "Stage 0: generating the mini corpus with espeak-ng into ${data_dir}"
    python local/make_corpus.py --out "${data_dir}" --seed "${seed}" \
        --num-speakers "${num_speakers}" --utterances-per-speaker "${utterances_per_speaker}"
    log "Stage 0: generating the mini machine sounds (DCASE naming) into ${data_dir}/machines"
    python local/make_machines.py --out "${data_dir}" --seed "${seed}"
fi

# run_task N TASK [TEST OVERRIDES...]: stage N fits and tests TASK with conf/TASK.yaml on ${data_dir}/TASK/ for every
# upstream, through recipe.sh's fit_and_test (a killed fit resumes, a run whose results.json exists is skipped); the
# overrides go to `strata test` only (e.g. the trials). A variant of the task sets `task_args` (overrides for fit and
# test) and `variant` (appended to the run folder's name: run_dir TASK VARIANT).
task_args=()
variant=
run_task() {
    local fit_stage=$1 test_stage=$1 task=$2; shift 2
    require "${data_dir}/${task}/train.jsonl" 0
    local upstreams=${upstream} upstream run  # recipe.sh's helpers read ${upstream}: one upstream at a time
    for upstream in ${upstreams}; do
        run=$(run_dir "${task}" "${variant}")
        log "${task} with ${upstream} (${interface}, ${trainable}) -> ${run}"
        fit_and_test "${run}" "${data_dir}/${task}/train.jsonl" "${data_dir}/${task}/valid.jsonl" \
            "${data_dir}/${task}/test.jsonl" -- "conf/${task}.yaml" -- ${task_args[@]+"${task_args[@]}"} -- "$@"
    done
}

if stage_on 1; then
    log "Stage 1: emotion recognition (speaker-disjoint splits)"
    run_task 1 emotion
fi

if stage_on 2; then
    log "Stage 2: speaker identification (every speaker, disjoint utterances)"
    run_task 2 speaker_id
fi

if stage_on 3; then
    log "Stage 3: speaker verification (held-out test speakers, trials from stage 0)"
    require "${data_dir}/speaker_verification/trials.txt" 0
    run_task 3 speaker_verification --data.trials "${data_dir}/speaker_verification/trials.txt"
fi

if stage_on 4; then
    log "Stage 4: speech recognition (CTC over characters, unseen test speakers)"
    run_task 4 asr
fi

if stage_on 5; then
    log "Stage 5: anomalous sound detection (trained embedding, with FeatEx, then frozen pooled features)"
    run_task 5 asd
    if [ "${demo}" != true ]; then
        task_args=(--model.task.init_args.embedding featex); variant=featex
        run_task 5 asd
        # the frozen upstream's pooled features scored directly: nothing to train, whatever --trainable says
        task_args=(--model.task.init_args.embedding frozen); variant=frozen; no_fit=true
        trainable=frozen run_task 5 asd
        task_args=(); variant=; no_fit=false
    fi
fi

if stage_on 6; then
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
            run=$(upstream=${up} interface=weighted_sum run_dir "${task}")
            [ -f "${run}/checkpoints/best.ckpt" ] && runs+=("${run}")
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

# probe_model SOURCE FOLDER: every layer of the upstream SOURCE cached once in FOLDER/cache, then a linear probe of
# the emotion and the speaker of each layer (FOLDER/probe_<task>; its best layer is a results.json)
probe_model() {
    local source=$1 model=$2
    strata extract --upstream "${source}" --manifest "${data_dir}/all.jsonl" --out "${model}/cache" --dtype float32
    for task in emotion speaker_id; do
        strata probe --cache "${model}/cache" --task "${task}" --train "${data_dir}/${task}/train.jsonl" \
            --test "${data_dir}/${task}/test.jsonl" --out "${model}/probe_${task}"
    done
}

if stage_on 7 && [ "${demo}" != true ]; then
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
        probe_model "hf:${model}/upstream" "${model}"
    done
    log "Stage 7: best-layer probe scores, pre-trained against random twin"
    strata report "${exp_dir}/pretrain"
fi

if stage_on 8; then
    up=${upstream%% *}
    log "Stage 8: each task's ${up} run exported (model folder + card) and run on its test set with strata predict"
    for task in emotion speaker_id speaker_verification asr asd; do
        run=$(upstream=${up} run_dir "${task}")
        if [ ! -f "${run}/results.json" ]; then
            log "no tested ${run} (stages 1-5): nothing to export"
            continue
        fi
        export_dir="${exp_dir}/exports/${task}/$(basename "${run}")"
        strata export "${run}" --out "${export_dir}" --force
        strata predict "${export_dir}" --manifest "${data_dir}/${task}/test.jsonl" \
            --out "${export_dir}/test_predictions.jsonl"
        [ -f "${export_dir}/test_predictions.jsonl" ] && head -n 2 "${export_dir}/test_predictions.jsonl" | cut -c 1-200
    done
fi

if stage_on 9 && [ "${demo}" != true ]; then
    require "${data_dir}/all.jsonl" 0
    teacher="${exp_dir}/pretrain/tiny_hubert_it1"
    tera="${exp_dir}/pretrain/tera_tiny"
    student="${exp_dir}/pretrain/distilled_tiny_hubert"
    log "Stage 9: pre-training a tiny TERA (log-mel reconstruction from altered copies) -> ${tera}"
    strata pretrain --config ../../recipes/configs/pretrain_tera_tiny.yaml --data.train "${data_dir}/all.jsonl" \
        --trainer.max_epochs "${tera_epochs}" --trainer.default_root_dir "${tera}" --ckpt_path last
    log "distilling ${teacher} into a 2-layer student (the teacher's layers read from its stage-7 cache) -> ${student}"
    strata distill --config ../../recipes/configs/distill_tiny.yaml --model.teacher "hf:${teacher}/upstream" \
        --data.train "${data_dir}/all.jsonl" --data.teacher_cache "${teacher}/cache" \
        --trainer.max_epochs "${distill_epochs}" --trainer.default_root_dir "${student}" --ckpt_path last
    probe_model "tera:${tera}/upstream" "${tera}"
    probe_model "hf:${student}/upstream" "${student}"
    log "best-layer probes of the random twin, the HuBERT, TERA and the student -> ${exp_dir}/pretrain/compare"
    strata compare "${exp_dir}/pretrain/tiny_hubert_random" "${teacher}" "${tera}" "${student}" \
        --out "${exp_dir}/pretrain/compare"
    log "forward time of the student against its teacher"
    strata speed "hf:${student}/upstream" "hf:${teacher}/upstream"
fi

if stage_on 100; then
    log "Stage 100: results of every run under ${exp_dir}"
    strata report "${exp_dir}"
fi
