import json
import random

import pytest
import torch

from recipes.data import ManifestError
from recipes.tokenizer import (
    NORMALIZERS,
    Tokenizer,
    TokenizerError,
    normalize_text,
    train_from_manifest,
    train_tokenizer,
)

SENTENCES = [
    "Hello, world!  It's 5 o'clock.",
    "The cat's hat — and the DOGS' bones?",
    "École naïve: crème brûlée",
    "   spaces\tand\nnewlines   ",
]
WORDS = "the cat dog sat on a mat ran fast slow big small red blue it's he she was under over".split()


def small_corpus(count: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, world!  It's 5 o'clock.", "HELLO WORLD IT'S O'CLOCK"),
        ("  a\tb\n\nc  ", "A B C"),
        ("École naïve", "ÉCOLE NAÏVE"),
        ("Cafe\u0301", "CAFÉ"),  # e + combining acute: one letter after NFC, not dropped
        ("it\u2019s", "IT'S"),  # typographic apostrophe
        ("Straße", "STRASSE"),
        ("Привет, мир", "ПРИВЕТ МИР"),
        ("x-ray 3.5", "X RAY"),
        ("123 !?", ""),
    ],
)
def test_normalize_text_keeps_upper_case_letters_and_apostrophes(text, expected):
    assert normalize_text(text) == expected


def test_none_normalizer_only_collapses_whitespace():
    assert normalize_text("  Hello,\t world! 5 ", keep="none") == "Hello, world! 5"
    assert set(NORMALIZERS) >= {"letters_apostrophes", "none"}


def test_unknown_normalizer_lists_the_choices():
    with pytest.raises(ValueError, match="unknown text normalizer 'digits'.*letters_apostrophes"):
        normalize_text("a", keep="digits")


def test_char_tokenizer_round_trips_normalised_sentences(tmp_path):
    tokenizer = train_tokenizer(SENTENCES, tmp_path / "char.model")
    assert tokenizer.model_type == "char" and tokenizer.normalizer == "letters_apostrophes"
    characters = {c for s in SENTENCES for c in normalize_text(s) if c != " "}
    assert tokenizer.vocab_size == len(characters) + 3
    assert tokenizer.tokens[:2] == ["<blank>", "<unk>"] and "\u2581" in tokenizer.tokens
    for sentence in map(normalize_text, SENTENCES):
        ids = tokenizer.encode(sentence)
        assert len(ids) == len(sentence) + 1  # one id per character, `▁` for each space and the word start
        assert tokenizer.decode(ids) == sentence
    assert tokenizer.encode("") == [] and tokenizer.decode([]) == ""


def test_blank_is_id_zero_never_encoded_and_ignored_by_decode(tmp_path):
    tokenizer = train_tokenizer(SENTENCES, tmp_path / "char.model")
    assert tokenizer.blank_id == 0 and tokenizer.unk_id == 1 and tokenizer.tokens[0] == "<blank>"
    ids = [i for s in SENTENCES for i in tokenizer.encode(normalize_text(s))]
    assert 0 not in ids
    text = "IT'S O'CLOCK"
    ids = tokenizer.encode(text)
    with_blanks = [0] + [x for i in ids for x in (i, 0)]
    assert tokenizer.decode(with_blanks) == text
    assert tokenizer.decode(torch.tensor(with_blanks)) == text


def test_decode_rejects_ids_outside_the_vocabulary(tmp_path):
    tokenizer = train_tokenizer(SENTENCES, tmp_path / "char.model")
    with pytest.raises(ValueError, match=f"token id {tokenizer.vocab_size} is outside"):
        tokenizer.decode([2, tokenizer.vocab_size])


