"""Text normalisation and sentencepiece tokenizers for CTC: characters, BPE or unigram pieces.

The CTC convention: id 0 is the blank. The model is trained with sentencepiece's pad piece at id 0, renamed
`<blank>` (`pad_id=0, pad_piece="<blank>"`), `<unk>` at id 1 and no `<s>` / `</s>`, so every real piece has an
id >= 2 and `encode` never produces 0; a CTC head has `vocab_size` outputs with the blank at index 0.

A word boundary is sentencepiece's `▁` (U+2581): a piece that begins a word starts with it (`▁THE`), and with the
char model it is a piece of its own. `Tokenizer.tokens` lists the pieces as they are, for a beam-search decoder.

Normalisation happens before sentencepiece: texts are normalised by a function of `NORMALIZERS`, and the model is
trained with sentencepiece's `identity` rule, so `decode(encode(text)) == text` for a normalised text. The name of
the normaliser and the model type are kept in a JSON sidecar next to the model, `<model>.json`; a model without
one (trained elsewhere with the same id convention) loads with `normalizer` and `model_type` None.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from . import atomic
from .data import ManifestError, read_manifest

BLANK_ID = 0
UNK_ID = 1
BLANK_PIECE = "<blank>"
MODEL_TYPES = ("char", "bpe", "unigram")
WORD_BOUNDARY = "\u2581"  # sentencepiece's `▁`
# Apostrophes other than U+0027 that transcripts use inside words (it’s, ʼokina); quotes (‘ “) are not among them.
APOSTROPHES = {"\u2019": "'", "\u02bc": "'"}


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def _letters_apostrophes(text: str) -> str:
    # NFC first, so a letter written as base + combining mark (not isalpha) survives as one letter.
    text = unicodedata.normalize("NFC", text).upper()
    kept = (APOSTROPHES.get(c, c) for c in text)
    return _collapse_whitespace("".join(c if c.isalpha() or c == "'" else " " for c in kept))


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "letters_apostrophes": _letters_apostrophes,
    "none": _collapse_whitespace,
}


def _normalizer(name: str) -> Callable[[str], str]:
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown text normalizer {name!r}; choose from {sorted(NORMALIZERS)}") from None


def normalize_text(text: str, keep: str = "letters_apostrophes") -> str:
    """Normalise a reference or training text with the normaliser `keep` of `NORMALIZERS`.

    `letters_apostrophes` (the default): upper case; letters (any script, `str.isalpha`) and apostrophes are kept,
    every other character becomes a space; whitespace runs collapse to one space, the ends are stripped:
    `"Hello, world!  It's 5 o'clock."` -> `"HELLO WORLD IT'S O'CLOCK"`. `none` only collapses whitespace.
    """
    return _normalizer(keep)(text)


class TokenizerError(ValueError):
    """A tokenizer model that cannot be used; the message names the file."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


