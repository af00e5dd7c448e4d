"""Speech recognition: a CTC head on a sentencepiece tokenizer, scored by WER and CER."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from downstream.asr import AsrHead, BeamSearchDecoder, CTCHead, CTCHeadConfig, CTCOutput, SpecAugment, greedy_decode
from downstream.metrics import cer, wer, word_errors

from .. import atomic
from ..data import Manifest
from ..tokenizer import Tokenizer, normalize_text, train_from_manifest
from .base import Calibration, Evaluator, Predictor, Reduce, SplitData, Task, gather_objects, register_task


def decode_texts(task: AsrTask, outputs: CTCOutput, beam: bool) -> list[str]:
    """The text of each utterance of a batch: best-path CTC decoding, or the task's beam search."""
    log_probs, lengths = outputs.log_probs.detach().float().cpu(), outputs.lengths.cpu()
    best = task.beam_decoder.decode(log_probs, lengths) if beam else greedy_decode(log_probs, lengths)
    return [task.text_tokenizer.decode(ids) for ids in best]


class TranscriptPredictor(Predictor):
    """CTC outputs -> `text`, decoded as the test decodes (the task's `decoder`); windows of a long input are
    joined with a space."""

    def __init__(self, task: AsrTask) -> None:
        self.task = task

    def __call__(self, outputs: CTCOutput, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": text} for text in decode_texts(self.task, outputs, beam=self.task.decoder == "beam")]

    def join(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        return {"text": " ".join(text for answer in answers if (text := answer["text"].strip()))}


class TranscriptionEvaluator(Evaluator):
    """Decodes every utterance (greedy, or the task's beam search at test) and scores the hypotheses against the
    normalised references with jiwer: WER, CER and the word error counts; writes `hyp.txt` / `ref.txt`."""

    def __init__(self, task: AsrTask, split: SplitData, beam: bool) -> None:
        self.task = task
        self.split = split
        self.beam = beam
        self.hypotheses: dict[int, str] = {}  # manifest index -> text
        self.greedy: dict[int, str] = {}
        self.counts: dict[str, int] = {}

    def update(self, outputs: CTCOutput, batch: dict[str, Any]) -> None:
        indices = batch["indices"].tolist()
        greedy = decode_texts(self.task, outputs, beam=False)
        self.greedy.update(zip(indices, greedy, strict=True))
        best = decode_texts(self.task, outputs, beam=True) if self.beam else greedy
        self.hypotheses.update(zip(indices, best, strict=True))

    def _score(self, hypotheses: dict[int, str]) -> tuple[list[str], list[str], list[int]]:
        order = sorted(hypotheses)
        references = [self.task.normalize(self.split.manifest.entries[i]["text"]) for i in order]
        return references, [hypotheses[i] for i in order], order

    def compute(self, reduce: Reduce) -> dict[str, float]:
        # Transcripts are strings: gathered as objects, not summed.
        for name in ("hypotheses", "greedy"):
            merged: dict[int, str] = {}
            for part in gather_objects(getattr(self, name)):
                merged.update(part)
            setattr(self, name, merged)
        if not self.hypotheses:
            raise ValueError(f"no {self.split.name} utterances were decoded")
        references, hypotheses, _ = self._score(self.hypotheses)
        words = word_errors(references, hypotheses)
        self.counts = {k: words[k] for k in ("substitutions", "deletions", "insertions")}
        metrics = {"WER": wer(references, hypotheses), "CER": cer(references, hypotheses)}
        if self.beam:
            references, greedy, _ = self._score(self.greedy)
            metrics.update(greedy_WER=wer(references, greedy), greedy_CER=cer(references, greedy))
        return metrics

    @property
    def num_utterances(self) -> int:
        return len(self.hypotheses)

    def details(self) -> dict[str, Any]:
        return {**self.counts, "decoder": "beam" if self.beam else "greedy"}

    def write(self, run_dir: Path, title: str) -> list[Path]:
        references, hypotheses, order = self._score(self.hypotheses)
        ids = [self.split.manifest.entries[i]["id"] for i in order]
        written = []
        for name, texts in (("hyp.txt", hypotheses), ("ref.txt", references)):
            path = run_dir / name
            atomic.write_text(path, "".join(f"{i} {text}\n" for i, text in zip(ids, texts, strict=True)))
            written.append(path)
        return written


@register_task
@dataclass(eq=False)
class AsrTask(Task):
    """Speech recognition as SUPERB defines it: a BiLSTM CTC head on the interface features, sentencepiece tokens
    (blank = id 0), SpecAugment-style masking while training; greedy WER for validation, greedy or beam search
    (torchaudio's CTC decoder, optional n-gram LM; needs flashlight-text) at test.

    `tokenizer` is a sentencepiece model file; when it is unset or missing, `strata fit` trains one of
    `token_type` (char, bpe, unigram; `vocab_size` for the latter two) on the training manifest's normalised text
    and records its path. Training drops, with a list in the run directory, utterances with an empty transcript,
    with characters the tokenizer lacks, and those with fewer frames than CTC needs for their labels.
    """

    name = "asr"
    fields = {"text": str}
    window_seconds = 30.0  # longer inputs are transcribed in windows cut at their quietest point
    monitor = "WER"
    monitor_mode = "min"

    tokenizer: str | None = None
    token_type: str = "char"
    vocab_size: int | None = None
    normalizer: str = "letters_apostrophes"
    projection_size: int = 0
    hidden_size: int = 1024
    num_layers: int = 2
    dropout: float = 0.2
    time_masks: int = 2
    time_width: float = 0.05
    feature_masks: int = 2
    feature_width: float = 0.1
    decoder: Literal["greedy", "beam"] = "greedy"
    beam_size: int = 50
    lm: str | None = None
    lexicon: str | None = None
    lm_weight: float = 2.0
    word_score: float = 0.0

    def __post_init__(self) -> None:
        if self.decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be greedy or beam, got {self.decoder!r}")
        # Loaded from the files the fields name, on first use.
        self._text_tokenizer: Tokenizer | None = None
        self._beam_decoder: BeamSearchDecoder | None = None
        if self.decoder == "beam" and self.tokenizer is not None:
            self.beam_decoder  # noqa: B018 -- a missing flashlight-text is an error now, not after training

    @property
    def text_tokenizer(self) -> Tokenizer:
        """The sentencepiece model at `tokenizer`."""
        if self._text_tokenizer is None:
            if self.tokenizer is None:
                raise ValueError(
                    "the asr task has no tokenizer: pass --model.task.init_args.tokenizer PATH "
                    "(`strata tokenizer` makes one), or run `strata fit`, which trains one from --data.train"
                )
            self._text_tokenizer = Tokenizer(self.tokenizer)
        return self._text_tokenizer

    @property
    def beam_decoder(self) -> BeamSearchDecoder:
        if self._beam_decoder is None:
            self._beam_decoder = BeamSearchDecoder(
                self.text_tokenizer.tokens,
                beam_size=self.beam_size,
                lm=self.lm,
                lexicon=self.lexicon,
                lm_weight=self.lm_weight,
                word_score=self.word_score,
            )
        return self._beam_decoder

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.normalizer)

    @classmethod
    def complete_config(cls, init_args, train, checkpoint_args, run_dir=None):
        path = init_args.get("tokenizer")
        if path is None and checkpoint_args:
            path = checkpoint_args.get("tokenizer")
        if path is None and run_dir is not None:
            path = str(Path(run_dir) / "tokenizer.model")
        if path is None or Path(path).is_file():
            return {**init_args, "tokenizer": path}
        if train is None:
            raise ValueError(f"tokenizer {path} does not exist and there is no --data.train to train it from")
        tokenizer = train_from_manifest(
            train,
            path,
            model_type=init_args.get("token_type", "char"),
            vocab_size=init_args.get("vocab_size"),
            normalizer=init_args.get("normalizer", "letters_apostrophes"),
        )
        print(f"trained a {tokenizer.vocab_size}-token tokenizer on {train} -> {path}")
        return {**init_args, "tokenizer": str(path)}

    def _labels(self, entry: dict[str, Any]) -> tuple[str, list[int]]:
        text = self.normalize(entry["text"])
        return text, self.text_tokenizer.encode(text)

    def drop(self, manifest: Manifest, split: str, frame_rate: float) -> dict[int, str]:
        dropped = {}
        for i, entry in enumerate(manifest.entries):
            text, ids = self._labels(entry)
            if not text:
                dropped[i] = "empty transcript"
            elif split != "train":
                continue  # scored as they are: what the model cannot spell counts as errors
            elif self.text_tokenizer.unknown_characters(text):
                dropped[i] = "characters outside the tokenizer"
            elif int(entry["duration"] * frame_rate) < ctc_frames_needed(ids):
                dropped[i] = "fewer frames than CTC needs for the transcript"
        return dropped

    def targets(self, manifest: Manifest, split: str) -> list[list[int]]:
        return [self._labels(entry)[1] for entry in manifest.entries]

    def collate_targets(self, targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        padded = torch.zeros(len(targets), max(int(lengths.max()), 1), dtype=torch.long)
        for row, ids in enumerate(targets):
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return padded, lengths

    def build_head(self, input_size: int) -> nn.Module:
        augment = SpecAugment(self.time_masks, self.time_width, self.feature_masks, self.feature_width)
        config = CTCHeadConfig(self.projection_size, self.hidden_size, self.num_layers, self.dropout)
        tokens = self.text_tokenizer
        return AsrHead(augment, CTCHead(input_size, tokens.vocab_size, config), blank_id=tokens.blank_id)

    def evaluator(self, split: SplitData) -> Evaluator:
        return TranscriptionEvaluator(self, split, beam=self.decoder == "beam" and split.name == "test")

    def predictor(self, calibration: Calibration) -> Predictor:
        return TranscriptPredictor(self)


def ctc_frames_needed(ids: list[int]) -> int:
    """The fewest frames CTC can align `ids` to: one per label, plus a blank between repeated labels."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)
