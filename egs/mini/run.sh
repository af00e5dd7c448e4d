#!/usr/bin/env bash
# The mini corpus end to end on a laptop CPU, offline: generate the corpus, train and test each task for
# every upstream asked for, then print the results table.
#   bash run.sh                                  # everything, fbank and tiny_hubert
#   bash run.sh --stage 1 --upstream wavlm_base_plus --interface hconv
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=100
upstream="fbank tiny_hubert"   # one or more upstreams (space-separated), see `strata upstreams`
interface=weighted_sum
trainable=frozen
seed=0
num_speakers=48           # 32 train / 8 valid / 8 test speakers for emotion
utterances_per_speaker=8  # 2 per emotion
data_dir=data/mini
exp_dir=exp
usage="usage: bash run.sh [--stage N] [--stop_stage N] [--upstream 'A B'] [--interface NAME] [-- strata overrides]"
. ../utils/parse_options.sh

log() { echo "$(date '+%F %T') ($(basename "$0")) $*"; }
command -v strata > /dev/null || { echo "strata is not on PATH: run 'make install' and 'source .venv/bin/activate'" >&2; exit 1; }
require() {  # require FILE STAGE: a later stage needs an earlier one's output
    [ -f "$1" ] || { echo "$1 not found: run stage $2 first (bash run.sh --stage $2)" >&2; exit 1; }
}

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
    log "Stage 0: generating the mini corpus with espeak-ng into ${data_dir}"
    python local/make_corpus.py --out "${data_dir}" --seed "${seed}" \
        --num-speakers "${num_speakers}" --utterances-per-speaker "${utterances_per_speaker}"
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    require "${data_dir}/emotion/train.jsonl" 0
    for up in ${upstream}; do
        run_dir="${exp_dir}/emotion/${up//[:\/]/_}_${interface}"
        log "Stage 1: emotion with ${up} (${interface}, ${trainable}) -> ${run_dir}"
        common=(--config conf/emotion.yaml --seed_everything "${seed}"
            --model.upstream.name "${up}" --model.upstream.trainable "${trainable}"
            --model.interface.name "${interface}" --trainer.default_root_dir "${run_dir}")
        strata fit "${common[@]}" --data.train "${data_dir}/emotion/train.jsonl" \
            --data.valid "${data_dir}/emotion/valid.jsonl" --ckpt_path last "${extra_args[@]}"
        strata test "${common[@]}" --data.test "${data_dir}/emotion/test.jsonl" --ckpt_path best "${extra_args[@]}"
    done
fi

if [ "${stage}" -le 100 ] && [ "${stop_stage}" -ge 100 ]; then
    log "Stage 100: results of every run under ${exp_dir}"
    strata report "${exp_dir}"
fi
