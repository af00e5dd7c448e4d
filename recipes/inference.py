"""Using a trained model on new audio: `load_model` reads a run folder, an export or a hub repo, and `StrataModel`
answers for files, waveforms or a manifest as the test would (same head, same decisions).

What `source` may be:
- a run folder of `strata fit` / `strata test` (its `checkpoints/best.ckpt`, or the checkpoint the last test used,
  e.g. `checkpoints/averaged.ckpt`, and the `calibration.safetensors` that test wrote);
- a checkpoint file (`<run>/checkpoints/last.ckpt`);
- a `strata export` folder (`strata.json`, `model.safetensors`, ...), or `hf:<hub id or folder>` for one on the
  Hugging Face hub (downloaded once into the hub cache; a folder path works the same way).

Only strata's own classes are built from a model file, and weights are read as tensors (recipes.trust).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import read_audio, window_bounds
from .averaging import TOP_DIR
from .data import AudioDataset, BucketBatchSampler, Manifest, PadCollate, pad_to_min_samples, read_manifest
from .tasks.base import Calibration, Predictor

EXPORT_CONFIG = "strata.json"  # what marks a `strata export` folder
EXPORT_FORMAT = 1

Audio = str | Path | torch.Tensor | np.ndarray


def resolve_source(source: str | Path) -> Path:
    """The local folder or file `source` names; `hf:<id>` is downloaded from the hub (or found in its cache)."""
    text = str(source)
    if text.startswith("hf:"):
        repo = text[3:]
        if Path(repo).exists():
            return Path(repo)
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=repo))
        except Exception as error:  # noqa: BLE001 -- offline, unknown repo, no access: one message for all
            reason = " ".join(str(error).split())[:300]
            raise ValueError(
                f"could not fetch the strata model hf:{repo} from the Hugging Face hub ({type(error).__name__}: "
                f"{reason}); check the id, the network, or download it and pass its folder"
            ) from None
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist: give a run folder, a checkpoint, or an export")
    return path


@dataclass
class RunModel:
    """A trained module and what it decides with, as read from a run folder, a checkpoint or an export."""

    module: Any  # SSLTaskModule
    calibration: Calibration
    checkpoint: Path | None  # the checkpoint the weights came from (None: an export, or nothing trained)
    run_dir: Path | None
    batch_seconds: float | None = None  # how the test batched (padded audio per batch), when known


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a strata run config")
    return data


def run_checkpoint(run_dir: Path, checkpoint: str | None = None) -> Path | None:
    """The checkpoint of a run folder to use: `checkpoint` (`best`, `last`, `averaged` or a path) when given, else
    the one the last `strata test` scored, else `checkpoints/best.ckpt`; None when the run trained nothing.
    `averaged` is the average of the run's top checkpoints (recipes.averaging), computed when needed."""
    if checkpoint == "averaged":
        from .averaging import averaged_checkpoint

        return averaged_checkpoint(run_dir / "checkpoints")
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"no {checkpoint} checkpoint at {path}: run `strata fit` first")
        return path
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        return Path(checkpoint)
    tested = run_dir / "config_test.yaml"
    if tested.is_file():
        used = _read_yaml(tested).get("ckpt_path")
        if not used:
            return None  # tested without one: nothing trains (e.g. frozen ASD embeddings)
        # Recorded relative to where `strata test` ran: else found by name among the run's checkpoints (or its
        # parent's, for a test set's own results folder inside the run).
        name = Path(used).name
        for path in (Path(used), run_dir / "checkpoints" / name, run_dir.parent / "checkpoints" / name):
            if path.is_file():
                return path
    best = run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():
        return best
    raise FileNotFoundError(f"{run_dir} has no checkpoints/best.ckpt and no test config: run `strata fit` first")


def load_run(run_dir: str | Path, checkpoint: str | None = None, trust_code: bool = False) -> RunModel:
    """A run folder's trained module (see `run_checkpoint`) and the calibration its last test wrote."""
    from .module import SSLTaskModule

    run_dir = Path(run_dir)
    path = run_checkpoint(run_dir, checkpoint)
    if path is not None:
        module = SSLTaskModule.from_checkpoint(path, trust_code=trust_code, files_from=run_dir)
    else:
        config = run_dir / "config_test.yaml"
        module = SSLTaskModule.from_config(_read_yaml(config).get("model") or {}, str(config), trust_code).eval()
    calibration = Calibration.in_folder(run_dir)
    return RunModel(module, calibration, path, run_dir, tested_batch_seconds(run_dir))


