"""Generate the mini corpus: espeak-ng speech of synthetic speakers in four emotions, 16 kHz, offline, in seconds.

    python local/make_corpus.py --out data/mini [--seed 0] [--num-speakers 24] [--utterances-per-speaker 16]

Writes `<out>/wav/<id>.wav`, `<out>/all.jsonl` (id, audio, duration, speaker, gender, emotion, text) and, with
the same fields and audio paths relative to their own folder (`../wav/<id>.wav`):
- `<out>/emotion/{train,valid,test}.jsonl`, whose speakers are disjoint so emotion is tested on unseen voices;
- `<out>/speaker_id/{train,valid,test}.jsonl`, every speaker in all three, 1/8 of each speaker's utterances
  (at least one) in valid and 1/8 in test: closed-set identification of the voices heard in training;
- `<out>/speaker_verification/{train,valid,test}.jsonl`, the emotion split's speakers, and `trials.txt` /
  `valid_trials.txt`: balanced `<1|0> <enroll id> <test id>` trials among the test / valid utterances;
- `<out>/asr/{train,valid,test}.jsonl`, the emotion split's speakers again: recognition of unseen voices.
The speakers are a fixed table (a speaker name is the same voice for every seed); the seed picks the sentences,
the order of the emotions, the splits, the trials and the noise, and the same seed gives the same manifests,
trials and audio bytes.
"""

import argparse
import io
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

from recipes.data import write_jsonl
from recipes.trials import make_trials, write_trials

SAMPLE_RATE = 16000
SNR_DB = 30.0
PEAK = 0.95
EMOTIONS = ("neu", "hap", "ang", "sad")
TRIALS = {"valid": "valid_trials.txt", "test": "trials.txt"}  # speaker_verification/, the VoxCeleb-style lists


@dataclass(frozen=True)
class Prosody:
    """One emotion's delivery relative to each speaker's own voice: espeak-ng's -p, then SSML for the rest."""

    pitch: int  # steps added to the speaker's -p (0-99; a step is about 1% of F0, so the same ratio for everyone)
    range: str  # <prosody range>: the pitch excursions, 0-200%
    rate: str  # <prosody rate>: scales the speaker's -s
    volume: str  # <prosody volume>; espeak-ng limits loud speech, so emphasis adds more than volume
    emphasis: str | None = None  # <emphasis level>: every word stressed, longer and louder
    end: str = ""  # final punctuation, which picks espeak-ng's intonation tune ("!" exclamatory)
    tilt: float = 0.0  # vocal effort as spectral tilt, y[n] = x[n] - tilt x[n-1]: > 0 brighter (tense), < 0 duller


# Each emotion differs from its neighbours in at least two of pitch, range and rate, by more than speakers differ
# (base pitch 44-56, rate 160-190 wpm), so it is learnable on unseen speakers without loudness. Pitch steps are on
# the -p scale, not SSML percentages: a percentage of -p is a different F0 ratio for every speaker. The tilt
# (vocal effort: anger > happiness > neutral > sadness) gives a cue that a model which normalises away loudness
# and hardly resolves pitch (a random-initialised HuBERT) still sees. Seeds 0-5, 24 x 16 utterances, fbank
# mean+std and logistic regression, UA on the test speakers: >= 0.98; on unit-variance waveforms, >= 0.94.
PROSODY: dict[str, Prosody] = {
    "neu": Prosody(pitch=0, range="100%", rate="100%", volume="100%"),
    "hap": Prosody(pitch=40, range="200%", rate="110%", volume="130%", end="!", tilt=0.5),
    "ang": Prosody(pitch=20, range="50%", rate="170%", volume="120%", emphasis="strong", end="!", tilt=0.9),
    "sad": Prosody(pitch=-30, range="0%", rate="65%", volume="55%", tilt=-0.9),
}

# espeak-ng voice variants (`espeak-ng --voices=variant`) whose gender is real, each with the -p offset that brings
# its neutral pitch near its gender's (about 100 Hz male, 200 Hz female): the variants alone spread 94-228 Hz,
# wider than an emotion's step, and an emotion must outweigh the speaker. Left out: the whisper voices (no pitch to
# carry emotion) and steph (its fixed EQ and narrow range read as an emotion).
VARIANTS: dict[str, tuple[str, int]] = {
    "m1": ("male", 7), "m2": ("male", 0), "m3": ("male", -5), "m4": ("male", 6), "m6": ("male", 0), "m7": ("male", -6),
    "f1": ("female", 11), "f2": ("female", 2), "f3": ("female", -6), "f4": ("female", 10), "f5": ("female", -3),
    "linda": ("female", -14),
}  # fmt: skip
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-029")
BASE_PITCHES = (44, 50, 56)  # espeak-ng -p, 0-99 (default 50): small, so emotion outweighs it
BASE_RATES = (160, 175, 190)  # espeak-ng -s, words per minute (default 175)