def test_bpe_tokenizer_with_a_vocab_size_round_trips(tmp_path):
    corpus = small_corpus()
    tokenizer = train_tokenizer(corpus, tmp_path / "bpe.model", model_type="bpe", vocab_size=60)
    assert tokenizer.vocab_size == 60 and tokenizer.model_type == "bpe"
    assert any(len(piece.lstrip("\u2581")) > 1 for piece in tokenizer.tokens[2:])  # merges, not only characters
    held_out = small_corpus(50, seed=1)
    for sentence in map(normalize_text, held_out):
        ids = tokenizer.encode(sentence)
        assert 0 not in ids and tokenizer.unk_id not in ids
        assert len(ids) < len(sentence)
        assert tokenizer.decode(ids) == sentence


def test_unigram_tokenizer_round_trips(tmp_path):
    tokenizer = train_tokenizer(small_corpus(), tmp_path / "unigram.model", model_type="unigram", vocab_size=30)
    assert tokenizer.vocab_size == 30
    sentence = normalize_text(small_corpus(1, seed=2)[0])
    assert tokenizer.decode(tokenizer.encode(sentence)) == sentence


def test_bpe_vocab_too_large_for_the_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large .* at most \d+ bpe pieces"):
        train_tokenizer(small_corpus(), tmp_path / "bpe.model", model_type="bpe", vocab_size=5000)
    assert not (tmp_path / "bpe.model").exists()


def test_bpe_vocab_smaller_than_the_alphabet_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=5 is too small .* at least \d+ ids"):
        train_tokenizer(small_corpus(), tmp_path / "bpe.model", model_type="bpe", vocab_size=5)


def test_bpe_and_unigram_need_a_vocab_size(tmp_path):
    for model_type in ("bpe", "unigram"):
        with pytest.raises(ValueError, match=f"a {model_type} tokenizer needs a vocab_size"):
            train_tokenizer(small_corpus(), tmp_path / "t.model", model_type=model_type)


def test_char_vocab_size_must_match_the_alphabet(tmp_path):
    with pytest.raises(ValueError, match=r"has 6 ids \(3 characters.*not vocab_size=10"):
        train_tokenizer(["abc cab"], tmp_path / "char.model", vocab_size=10)
    assert train_tokenizer(["abc cab"], tmp_path / "char.model", vocab_size=6).vocab_size == 6


def test_char_tokenizer_trains_on_a_single_word(tmp_path):
    tokenizer = train_tokenizer(["a"], tmp_path / "char.model")
    assert tokenizer.tokens[:2] == ["<blank>", "<unk>"] and sorted(tokenizer.tokens[2:]) == ["A", "\u2581"]
    assert tokenizer.decode(tokenizer.encode("A A")) == "A A"


def test_unknown_characters_are_those_missing_from_the_training_text(tmp_path):
    tokenizer = train_tokenizer(SENTENCES, tmp_path / "char.model")
    assert tokenizer.unknown_characters("HELLO WORLD") == set()
    assert tokenizer.unknown_characters("QUIX ÆON") == {"Q", "U", "X", "Æ"}  # Û is in brûlée, not U
    assert tokenizer.encode("Q").count(tokenizer.unk_id) == 1
    bpe = train_tokenizer(small_corpus(), tmp_path / "bpe.model", model_type="bpe", vocab_size=60)
    assert bpe.unknown_characters("THE JUMPY CAT") == {"J", "P", "Y"}  # U and M are in `under`, `small`
    assert all(bpe.unk_id in bpe.encode(c) for c in "JPY")


def test_reloaded_tokenizer_encodes_identically(tmp_path):
    path = tmp_path / "bpe.model"
    trained = train_tokenizer(small_corpus(), path, model_type="bpe", vocab_size=50, normalizer="letters_apostrophes")
    loaded = Tokenizer(path)
    assert loaded.tokens == trained.tokens
    assert (loaded.model_type, loaded.normalizer) == ("bpe", "letters_apostrophes")
    for sentence in map(normalize_text, small_corpus(20, seed=3)):
        assert loaded.encode(sentence) == trained.encode(sentence)
    assert json.loads((tmp_path / "bpe.model.json").read_text())["vocab_size"] == 50


