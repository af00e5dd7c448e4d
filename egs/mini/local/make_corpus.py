"""Generate the mini corpus: espeak-ng speech of synthetic speakers in four emotions, 16 kHz, offline, in seconds.

    python local/make_corpus.py --out data/mini [--seed 0] [--num-speakers 24] [--utterances-per-speaker 16]

Writes `<out>/wav/<id>.wav`, `<out>/all.jsonl` (id, audio, duration, speaker, gender, emotion, text) and
`<out>/emotion/{train,valid,test}.jsonl`, whose speakers are disjoint so emotion is tested on unseen voices.
The speakers are a fixed table (a speaker name is the same voice for every seed); the seed picks the sentences,
the order of the emotions, the split and the noise, and the same seed gives the same manifests and audio bytes.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile
import torch
import torchaudio

SAMPLE_RATE = 16000
SNR_DB = 30.0
PEAK = 0.95
EMOTIONS = ("neu", "hap", "ang", "sad")

# Emotion as prosody relative to each speaker's own voice, in espeak-ng's SSML <prosody> (pitch and rate scale the
# speaker's -p and -s; range scales the pitch excursions, 0-200%). Each emotion sits apart from the others on
# more than one of pitch, range and rate, by more than speakers differ from each other (base pitch 35-65, rate
# 155-195 wpm), so it is learnable on unseen speakers even with loudness normalised away.
PROSODY: dict[str, dict[str, str]] = {
    "neu": {"pitch": "+0%", "range": "100%", "rate": "100%", "volume": "100%"},
    "hap": {"pitch": "+50%", "range": "200%", "rate": "115%", "volume": "120%"},
    "ang": {"pitch": "+15%", "range": "60%", "rate": "145%", "volume": "160%"},
    "sad": {"pitch": "-35%", "range": "25%", "rate": "70%", "volume": "60%"},
}

# espeak-ng voice variants (`espeak-ng --voices=variant`) whose gender is real: m* male, f* / steph female.
VARIANTS: dict[str, str] = {
    "m1": "male", "m2": "male", "m3": "male", "m4": "male", "m6": "male", "m7": "male",
    "f1": "female", "f2": "female", "f3": "female", "f4": "female", "f5": "female", "steph": "female",
}  # fmt: skip
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-029")
BASE_PITCHES = (35, 50, 65)  # espeak-ng -p, 0-99 (default 50)
BASE_RATES = (155, 175, 195)  # espeak-ng -s, words per minute (default 175)

# A small vocabulary repeated often, so a character CTC model can learn it from a few hundred utterances.
NAMES = ("anna", "ben", "clara", "david", "emma", "frank", "grace", "henry")
VERBS = ("found", "painted", "bought", "moved", "dropped", "carried", "washed", "sold")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange")
OBJECTS = ("boxes", "chairs", "apples", "books", "cups", "shoes", "stones", "letters")
PLACES = ("in the garden", "near the door", "on the table", "by the river")
TEMPLATES = (
    "{name} {verb} {number} {colour} {object}",
    "{name} {verb} {number} {colour} {object} {place}",
    "{name} and {other} {verb} the {colour} {object}",
    "the {colour} {object} are {place}",
)

ESPEAK_MISSING = (
    "espeak-ng is not installed; the mini corpus is synthesised with it. Install it with "
    "`sudo apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), then rerun."
)


@dataclass(frozen=True)
class Speaker:
    name: str
    accent: str  # espeak-ng language voice
    variant: str  # espeak-ng voice variant
    gender: str
    pitch: int  # espeak-ng -p
    rate: int  # espeak-ng -s

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def make_speakers(count: int) -> list[Speaker]:
    """`count` distinct voices: every variant in one accent, then the next accent, with base pitch and rate
    offsets on a grid staggered so that the two voices of one variant also differ in pitch and rate."""
    limit = len(ACCENTS) * len(VARIANTS)
    if not 3 <= count <= limit:
        raise ValueError(f"--num-speakers must be between 3 and {limit} (the voices this script knows), got {count}")
    speakers = []
    for index in range(count):
        round_, position = divmod(index, len(VARIANTS))
        variant = list(VARIANTS)[position]
        pitch = BASE_PITCHES[(position + round_) % len(BASE_PITCHES)]
        rate = BASE_RATES[(position // len(BASE_PITCHES) + 2 * round_) % len(BASE_RATES)]
        speakers.append(Speaker(f"spk{index:02d}", ACCENTS[round_], variant, VARIANTS[variant], pitch, rate))
    return speakers


def make_sentence(rng: np.random.Generator) -> str:
    """A 5-8 word sentence from the templates, lower case (espeak-ng may spell out upper-case words)."""
    name, other = rng.choice(NAMES, size=2, replace=False)
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(
        name=name, other=other, verb=rng.choice(VERBS), number=rng.choice(NUMBERS),
        colour=rng.choice(COLOURS), object=rng.choice(OBJECTS), place=rng.choice(PLACES),
    )  # fmt: skip


def synthesize(text: str, speaker: Speaker, emotion: str) -> torch.Tensor:
    """espeak-ng speech of `text` by `speaker` in `emotion` -> float32 `[S]` at 16 kHz."""
    prosody = dict(PROSODY[emotion])
    word_gap = prosody.pop("word_gap", 0)
    attributes = " ".join(f'{key}="{value}"' for key, value in prosody.items())
    ssml = f"<speak><prosody {attributes}>{escape(text)}</prosody></speak>"
    command = ["espeak-ng", "-m", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.rate)]
    command += ["-g", str(word_gap), "--stdout"]
    done = subprocess.run([*command, ssml], capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed on {speaker.voice} {text!r}: {done.stderr.decode().strip()}")
    # espeak-ng writes 22.05 kHz (its usual rate; read from the header) 16-bit mono.
    samples, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE)


def add_noise(wav: torch.Tensor, rng: np.random.Generator, snr_db: float = SNR_DB) -> torch.Tensor:
    """White noise `snr_db` below the utterance's power, then scaled down if needed to keep a peak margin."""
    power = float(wav.pow(2).mean().clamp_min(1e-10))
    noise = torch.from_numpy(rng.standard_normal(wav.numel(), dtype=np.float32))
    noisy = wav + noise * (power / 10 ** (snr_db / 10)) ** 0.5
    peak = float(noisy.abs().max())
    return noisy * (PEAK / peak) if peak > PEAK else noisy