# A small vocabulary repeated often, so a character CTC model can learn it from a few hundred utterances.
NAMES = ("anna", "ben", "clara", "david", "emma", "frank", "grace", "henry")
VERBS = ("found", "painted", "bought", "moved", "dropped", "carried", "washed", "sold")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange")
OBJECTS = ("boxes", "chairs", "apples", "books", "cups", "shoes", "stones", "letters")
PLACES = ("in the garden", "near the door", "on the table", "by the river")
TEMPLATES = (
    "{name} {verb} the {colour} {object}",
    "{name} {verb} {number} {colour} {object}",
    "{name} and {other} {verb} {number} {object}",
    "{name} {verb} {number} {object} {place}",
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
        gender, offset = VARIANTS[variant]
        pitch = BASE_PITCHES[(position + round_) % len(BASE_PITCHES)] + offset
        rate = BASE_RATES[(position // len(BASE_PITCHES) + 2 * round_) % len(BASE_RATES)]
        speakers.append(Speaker(f"spk{index:02d}", ACCENTS[round_], variant, gender, pitch, rate))
    return speakers


def make_sentence(rng: np.random.Generator) -> str:
    """A 5-7 word sentence from the templates, lower case (espeak-ng may spell out upper-case words)."""
    name, other = rng.choice(NAMES, size=2, replace=False)
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(
        name=name, other=other, verb=rng.choice(VERBS), number=rng.choice(NUMBERS),
        colour=rng.choice(COLOURS), object=rng.choice(OBJECTS), place=rng.choice(PLACES),
    )  # fmt: skip


def to_ssml(text: str, emotion: str) -> str:
    p = PROSODY[emotion]
    body = escape(text) + p.end
    if p.emphasis:
        body = f'<emphasis level="{p.emphasis}">{body}</emphasis>'
    attributes = f'range="{p.range}" rate="{p.rate}" volume="{p.volume}"'
    return f"<speak><prosody {attributes}>{body}</prosody></speak>"


def synthesize(text: str, speaker: Speaker, emotion: str) -> torch.Tensor:
    """espeak-ng speech of `text` by `speaker` in `emotion` -> float32 `[S]` at 16 kHz."""
    pitch = min(max(speaker.pitch + PROSODY[emotion].pitch, 0), 99)
    command = ["espeak-ng", "-m", "-v", speaker.voice, "-p", str(pitch), "-s", str(speaker.rate), "--stdout"]
    done = subprocess.run([*command, to_ssml(text, emotion)], capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed on {speaker.voice} {text!r}: {done.stderr.decode().strip()}")
    # 16-bit mono at espeak-ng's own rate (22.05 kHz), read from the header.
    samples, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    wav = apply_tilt(torch.from_numpy(samples), PROSODY[emotion].tilt)
    return torchaudio.functional.resample(wav, rate, SAMPLE_RATE)


def apply_tilt(wav: torch.Tensor, tilt: float) -> torch.Tensor:
    """First-order spectral tilt of `wav [S]`, at the same RMS: it changes the voice's colour, not its loudness."""
    if tilt == 0:
        return wav
    tilted = wav.clone()
    tilted[1:] -= tilt * wav[:-1]
    return tilted * (wav.pow(2).mean() / tilted.pow(2).mean().clamp_min(1e-12)).sqrt()


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


def alternate_genders(pool: Sequence[Speaker], rng: np.random.Generator) -> list[Speaker]:
    """`pool` shuffled, male and female voices taking turns, so any prefix mixes both."""
    groups = [[s for s in pool if s.gender == gender] for gender in ("male", "female")]
    groups = [[group[i] for i in rng.permutation(len(group))] for group in groups]
    order = [speaker for pair in zip(*groups, strict=False) for speaker in pair]
    return order + [speaker for group in groups for speaker in group[len(order) // 2 :]]


def split_speakers(speakers: Sequence[Speaker], rng: np.random.Generator) -> dict[str, list[str]]:
    """Speaker-disjoint train / valid / test, 1/6 of the speakers each for valid and test (at least one).

    Held-out speakers are drawn first from variants that have another speaker (another accent) left for training,
    so training hears every variant's timbre and the test speakers are new voices, not a timbre never heard.
    """
    by_variant: dict[str, list[Speaker]] = {}
    for speaker in speakers:
        by_variant.setdefault(speaker.variant, []).append(speaker)
    preferred, others = [], []
    for variant_speakers in by_variant.values():
        shuffled = [variant_speakers[i] for i in rng.permutation(len(variant_speakers))]
        (preferred if len(shuffled) > 1 else others).append(shuffled[0])
        others += shuffled[1:]
    order = alternate_genders(preferred, rng) + alternate_genders(others, rng)
    held_out = max(1, len(speakers) // 6)
    return {
        "train": sorted(s.name for s in order[2 * held_out :]),
        "valid": sorted(s.name for s in order[held_out : 2 * held_out]),
        "test": sorted(s.name for s in order[:held_out]),
    }


def split_utterances(plan: Sequence[tuple[str, Speaker, str, str]], rng: np.random.Generator) -> dict[str, list[str]]:
    """Utterance-disjoint train / valid / test ids with every speaker in each: per speaker, 1/8 of its utterances
    for valid and 1/8 for test (at least one each), drawn at random; with 8 utterances, 6 / 1 / 1."""
    by_speaker: dict[str, list[str]] = {}
    for utt_id, speaker, _, _ in plan:
        by_speaker.setdefault(speaker.name, []).append(utt_id)
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for ids in by_speaker.values():
        held_out = max(1, len(ids) // 8)
        order = [ids[i] for i in rng.permutation(len(ids))]
        splits["test"] += order[:held_out]
        splits["valid"] += order[held_out : 2 * held_out]
        splits["train"] += order[2 * held_out :]
    return splits


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/mini")
    parser.add_argument("--seed", type=int, default=0, help="sentences, emotion order, split and noise")
    parser.add_argument("--num-speakers", type=int, default=24)
    parser.add_argument("--utterances-per-speaker", type=int, default=16, help="a multiple of 4, the emotions")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    args = parser.parse_args(argv)
    limit = len(ACCENTS) * len(VARIANTS)
    if not 3 <= args.num_speakers <= limit:
        parser.error(f"--num-speakers must be between 3 and {limit} (the voices this script knows)")
    if args.utterances_per_speaker <= 0 or args.utterances_per_speaker % len(EMOTIONS):
        parser.error(f"--utterances-per-speaker must be a positive multiple of {len(EMOTIONS)} (one per emotion)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        raise SystemExit(ESPEAK_MISSING)
    speakers = make_speakers(args.num_speakers)
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
        # Verification on the emotion split's speakers: enrolment and test voices never heard in training;
        # speech recognition too (SUPERB's test speakers are unseen).
        write_jsonl(out / "speaker_verification" / f"{split}.jsonl", rows)
        write_jsonl(out / "asr" / f"{split}.jsonl", rows)
        if split in TRIALS:
            trials = make_trials([row["id"] for row in rows], [row["speaker"] for row in rows], seed=args.seed)
            write_trials(out / "speaker_verification" / TRIALS[split], trials)
    # A stream of its own, so the emotion corpus does not depend on it: not `rng`, and not default_rng([seed, 1]),
    # which is utterance 1's noise generator.
    id_splits = split_utterances(plan, np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(1,))))
    for split, ids in id_splits.items():
        chosen = set(ids)
        rows = [{**entry, "audio": f"../{entry['audio']}"} for entry in entries if entry["id"] in chosen]
        write_jsonl(out / "speaker_id" / f"{split}.jsonl", rows)
    minutes = sum(entry["duration"] for entry in entries) / 60
    sizes = "/".join(str(len(names)) for names in splits.values())
    id_sizes = "/".join(str(len(ids)) for ids in id_splits.values())
    print(
        f"mini corpus: {len(entries)} utterances, {minutes:.1f} min of audio, {len(speakers)} speakers "
        f"in {time.perf_counter() - started:.1f} s -> {out}/: all.jsonl, "
        f"{{emotion,speaker_verification,asr}}/{{train,valid,test}}.jsonl ({sizes} speakers), "
        f"speaker_verification/{{trials,valid_trials}}.txt, speaker_id/{{train,valid,test}}.jsonl "
        f"({id_sizes} utterances)"
    )


if __name__ == "__main__":
    main()
