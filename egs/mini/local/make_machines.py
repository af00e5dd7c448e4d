"""Generate the mini machine-sound corpus for anomalous sound detection, in the DCASE 2023 Task 2 layout and names.

    python local/make_machines.py --out data/mini [--seed 0] [--scale 1.0]

Writes `<out>/machines/<machine>/{train,test}/section_00_<domain>_<split>_<label>_<NNNN>_<attrs>.wav` (16 kHz,
2 s, 16-bit) for three machines, and manifests with audio paths relative to their folder (`../machines/...`):
- `<out>/asd/train.jsonl`: normal clips only, 90 source and 10 target per machine (first shot: few target clips),
  less the validation clips;
- `<out>/asd/valid.jsonl`: 10% of each machine's source training clips, held out. Normals only, as in DCASE (no
  anomaly is known at training time): it measures how well normals are modelled, not detection;
- `<out>/asd/test.jsonl`: 50 normal and 50 anomalous clips per domain and machine, with an extra `anomaly_kind`
  field on anomalies (`click`, `harmonic` or `whine`, taking turns), which DCASE names do not carry.
The fields are those of `recipes.dcase.manifest_entries` (machine, section, domain, label, attributes), from which
they are built. `--scale` multiplies every count (at least one target training clip and two test clips of each
label per domain stay). The same seed gives the same manifests and audio bytes.

The machines, each with attributes that change its sound and a target domain outside the source's values:
- `fan`: broadband noise through a low-pass whose cut-off rises with speed, plus the blade-pass harmonic series at
  rotation speed x 5 blades; `vel` (rotation speed) 8-12 in the source, 15 in the target;
- `pump`: a harmonic tone whose fundamental rises with `load`, amplitude-modulated at the pulse rate `pls`
  (2-3 Hz source, 5 Hz target) over flow noise;
- `gearbox`: a gear-mesh tone at shaft speed x 17 teeth, with sidebands at +- the shaft speed whose strength grows
  with the weight `wt`; `volt` (motor voltage) sets the shaft speed, 1.0-2.0 source, 2.5 target.
Every clip varies at random in level (12 dB), speed (+-1.5%), phases and background noise (15-30 dB SNR, white to
pink), so loudness alone does not tell normal from anomalous (its AUC stays near 0.5), and a target normal, whose
speed no source clip has, is far from the source normals: a detector must use the few target clips.

What separates an anomaly from a normal: a sound no normal of its machine has, added at a random strength that is
sometimes well below the machine (so some anomalies are hard): `click`, 3-8 short broadband impulses (a chipped
blade, a loose part); `harmonic`, partials at half-integer multiples of the fundamental (a damaged gear or impeller
rubbing once in two turns); `whine`, a narrowband tone at 2.5-6 kHz (a dry bearing). All three change the long-term
log spectrum, so a nearest-neighbour distance on it to the training normals detects most of them (AUC well above
0.5, not 1); a model that also sees time structure should do better on the clicks.
"""

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from recipes.data import write_jsonl
from recipes.dcase import manifest_entries

SAMPLE_RATE = 16000
SECONDS = 2.0
SECTION = "00"
PEAK = 0.95
ANOMALY_KINDS = ("click", "harmonic", "whine")
# Clips per machine at --scale 1: (split, domain, label) -> count.
COUNTS = {
    ("train", "source", "normal"): 90,
    ("train", "target", "normal"): 10,
    ("test", "source", "normal"): 50,
    ("test", "source", "anomaly"): 50,
    ("test", "target", "normal"): 50,
    ("test", "target", "anomaly"): 50,
}
VALID_FRACTION = 0.1


def lowpass_noise(rng: np.random.Generator, n: int, cutoff: float, slope: float = 2.0) -> np.ndarray:
    """White noise through a smooth low-pass (|H| = 1 / sqrt(1 + (f / cutoff)^(2 slope))), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    noise = np.fft.irfft(spectrum / np.sqrt(1 + (freqs / cutoff) ** (2 * slope)), n)
    return noise / noise.std()


def coloured_noise(rng: np.random.Generator, n: int, tilt: float) -> np.ndarray:
    """Unit-RMS noise whose power falls as f^-tilt: 0 white, 1 pink."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** (-tilt / 2), n)
    return noise / noise.std()


def harmonics(rng: np.random.Generator, t: np.ndarray, f0: float, amplitudes: Sequence[float]) -> np.ndarray:
    """Sum of `amplitudes[k] sin(2 pi (k + 1) f0 t + random phase)`, partials above 7.5 kHz left out."""
    out = np.zeros_like(t)
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * f0 < 7500:
            out += amplitude * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return out