def test_same_input_gives_the_same_model_bytes(tmp_path):
    for model_type, vocab_size in (("char", None), ("bpe", 60), ("unigram", 30)):
        first = train_tokenizer(small_corpus(), tmp_path / f"a_{model_type}.model", model_type, vocab_size)
        second = train_tokenizer(small_corpus(), tmp_path / f"b_{model_type}.model", model_type, vocab_size)
        assert first.path.read_bytes() == second.path.read_bytes()
        assert first.tokens == second.tokens


def test_bad_model_type_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer model_type 'word'; choose from char, bpe, unigram"):
        train_tokenizer(SENTENCES, tmp_path / "t.model", model_type="word")


def test_texts_empty_after_normalisation_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="every text is empty"):
        train_tokenizer(["123", "?!"], tmp_path / "t.model")


def test_training_writes_only_the_model_and_its_sidecar(tmp_path):
    train_tokenizer(SENTENCES, tmp_path / "sub" / "char.model")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["char.model", "char.model.json"]


def test_training_is_quiet(tmp_path, capfd):
    train_tokenizer(small_corpus(), tmp_path / "bpe.model", model_type="bpe", vocab_size=60)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_missing_or_unreadable_model_names_the_file(tmp_path):
    with pytest.raises(TokenizerError, match=f"tokenizer model {tmp_path / 'nope.model'} does not exist"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=f"tokenizer model {bad} is not a sentencepiece model"):
        Tokenizer(bad)


def test_a_model_without_the_blank_at_id_zero_is_rejected(tmp_path):
    import sentencepiece as spm

    prefix = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["HELLO WORLD"]), model_prefix=str(prefix), model_type="char", minloglevel=2
    )
    with pytest.raises(TokenizerError, match=r"does not have the CTC blank '<blank>' at id 0 \(id 0 is '<unk>'\)"):
        Tokenizer(f"{prefix}.model")


def test_a_model_without_sidecar_loads_with_unknown_normalizer(tmp_path):
    path = tmp_path / "char.model"
    train_tokenizer(SENTENCES, path)
    (tmp_path / "char.model.json").unlink()
    tokenizer = Tokenizer(path)
    assert tokenizer.normalizer is None and tokenizer.model_type is None
    assert tokenizer.normalize("  Hello,  world ") == "Hello, world"


def test_a_broken_sidecar_names_the_file(tmp_path):
    path = tmp_path / "char.model"
    train_tokenizer(SENTENCES, path)
    sidecar = tmp_path / "char.model.json"
    for content, message in (("{", "is not readable JSON"), ("[1]", "must hold a JSON object, got list")):
        sidecar.write_text(content)
        with pytest.raises(TokenizerError, match=f"tokenizer sidecar {sidecar} {message}"):
            Tokenizer(path)


def write_manifest(path, texts):
    lines = [json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "duration": 1.0, "text": t}) for i, t in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n")


def test_train_from_manifest_uses_the_normalised_text_field(tmp_path):
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, ["Hello, world!", "42", "It's late."])  # audio files need not exist
    tokenizer = train_from_manifest(manifest, tmp_path / "char.model", "char")
    assert sorted(tokenizer.tokens[2:]) == sorted("HELOWRDITSA'\u2581")
    assert tokenizer.decode(tokenizer.encode("IT'S A WORD")) == "IT'S A WORD"


def test_train_from_manifest_without_text_left_is_an_error(tmp_path):
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, ["42", "..."])
    with pytest.raises(ManifestError, match=f"manifest {manifest}: none of its 2 texts"):
        train_from_manifest(manifest, tmp_path / "char.model", "char")


def test_train_from_manifest_needs_the_text_field(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"id": "u0", "audio": "u0.wav", "duration": 1.0}) + "\n")
    with pytest.raises(ManifestError, match="line 1: missing field 'text'"):
        train_from_manifest(manifest, tmp_path / "char.model", "char")