def plan_utterances(
    speakers: Sequence[Speaker], per_speaker: int, rng: np.random.Generator
) -> list[tuple[str, Speaker, str, str]]:
    """(id, speaker, emotion, text) for every utterance: each emotion equally often per speaker, in random order."""
    plan = []
    for speaker in speakers:
        emotions = np.repeat(EMOTIONS, per_speaker // len(EMOTIONS))[rng.permutation(per_speaker)]
        for k, emotion in enumerate(emotions):
            plan.append((f"{speaker.name}_{emotion}_{k:03d}", speaker, str(emotion), make_sentence(rng)))
    return plan


def split_speakers(speakers: Sequence[Speaker], rng: np.random.Generator) -> dict[str, list[str]]:
    """Speaker-disjoint train / valid / test (1/6 of the speakers each for valid and test, at least one), with
    male and female voices alternating so every split mixes variants of both."""
    groups = [[s.name for s in speakers if s.gender == g] for g in ("male", "female")]
    groups = [[group[i] for i in rng.permutation(len(group))] for group in groups]
    order = [name for pair in zip(*groups, strict=False) for name in pair]
    order += [name for group in groups for name in group[len(order) // 2 :]]
    held_out = max(1, len(speakers) // 6)
    return {
        "train": sorted(order[2 * held_out :]),
        "valid": sorted(order[held_out : 2 * held_out]),
        "test": sorted(order[:held_out]),
    }


def write_jsonl(path: Path, entries: Sequence[dict]) -> None:
    """Written under a temporary name and renamed, so a killed run never leaves half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    os.replace(partial, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/mini")
    parser.add_argument("--seed", type=int, default=0, help="sentences, emotion order, split and noise")
    parser.add_argument("--num-speakers", type=int, default=24)
    parser.add_argument("--utterances-per-speaker", type=int, default=16, help="a multiple of 4, the emotions")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    args = parser.parse_args(argv)
    if args.utterances_per_speaker <= 0 or args.utterances_per_speaker % len(EMOTIONS):
        parser.error(f"--utterances-per-speaker must be a positive multiple of {len(EMOTIONS)} (one per emotion)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        raise SystemExit(ESPEAK_MISSING)
    try:
        speakers = make_speakers(args.num_speakers)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    plan = plan_utterances(speakers, args.utterances_per_speaker, rng)
    splits = split_speakers(speakers, rng)
    out: Path = args.out
    (out / "wav").mkdir(parents=True, exist_ok=True)

    def render(index: int) -> dict:
        utt_id, speaker, emotion, text = plan[index]
        # Its own generator from (seed, index): the noise does not depend on which thread ran first.
        wav = add_noise(synthesize(text, speaker, emotion), np.random.default_rng([args.seed, index]))
        path = out / "wav" / f"{utt_id}.wav"
        soundfile.write(path, wav.numpy(), SAMPLE_RATE, subtype="PCM_16")
        return {
            "id": utt_id,
            "audio": f"wav/{utt_id}.wav",
            "duration": round(soundfile.info(path).frames / SAMPLE_RATE, 3),
            "speaker": speaker.name,
            "gender": speaker.gender,
            "emotion": emotion,
            "text": text.upper(),  # the LibriSpeech convention for transcripts
        }

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        entries = list(pool.map(render, range(len(plan))))
    write_jsonl(out / "all.jsonl", entries)
    for split, names in splits.items():
        chosen = set(names)
        # Paths relative to the manifest's own folder, one level down.
        rows = [{**entry, "audio": f"../{entry['audio']}"} for entry in entries if entry["speaker"] in chosen]
        write_jsonl(out / "emotion" / f"{split}.jsonl", rows)
    minutes = sum(entry["duration"] for entry in entries) / 60
    sizes = "/".join(str(len(names)) for names in splits.values())
    print(
        f"mini corpus: {len(entries)} utterances, {minutes:.1f} min of audio, {len(speakers)} speakers "
        f"in {time.perf_counter() - started:.1f} s -> {out}/all.jsonl, {out}/emotion/{{train,valid,test}}.jsonl "
        f"({sizes} speakers)"
    )


if __name__ == "__main__":
    main()