@dataclass(frozen=True)
class Machine:
    """A machine type: its attribute values per domain and the synthesiser of one normal clip.

    `sound(rng, t, attributes, jitter)` returns the clip and its fundamental (the frequency anomalies relate to).
    """

    name: str
    attributes: dict[str, dict[str, tuple[str, ...]]]  # domain -> key -> values, keys in file-name order
    sound: Callable[[np.random.Generator, np.ndarray, dict[str, str], float], tuple[np.ndarray, float]]


def fan(rng: np.random.Generator, t: np.ndarray, attributes: dict[str, str], jitter: float) -> tuple[np.ndarray, float]:
    rotation = 5.0 * float(attributes["vel"]) * jitter  # Hz
    blade_pass = 5 * rotation
    tone = harmonics(rng, t, blade_pass, [1.0, 0.5, 0.3, 0.2, 0.12, 0.08]) + harmonics(rng, t, rotation, [0.15])
    noise = lowpass_noise(rng, t.size, cutoff=300 + 60 * float(attributes["vel"]))
    return noise + 0.5 * tone / tone.std(), blade_pass


def pump(
    rng: np.random.Generator, t: np.ndarray, attributes: dict[str, str], jitter: float
) -> tuple[np.ndarray, float]:
    load = float(attributes["load"])
    f0 = (90 + 25 * load) * jitter
    tone = harmonics(rng, t, f0, [1.0 / k ** (1.5 - 0.2 * load) for k in range(1, 12)])
    pulse = 1 + 0.6 * np.sin(2 * np.pi * float(attributes["pls"]) * jitter * t + rng.uniform(0, 2 * np.pi))
    noise = lowpass_noise(rng, t.size, cutoff=800)
    return tone / tone.std() * pulse + 0.3 * noise, f0


def gearbox(
    rng: np.random.Generator, t: np.ndarray, attributes: dict[str, str], jitter: float
) -> tuple[np.ndarray, float]:
    shaft = 12.0 * float(attributes["volt"]) * jitter
    mesh = 17 * shaft
    sideband = 0.1 + 0.002 * float(attributes["wt"])
    tone = harmonics(rng, t, mesh, [1.0, 0.4, 0.2])
    for offset in (-shaft, shaft):
        tone += harmonics(rng, t, mesh + offset, [sideband])
    noise = lowpass_noise(rng, t.size, cutoff=2000, slope=1.0)
    return tone / tone.std() + 0.25 * noise, mesh


MACHINES = {
    machine.name: machine
    for machine in (
        Machine("fan", {"source": {"vel": ("8", "10", "12")}, "target": {"vel": ("15",)}}, fan),
        Machine(
            "pump", {"source": {"load": ("1", "2"), "pls": ("2", "3")}, "target": {"load": ("2",), "pls": ("5",)}}, pump
        ),
        Machine(
            "gearbox",
            {
                "source": {"volt": ("1.0", "1.5", "2.0"), "wt": ("0", "150")},
                "target": {"volt": ("2.5",), "wt": ("150",)},
            },
            gearbox,
        ),
    )
}


def add_anomaly(rng: np.random.Generator, t: np.ndarray, wav: np.ndarray, f0: float, kind: str) -> np.ndarray:
    """`wav` (unit RMS) with a fault of `kind` added at a random strength."""
    if kind == "click":
        out = wav.copy()
        length = int(0.004 * SAMPLE_RATE)
        decay = np.exp(-np.arange(length) / (0.001 * SAMPLE_RATE))
        for start in rng.integers(0, t.size - length, size=rng.integers(3, 9)):
            out[start : start + length] += rng.uniform(1.5, 5.0) * rng.standard_normal(length) * decay
        return out
    if kind == "harmonic":
        orders = rng.choice([0.5, 1.5, 2.5, 3.5], size=2, replace=False)
        extra = np.zeros_like(t)
        for order in orders:
            extra += np.sin(2 * np.pi * order * f0 * t + rng.uniform(0, 2 * np.pi))
        return wav + rng.uniform(0.08, 0.3) * extra / extra.std()
    if kind == "whine":
        frequency = rng.uniform(2500, 6000)
        wobble = 1 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
        return wav + rng.uniform(0.04, 0.15) * np.sqrt(2) * np.sin(2 * np.pi * frequency * wobble * t)
    raise ValueError(f"unknown anomaly kind {kind!r}; choose from {ANOMALY_KINDS}")