class Tokenizer:
    """A trained sentencepiece model for CTC: id 0 is the blank, id 1 `<unk>` (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer model {self.path} does not exist (train one with train_tokenizer)")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as error:
            raise TokenizerError(f"tokenizer model {self.path} is not a sentencepiece model: {error}") from None
        if self._sp.pad_id() != BLANK_ID or self._sp.id_to_piece(BLANK_ID) != BLANK_PIECE:
            raise TokenizerError(
                f"tokenizer model {self.path} does not have the CTC blank {BLANK_PIECE!r} at id {BLANK_ID} "
                f"(id 0 is {self._sp.id_to_piece(0)!r}); train it with train_tokenizer"
            )
        self.normalizer: str | None = None
        self.model_type: str | None = None
        sidecar = _sidecar(self.path)
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise TokenizerError(f"tokenizer sidecar {sidecar} is not readable JSON: {error}") from None
            if not isinstance(info, dict):
                raise TokenizerError(f"tokenizer sidecar {sidecar} must hold a JSON object, got {type(info).__name__}")
            self.normalizer = info.get("normalizer")
            self.model_type = info.get("model_type")
            if self.normalizer is not None and self.normalizer not in NORMALIZERS:
                raise TokenizerError(
                    f"tokenizer sidecar {sidecar} names normalizer {self.normalizer!r}; "
                    f"strata knows {sorted(NORMALIZERS)}"
                )

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, model_type={self.model_type!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of ids, the blank and `<unk>` included: the output size of a CTC head."""
        return self._sp.vocab_size()

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def tokens(self) -> list[str]:
        """The piece of every id, in id order: `<blank>`, `<unk>`, then pieces with `▁` marking a word start."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def normalize(self, text: str) -> str:
        """`text` normalised as the training text was (only whitespace collapsed for a model without a sidecar)."""
        return normalize_text(text, self.normalizer or "none")

    def encode(self, text: str) -> list[int]:
        """Ids of an already normalised `text`; never the blank. Characters the model lacks become `unk_id`."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` (any int sequence: list, tensor, array), blanks dropped; `<unk>` reads ` ⁇ `.

        Repeats are not merged: collapse a CTC path's repeats before dropping its blanks.
        """
        size = self.vocab_size
        kept = []
        for i in ids:
            i = int(i)
            if not 0 <= i < size:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.path} (0..{size - 1})")
            if i != BLANK_ID:
                kept.append(i)
        return self._sp.decode(kept)

    def unknown_characters(self, text: str) -> set[str]:
        """Characters of `text`, whitespace aside, that the model has no piece for (they encode as `unk_id`)."""
        # With character_coverage=1.0 every training character is a piece of its own, whatever the model type.
        return {c for c in set(text) if not c.isspace() and self._sp.piece_to_id(c) == self.unk_id}


def _vocab_error(error: RuntimeError, model_type: str, vocab_size: int, count: int) -> ValueError:
    message = str(error)
    if found := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
        return ValueError(
            f"vocab_size={vocab_size} is too large for this corpus ({count} texts): sentencepiece can make at most "
            f"{found.group(2)} {model_type} pieces from it; lower vocab_size or train on more text"
        )
    if found := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        return ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: its characters, the word boundary and the "
            f"blank and <unk> need at least {found.group(2)} ids; raise vocab_size"
        )
    return ValueError(f"sentencepiece could not train a {model_type} tokenizer with vocab_size={vocab_size}: {message}")


def train_tokenizer(
    texts: Iterable[str],
    out: str | Path,
    model_type: str = "char",
    vocab_size: int | None = None,
    normalizer: str = "letters_apostrophes",
) -> Tokenizer:
    """Train a sentencepiece tokenizer on `texts` (normalised here by `normalizer`) and save it to `out`.

    `model_type` is `char`, `bpe` or `unigram`. A char model's vocabulary is the characters of the texts, the word
    boundary `▁`, the blank and `<unk>`; `vocab_size`, if given, must equal that count. BPE and unigram need a
    `vocab_size`, and one the corpus cannot fill is a `ValueError` that says the most it can make. Every character
    of the texts gets a piece (`character_coverage=1.0`). Training is deterministic: the same texts and options
    give the same model bytes. The model is written atomically, with its sidecar `<out>.json`.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown tokenizer model_type {model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    normalize = _normalizer(normalizer)
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3):
        raise ValueError(f"vocab_size must be an integer of at least 3 (blank, <unk> and a piece), got {vocab_size!r}")
    if model_type != "char" and vocab_size is None:
        raise ValueError(f"a {model_type} tokenizer needs a vocab_size (e.g. 256 or 1000); only char derives its own")
    sentences = [s for s in map(normalize, texts) if s]
    if not sentences:
        raise ValueError(f"no text to train a tokenizer on: every text is empty after the {normalizer!r} normalizer")
    if model_type == "char":
        characters = {c for s in sentences for c in s} - {" ", WORD_BOUNDARY}
        needed = len(characters) + 3  # + the word boundary `▁`, the blank and <unk>
        if vocab_size is not None and vocab_size != needed:
            raise ValueError(
                f"a char tokenizer of this corpus has {needed} ids ({len(characters)} characters, the word boundary, "
                f"the blank and <unk>), not vocab_size={vocab_size}; leave vocab_size unset for char"
            )
        vocab_size = needed
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    try:
        # An iterator and a model writer instead of files: no temporary paths end up in the model's trainer spec,
        # so the same texts give the same bytes.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=model_type != "char",  # a char model's size is its alphabet's
            character_coverage=1.0,
            normalization_rule_name="identity",  # normalised above; sentencepiece's NFKC would change the text
            pad_id=BLANK_ID,
            pad_piece=BLANK_PIECE,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            # sentencepiece drops longer sentences silently (default 4192 bytes)
            max_sentence_length=max(4192, max(len(s.encode("utf-8")) for s in sentences) + 1),
            minloglevel=2,  # errors only; failures raise anyway
        )
    except RuntimeError as error:
        raise _vocab_error(error, model_type, vocab_size, len(sentences)) from None
    # The sidecar first: a model file present means its sidecar is too.
    sidecar = {"model_type": model_type, "normalizer": normalizer, "vocab_size": vocab_size}
    atomic.write_text(_sidecar(out), json.dumps(sidecar, indent=2) + "\n")
    atomic.write_bytes(out, model.getvalue())
    return Tokenizer(out)


def train_from_manifest(
    manifest_path: str | Path,
    out: str | Path,
    model_type: str = "char",
    vocab_size: int | None = None,
    normalizer: str = "letters_apostrophes",
) -> Tokenizer:
    """Train a tokenizer on the `text` field of a JSONL manifest (see `train_tokenizer`); audio is not opened.

    Texts that normalise to nothing are skipped; a manifest with none left is a `ManifestError`.
    """
    manifest = read_manifest(manifest_path, fields={"text": str}, check_audio=False)
    normalize = _normalizer(normalizer)
    texts = [t for t in (normalize(e["text"]) for e in manifest.entries) if t]
    if not texts:
        raise ManifestError(
            f"manifest {manifest.path}: none of its {len(manifest)} texts has a character left after the "
            f"{normalizer!r} normalizer; nothing to train a tokenizer on"
        )
    return train_tokenizer(texts, out, model_type=model_type, vocab_size=vocab_size, normalizer=normalizer)