def tested_batch_seconds(run_dir: Path) -> float | None:
    """The padded audio per batch of the run's last test (`--data.max_batch_seconds`), None when unknown."""
    for name in ("config_test.yaml", "config.yaml"):
        if (run_dir / name).is_file():
            value = (_read_yaml(run_dir / name).get("data") or {}).get("max_batch_seconds")
            if isinstance(value, int | float):
                return float(value)
    return None


def read_export_config(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable strata export config: {error}") from None
    if not isinstance(config, dict) or "module" not in config:
        raise ValueError(f"{path} is not a strata export config (no module)")
    if config.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is export format {config.get('format')!r}; this strata reads {EXPORT_FORMAT}")
    return config


def load_export(folder: str | Path, trust_code: bool = False) -> RunModel:
    """The module of a `strata export` folder: built from `strata.json` (strata's own classes only), weights from
    `model.safetensors`; a frozen upstream is rebuilt from its source and must match the recorded fingerprint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .module import FROZEN_UPSTREAM_KEY, SSLTaskModule

    folder = Path(folder)
    config = read_export_config(folder)
    hparams = dict(config["module"])
    task = hparams.get("task") or {}
    init_args = dict(task.get("init_args") or {})
    if init_args.get("tokenizer"):  # kept relative to the export
        init_args["tokenizer"] = str(folder / init_args["tokenizer"])
        hparams["task"] = {**task, "init_args": init_args}
    upstream = config.get("upstream") or {}
    if upstream.get("bundled"):  # a local upstream folder the export carries
        source = f"{upstream.get('bundled_source', 'hf')}:{folder / upstream['bundled']}"
        hparams["upstream"] = {**hparams.get("upstream", {}), "name": source}
    module = SSLTaskModule.from_config(hparams, str(folder / EXPORT_CONFIG), trust_code)
    weights = folder / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"could not read the weights {weights}: {error}") from None
    checkpoint: dict[str, Any] = {"state_dict": state}
    if not upstream.get("weights_included"):
        checkpoint[FROZEN_UPSTREAM_KEY] = {"name": upstream.get("name"), "fingerprint": upstream.get("fingerprint")}
    module.on_load_checkpoint(checkpoint, where=str(folder))
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"the weights in {weights} do not fit the model {folder / EXPORT_CONFIG} describes: "
                         f"{' '.join(str(error).split())[:400]}") from None  # fmt: skip
    calibration = Calibration.in_folder(folder)
    return RunModel(module.eval(), calibration, None, None, (config.get("predict") or {}).get("batch_seconds"))


def load_run_model(source: str | Path, checkpoint: str | None = None, trust_code: bool = False) -> RunModel:
    """What `source` (a run folder, a checkpoint, an export or `hf:<id>`) holds."""
    path = resolve_source(source)
    if path.is_file():
        if path.suffix != ".ckpt":
            raise ValueError(f"{path} is a file but not a checkpoint (.ckpt); give a run folder or an export")
        folder = path.parent.parent if path.parent.name == TOP_DIR else path.parent  # checkpoints/top/epoch003.ckpt
        run_dir = folder.parent if folder.name == "checkpoints" else folder
        return load_run(run_dir, str(path), trust_code)
    if (path / EXPORT_CONFIG).is_file():
        return load_export(path, trust_code)
    if (path / "checkpoints").is_dir() or (path / "config_test.yaml").is_file():
        return load_run(path, checkpoint, trust_code)
    raise ValueError(
        f"{path} is neither a strata export (no {EXPORT_CONFIG}) nor a run folder (no checkpoints/ or config_test.yaml)"
    )


def load_model(
    source: str | Path, device: str | torch.device = "cpu", checkpoint: str | None = None, trust_code: bool = False
) -> StrataModel:
    """A trained strata model ready to answer: `load_model("exp/emotion/hubert_base_weighted_sum")`,
    `load_model("exports/ser")` or `load_model("hf:user/strata-ser")`; then `.predict("a.wav")`, `.embed(...)`.

    `checkpoint` picks a run folder's checkpoint (`best`, `last`, a path); `trust_code` allows a model file to
    name classes outside strata (only for files you trust: building them runs their code)."""
    loaded = load_run_model(source, checkpoint, trust_code)
    return StrataModel(loaded.module, loaded.calibration, str(source), loaded.batch_seconds).to(device)


class StrataModel:
    """A trained upstream + interface + head and its task's decisions, for new audio.

    `predict(audio)` answers as `strata predict` writes it: emotion and speaker ID `label` and `scores` (class ->
    probability), verification `embedding`, ASR `text`, ASD `score` and `decision` (ASD needs the clip's `machine`
    and `section`: pass them as keywords). `audio` is a file path, a waveform (`sample_rate` given, resampled when
    it differs from the model's), or a list of either (a list of answers).

    `batch_seconds` is how `predict_manifest` batches by default: as the test did, when the run says. It matters
    for upstreams that take no padding mask (the group-norm wav2vec 2.0 and HuBERT base checkpoints): their frames
    depend on the padding, so an utterance batched with others, or alone (as `predict` runs it), gets slightly
    different answers; with the test's batching a manifest's answers are exactly the test's."""

    default_batch_seconds = 120.0  # the data module's default

    def __init__(
        self, module: Any, calibration: Calibration, source: str = "", batch_seconds: float | None = None
    ) -> None:
        self.module = module.eval()
        self.calibration = calibration
        self.source = source
        self.batch_seconds = batch_seconds or self.default_batch_seconds
        self._predictor: Predictor | None = None

    @property
    def task(self) -> Any:
        return self.module.task

    @property
    def sample_rate(self) -> int:
        return self.module.upstream.sample_rate

    @property
    def device(self) -> torch.device:
        return next(iter(self.module.parameters()), torch.zeros(0)).device

    def to(self, device: str | torch.device) -> StrataModel:
        self.module.to(device)
        return self

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = self.task.predictor(self.calibration)
        return self._predictor

    # Inputs --------------------------------------------------------------------------------------------------------
    def waveform(self, audio: Audio, sample_rate: int | None = None) -> torch.Tensor:
        """`audio` as a mono `[S]` float waveform at the model's rate (a file read with `read_audio`)."""
        if isinstance(audio, str | Path):
            return read_audio(audio, self.sample_rate)
        wav = torch.as_tensor(audio, dtype=torch.float32)
        if wav.dim() != 1:
            raise ValueError(f"expected a mono waveform [S], got shape {tuple(wav.shape)}")
        if sample_rate is None:
            raise ValueError(f"give the waveform's sample_rate (the model reads {self.sample_rate} Hz)")
        if sample_rate != self.sample_rate:
            import torchaudio

            wav = torchaudio.functional.resample(wav, sample_rate, self.sample_rate)
        return wav

    def _batch(self, wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded `[B, S]` and lengths, each clip at least the upstream's receptive field, as the test's
        `AudioDataset` and `PadCollate` make them."""
        minimum = getattr(self.module.upstream, "min_samples", 0)
        items = [{"index": i, "id": "", "wav": pad_to_min_samples(w, minimum)} for i, w in enumerate(wavs)]
        batch = PadCollate()(items)
        return batch["wavs"], batch["wav_lengths"]

    # Answers -------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, wavs: torch.Tensor, lengths: torch.Tensor, entries: list[dict[str, Any]]) -> list[dict]:
        device = self.device
        outputs = self.module.head(*self.module.head_inputs(wavs.to(device), lengths.to(device)))
        return self.predictor(outputs, entries)

    def _answers(self, wavs: torch.Tensor, lengths: torch.Tensor, entries: list[dict[str, Any]]) -> list[dict]:
        """The answers for a padded batch; an input longer than the task's `window_seconds` is answered in
        windows, joined."""
        window = self.task.window_seconds
        limit = None if window is None else int(window * self.sample_rate)
        if limit is None or int(lengths.max()) <= limit:
            return self._forward(wavs, lengths, entries)
        answers: list[dict] = []
        for wav, length, entry in zip(wavs, lengths.tolist(), entries, strict=True):
            wav = wav[:length]
            if length <= limit:
                answers += self._forward(*self._batch([wav]), [entry])
                continue
            pieces = [wav[start:end] for start, end in window_bounds(wav, self.sample_rate, window)]
            parts = [self._forward(*self._batch([piece]), [entry])[0] for piece in pieces]
            answers.append(self.predictor.join(parts))
        return answers

    def predict(self, audio: Audio | list[Audio], sample_rate: int | None = None, **fields: Any) -> Any:
        """The task's answer for one input (a dict), or for each of a list (a list of dicts); `fields` are
        manifest fields the task reads (ASD: `machine`, `section`)."""
        many = isinstance(audio, list)
        items = audio if many else [audio]
        answers = []
        for item in items:
            wav = self.waveform(item, sample_rate)
            answers += self._answers(*self._batch([wav]), [{"id": str(item) if isinstance(item, str | Path) else "",
                                                             **fields}])  # fmt: skip
        return answers if many else answers[0]

    @torch.inference_mode()
    def embed(self, audio: Audio | list[Audio], sample_rate: int | None = None) -> torch.Tensor:
        """The head's utterance embedding `[E]` of one input (`[N, E]` for a list), as `strata embed` gives it."""
        many = isinstance(audio, list)
        wavs = [self.waveform(item, sample_rate) for item in (audio if many else [audio])]
        vectors = torch.cat([self.module.embed(*(t.to(self.device) for t in self._batch([w]))) for w in wavs])
        vectors = vectors.float().cpu()
        return vectors if many else vectors[0]

    def verify(self, first: Audio, second: Audio, sample_rate: int | None = None) -> dict[str, Any]:
        """Speaker verification of two inputs: the test's cosine score and the decision at the threshold of the
        test's EER (`same_speaker`)."""
        if self.task.name != "speaker_verification":
            raise ValueError(f"verify needs a speaker_verification model, this one is {self.task.name}")
        from .tasks.verification import verification_score

        embeddings = [torch.tensor(self.predict(a, sample_rate)["embedding"]) for a in (first, second)]
        score = verification_score(*embeddings, self.calibration)
        thresholds = self.calibration.values.get("thresholds") or {}
        if "EER" not in thresholds:
            raise ValueError(f"{self.source} has no decision threshold: run `strata test` on trials first")
        return {"score": score, "threshold": thresholds["EER"], "same_speaker": score >= thresholds["EER"]}

    def predict_manifest(
        self, manifest: Manifest, batch_seconds: float | None = None, num_workers: int = 2, progress: bool = True
    ) -> Iterator[dict[str, Any]]:
        """One answer per manifest entry (`id`, `audio`, then the task's), in manifest order; batched as the
        test batches (`batch_seconds` of padded audio, by default the test's; length-sorted), with audio decoded in
        `num_workers` processes."""
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        batch_seconds = batch_seconds or self.batch_seconds
        dataset = AudioDataset(manifest, self.sample_rate, min_samples=getattr(self.module.upstream, "min_samples", 0))
        sampler = BucketBatchSampler(manifest.durations, batch_seconds, shuffle=False)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=PadCollate(), num_workers=num_workers)
        answers: dict[int, dict[str, Any]] = {}
        with tqdm(total=len(manifest), unit="utt", desc="predicting", disable=not progress) as bar:
            for batch in loader:
                indices = batch["indices"].tolist()
                entries = [manifest.entries[i] for i in indices]
                for index, entry, answer in zip(
                    indices, entries, self._answers(batch["wavs"], batch["wav_lengths"], entries), strict=True
                ):
                    answers[index] = {"id": entry["id"], "audio": entry["audio"], **answer}
                bar.update(len(indices))
        for index in range(len(manifest)):
            yield answers[index]


def files_manifest(paths: Sequence[str | Path], fields: dict[str, Any] | None = None) -> Manifest:
    """A manifest of audio files given on the command line: the id is the file name without its extension (the
    path when two share one), with the duration from the header and any `fields` (ASD: machine, section)."""
    from .audio import audio_duration

    stems = [Path(p).stem for p in paths]
    entries = [
        {"id": stem if stems.count(stem) == 1 else str(path), "audio": str(path), "duration": audio_duration(path),
         **(fields or {})}
        for stem, path in zip(stems, paths, strict=True)
    ]  # fmt: skip
    return Manifest(Path("command line"), entries, list(range(1, len(entries) + 1)))


def read_prediction_manifest(path: str | Path, task: Any) -> Manifest:
    """A manifest to predict on: only the fields the task's answers need (ASD: machine, section), no labels."""
    return read_manifest(path, fields=task.prediction_fields)