@dataclass(frozen=True)
class Clip:
    machine: str
    split: str
    domain: str
    label: str
    index: int
    attributes: dict[str, str]
    kind: str | None  # the anomaly's kind; None for a normal clip

    @property
    def file_name(self) -> str:
        pairs = "".join(f"_{key}_{value}" for key, value in self.attributes.items())
        return f"section_{SECTION}_{self.domain}_{self.split}_{self.label}_{self.index:04d}{pairs}.wav"


def scaled(count: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(count * scale)))


def plan_clips(scale: float, rng: np.random.Generator) -> list[Clip]:
    """Every clip to render: attribute values drawn at random per clip, anomaly kinds taking turns."""
    clips = []
    for machine in MACHINES.values():
        for (split, domain, label), count in COUNTS.items():
            values = machine.attributes[domain]
            for index in range(scaled(count, scale, 1 if split == "train" else 2)):
                attributes = {key: str(rng.choice(options)) for key, options in values.items()}
                kind = ANOMALY_KINDS[index % len(ANOMALY_KINDS)] if label == "anomaly" else None
                clips.append(Clip(machine.name, split, domain, label, index, attributes, kind))
    return clips


def render(clip: Clip, rng: np.random.Generator) -> np.ndarray:
    """One clip, float32 `[S]`: the machine, its fault if any, background noise, a random level."""
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    wav, f0 = MACHINES[clip.machine].sound(rng, t, clip.attributes, rng.uniform(0.985, 1.015))
    wav = wav / wav.std()
    if clip.kind is not None:
        wav = add_anomaly(rng, t, wav, f0, clip.kind)
    snr_db = rng.uniform(15, 30)
    wav = wav + coloured_noise(rng, t.size, rng.uniform(0, 1)) * 10 ** (-snr_db / 20)
    wav = wav * 0.1 * 10 ** (rng.uniform(-6, 6) / 20)
    peak = np.abs(wav).max()
    return (wav * (PEAK / peak) if peak > PEAK else wav).astype(np.float32)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/mini")
    parser.add_argument("--seed", type=int, default=0, help="attributes, jitter, noise, faults and the valid split")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every clip count (0.1 for a quick test)")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    root = out / "machines"
    clips = plan_clips(args.scale, np.random.default_rng(args.seed))
    kinds = {}
    for number, clip in enumerate(clips):
        folder = root / clip.machine / clip.split
        folder.mkdir(parents=True, exist_ok=True)
        # Its own generator from (seed, clip number): a clip does not depend on the ones before it.
        wav = render(clip, np.random.default_rng([args.seed, number]))
        soundfile.write(folder / clip.file_name, wav, SAMPLE_RATE, subtype="PCM_16")
        kinds[f"{clip.machine}/{Path(clip.file_name).stem}"] = clip.kind
    manifests: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    # A stream of its own, not default_rng([seed, n]), which is clip n's.
    held_out_rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(1,)))
    for machine in MACHINES:
        for split in ("train", "test"):
            entries = manifest_entries(root, machine, split)
            for entry in entries:
                # Relative to the manifest's folder, <out>/asd/.
                entry["audio"] = Path(os.path.relpath(entry["audio"], out / "asd")).as_posix()
                if kinds[entry["id"]] is not None:
                    entry["anomaly_kind"] = kinds[entry["id"]]
            if split == "test":
                manifests["test"] += entries
                continue
            source = [i for i, entry in enumerate(entries) if entry["domain"] == "source"]
            count = max(1, int(round(VALID_FRACTION * len(source))))
            held_out = set(held_out_rng.choice(source, size=count, replace=False).tolist())
            manifests["valid"] += [entry for i, entry in enumerate(entries) if i in held_out]
            manifests["train"] += [entry for i, entry in enumerate(entries) if i not in held_out]
    for split, entries in manifests.items():
        write_jsonl(out / "asd" / f"{split}.jsonl", entries)
    sizes = "/".join(str(len(entries)) for entries in manifests.values())
    minutes = len(clips) * SECONDS / 60
    print(
        f"mini machines: {len(clips)} clips of {', '.join(MACHINES)}, {minutes:.1f} min of audio "
        f"in {time.perf_counter() - started:.1f} s -> {root}/<machine>/{{train,test}}/, "
        f"{out}/asd/{{train,valid,test}}.jsonl ({sizes} clips)"
    )


if __name__ == "__main__":
    main()
