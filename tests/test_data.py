import json
import math
import random
import warnings

import numpy as np
import pytest
import soundfile
import torch

from recipes.audio import AudioError
from recipes.data import (
    AudioDataset,
    BucketBatchSampler,
    ManifestError,
    PadCollate,
    bucket_batches,
    fixed_size_batches,
    padding_fraction,
    read_manifest,
    split_to_multiple,
)


def write_wav(path, seconds, sample_rate=16000, channels=1):
    samples = int(seconds * sample_rate)
    data = 0.1 * np.random.default_rng(0).standard_normal((samples, channels)).astype("float32")
    soundfile.write(str(path), data if channels > 1 else data[:, 0], sample_rate)
    return path


def write_manifest(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "wav").mkdir()
    entries = []
    for i, seconds in enumerate([0.5, 1.0, 0.75]):
        write_wav(tmp_path / "wav" / f"u{i}.wav", seconds)
        entries.append({"id": f"u{i}", "audio": f"wav/u{i}.wav", "duration": seconds, "emotion": "neu"})
    return tmp_path, entries


def test_manifest_resolves_audio_relative_to_its_folder(corpus):
    root, entries = corpus
    manifest = read_manifest(write_manifest(root / "m.jsonl", entries), fields={"emotion": str})
    assert manifest.ids == ["u0", "u1", "u2"]
    assert manifest.entries[1]["audio"] == str(root / "wav" / "u1.wav")
    assert manifest.durations == [0.5, 1.0, 0.75]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"audio": "wav/u1.wav", "duration": 1.0, "emotion": "neu"}', "line 2: missing field 'id'"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": "1.0", "emotion": "neu"}', "field 'duration' must be a num"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": true, "emotion": "neu"}', "field 'duration' must be a num"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": -1, "emotion": "neu"}', "'duration' must be a positive"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": 1.0}', "line 2: missing field 'emotion'"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": 1.0, "emotion": 3}', "field 'emotion' must be a string"),
        ('{"id": "u0", "audio": "wav/u1.wav", "duration": 1.0, "emotion": "neu"}', "id 'u0' already used on line 1"),
        ('{"id": "x", "audio": "wav/u1.wav", "duration": 1, "emotion": "neu", "start": 2, "end": 1}', "'end' (1)"),
        ('{"id": "x", "audio": "wav/nope.wav", "duration": 1.0, "emotion": "neu"}', "nope.wav does not exist"),
    ],
)
def test_malformed_manifest_line_names_file_line_and_field(corpus, line, message):
    root, entries = corpus
    path = root / "bad.jsonl"
    path.write_text(json.dumps(entries[0]) + "\n" + line + "\n")
    with pytest.raises(ManifestError) as error:
        read_manifest(path, fields={"emotion": str})
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_empty_or_missing_manifest_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="has no utterances"):
        read_manifest(tmp_path / "empty.jsonl")


def test_dataset_reads_segments_and_resamples(tmp_path):
    write_wav(tmp_path / "long.wav", 2.0, sample_rate=8000)
    entry = {"id": "seg", "audio": "long.wav", "duration": 0.5, "start": 0.5, "end": 1.0}
    dataset = AudioDataset(read_manifest(write_manifest(tmp_path / "m.jsonl", [entry])), sample_rate=16000)
    item = dataset[0]
    assert item["wav"].dtype == torch.float32
    assert item["wav"].numel() == 8000  # 0.5 s at 16 kHz, resampled from 8 kHz


def test_multichannel_audio_is_an_error_naming_file_and_line(tmp_path):
    write_wav(tmp_path / "stereo.wav", 0.5, channels=2)
    entry = {"id": "s", "audio": "stereo.wav", "duration": 0.5}
    manifest = read_manifest(write_manifest(tmp_path / "m.jsonl", [entry]))
    with pytest.raises(AudioError, match=r"2 channels.*m.jsonl line 1, id s"):
        AudioDataset(manifest, 16000)[0]


def test_unreadable_and_empty_audio_are_errors(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    soundfile.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype="float32"), 16000)
    entries = [{"id": "j", "audio": "junk.wav", "duration": 1.0}, {"id": "e", "audio": "empty.wav", "duration": 1.0}]
    dataset = AudioDataset(read_manifest(write_manifest(tmp_path / "m.jsonl", entries)), 16000)
    with pytest.raises(AudioError, match=r"could not read audio file .*junk.wav.*line 1"):
        dataset[0]
    with pytest.raises(AudioError, match=r"empty.wav is empty.*line 2"):
        dataset[1]


def test_short_clips_are_padded_to_the_receptive_field_with_one_counting_warning(tmp_path):
    entries = []
    for i, seconds in enumerate([0.01, 0.02, 1.0]):
        write_wav(tmp_path / f"{i}.wav", seconds)
        entries.append({"id": str(i), "audio": f"{i}.wav", "duration": seconds})
    manifest = read_manifest(write_manifest(tmp_path / "m.jsonl", entries))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = AudioDataset(manifest, 16000, min_samples=400)
    assert len(caught) == 1 and "2 of 3 clips" in str(caught[0].message)
    assert dataset[0]["wav"].numel() == 400
    assert dataset[0]["wav"][160:].abs().sum() == 0  # the padding is silence
    assert dataset[2]["wav"].numel() == 16000


def test_collate_pads_with_zeros_and_keeps_lengths():
    items = [
        {"index": 0, "id": "a", "wav": torch.ones(5), "target": 1},
        {"index": 3, "id": "b", "wav": torch.ones(3), "target": 0},
    ]
    batch = PadCollate()(items)
    assert batch["wavs"].shape == (2, 5)
    assert batch["wav_lengths"].tolist() == [5, 3]
    assert batch["wavs"][1, 3:].abs().sum() == 0
    assert batch["targets"].tolist() == [1, 0]
    assert batch["indices"].tolist() == [0, 3] and batch["ids"] == ["a", "b"]


def random_durations(count=500, seed=0):
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 12.0), 3) for _ in range(count)]


def test_buckets_never_exceed_max_batch_seconds_of_padded_audio():
    durations = random_durations()
    for batch in bucket_batches(durations, 60.0):
        assert len(batch) * max(durations[i] for i in batch) <= 60.0


def test_an_utterance_longer_than_the_limit_gets_a_batch_of_its_own():
    durations = [1.0, 2.0, 50.0, 1.5]
    with pytest.warns(UserWarning, match="1 utterances are longer"):
        sampler = BucketBatchSampler(durations, 10.0)
    assert [2] in sampler.batches


def test_sampler_covers_every_utterance_once_per_epoch_and_reshuffles():
    durations = random_durations()
    sampler = BucketBatchSampler(durations, 60.0, shuffle=True, seed=1)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(durations)))
        orders.append([tuple(b) for b in batches])
    assert orders[0] != orders[1] != orders[2]
    sampler.set_epoch(1)
    assert [tuple(b) for b in sampler] == orders[1]  # the same epoch gives the same order (resumable)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_an_epoch_without_repeats_and_with_equal_batch_counts(world_size):
    durations = random_durations(301)
    seen = []
    counts = set()
    for rank in range(world_size):
        sampler = BucketBatchSampler(durations, 45.0, seed=7, num_replicas=world_size, rank=rank)
        sampler.set_epoch(2)
        batches = list(sampler)
        counts.add(len(batches))
        seen += [i for b in batches for i in b]
        assert all(len(b) * max(durations[i] for i in b) <= 45.0 for b in batches)
    assert len(counts) == 1
    assert sorted(seen) == list(range(len(durations)))


def test_splitting_for_ranks_refuses_when_it_would_need_repeats():
    with pytest.raises(ValueError, match="cannot be shared among 4 processes"):
        split_to_multiple([[0], [1], [2]], 4)
    assert len(split_to_multiple([[0, 1, 2, 3], [4]], 3)) == 3


def test_bucketing_pads_far_less_than_fixed_count_batches():
    durations = random_durations(1000)
    bucketed = padding_fraction(bucket_batches(durations, 60.0), durations)
    fixed = padding_fraction(fixed_size_batches(durations, 8), durations)
    assert bucketed < 0.05 < fixed
    assert math.isclose(padding_fraction([[0, 1]], [1.0, 1.0]), 0.0)
    assert math.isclose(padding_fraction([[0, 1]], [1.0, 3.0]), 1 - 4 / 6)


def test_crops_have_the_crop_length_and_short_clips_are_repeated_not_zero_padded(tmp_path):
    # A ramp stored as float: every sample's value says where in the file it came from.
    ramp = (np.arange(32000) / 32000).astype("float32")
    soundfile.write(str(tmp_path / "long.wav"), ramp, 16000, subtype="FLOAT")
    soundfile.write(str(tmp_path / "short.wav"), ramp[:4800], 16000, subtype="FLOAT")
    manifest = read_manifest(
        write_manifest(tmp_path / "m.jsonl", [
            {"id": "long", "audio": "long.wav", "duration": 2.0},
            {"id": "short", "audio": "short.wav", "duration": 0.3},
        ])
    )  # fmt: skip
    dataset = AudioDataset(manifest, 16000, crop_seconds=0.5)
    assert dataset.durations == [0.5, 0.5]
    torch.manual_seed(0)
    starts = set()
    for _ in range(4):  # each crop is a contiguous piece of the file, taken at a random place
        crop = dataset[0]["wav"]
        start = round(crop[0].item() * 32000)
        assert crop.numel() == 8000
        np.testing.assert_array_equal(crop.numpy(), ramp[start : start + 8000])
        starts.add(start)
    assert len(starts) > 1
    short = dataset[1]["wav"].numpy()
    assert short.size == 8000
    np.testing.assert_array_equal(short, np.concatenate([ramp[:4800], ramp[:3200]]))  # repeated, not zeros


def test_max_seconds_crops_only_long_clips_on_the_frame_grid_with_their_frame_targets(tmp_path):
    ramp = (np.arange(32000) / 32000).astype("float32")
    soundfile.write(str(tmp_path / "long.wav"), ramp, 16000, subtype="FLOAT")
    soundfile.write(str(tmp_path / "short.wav"), ramp[:4800], 16000, subtype="FLOAT")
    manifest = read_manifest(
        write_manifest(tmp_path / "m.jsonl", [
            {"id": "long", "audio": "long.wav", "duration": 2.0},
            {"id": "short", "audio": "short.wav", "duration": 0.3},
        ])
    )  # fmt: skip
    targets = [torch.arange(100), torch.arange(15)]  # one id per 20 ms frame: the frame's index in the clip
    dataset = AudioDataset(manifest, 16000, targets, frame_rate=50, max_seconds=0.5, target_frame_dim=0)
    assert dataset.durations == [0.5, 0.3]
    torch.manual_seed(0)
    starts = set()
    for _ in range(6):
        item = dataset[0]
        start = round(item["wav"][0].item() * 32000)
        assert item["wav"].numel() == 8000 and start % 320 == 0  # a whole frame's hop
        np.testing.assert_array_equal(item["wav"].numpy(), ramp[start : start + 8000])
        assert item["target"].tolist() == list(range(start // 320, start // 320 + 25))  # the crop's own frames
        starts.add(start)
    assert len(starts) > 1
    short = dataset[1]
    np.testing.assert_array_equal(short["wav"].numpy(), ramp[:4800])  # whole, not padded or repeated
    assert short["target"].tolist() == list(range(15))
    with pytest.raises(ValueError, match="frame_rate"):
        AudioDataset(manifest, 16000, targets, max_seconds=0.5, target_frame_dim=0)
    with pytest.raises(ValueError, match="excludes max_seconds"):
        AudioDataset(manifest, 16000, crop_seconds=0.5, max_seconds=0.5)


def test_run_seed_is_the_given_one_else_the_runs_seed_everything_else_zero(monkeypatch):
    from recipes.data import run_seed

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert run_seed(None) == 0 and run_seed(7) == 7
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert run_seed(None) == 3 and run_seed(7) == 7


def test_nan_audio_and_a_wrong_duration_are_errors_naming_the_manifest_line_and_id(tmp_path):
    wav = np.zeros(16000, dtype="float32")
    wav[100] = np.nan
    soundfile.write(str(tmp_path / "nan.wav"), wav, 16000, subtype="FLOAT")
    soundfile.write(str(tmp_path / "two.wav"), np.zeros(32000, dtype="float32"), 16000)
    entries = [{"id": "n", "audio": "nan.wav", "duration": 1.0}, {"id": "w", "audio": "two.wav", "duration": 200.0}]
    manifest = read_manifest(write_manifest(tmp_path / "m.jsonl", entries))
    with pytest.raises(AudioError, match=r"nan.wav holds 1 non-finite.*m.jsonl line 1, id n"):
        AudioDataset(manifest, 16000)[0]
    with pytest.raises(AudioError, match=r"2.000 s of audio but the manifest says duration 200.000 s.*line 2, id w"):
        AudioDataset(manifest, 16000)[1]
    with pytest.raises(AudioError, match=r"manifest says duration 200.000 s.*line 2, id w"):  # a crop reads less
        AudioDataset(manifest, 16000, crop_seconds=0.5)[1]


def test_samples_outside_the_unit_range_are_used_counted_and_warned_about_once(tmp_path):
    for name in ("loud1", "loud2"):
        soundfile.write(str(tmp_path / f"{name}.wav"), np.full(8000, 1.5, dtype="float32"), 16000, subtype="FLOAT")
    entries = [{"id": name, "audio": f"{name}.wav", "duration": 0.5} for name in ("loud1", "loud2")]
    dataset = AudioDataset(read_manifest(write_manifest(tmp_path / "m.jsonl", entries)), 16000)
    with pytest.warns(UserWarning, match=r"m.jsonl line 1 \(.*loud1.wav\) has samples up to 1.5, outside \[-1, 1\]"):
        assert float(dataset[0]["wav"].max()) == 1.5  # not clipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[1]
    assert dataset.out_of_range == 2


def test_manifest_lines_end_at_newlines_only_and_bad_bytes_name_their_line(tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    entry = {"id": "a", "audio": "a.wav", "duration": 0.5, "text": "ONE\u2028TWO\x85THREE"}
    path = tmp_path / "m.jsonl"
    path.write_text("\ufeff" + json.dumps(entry, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_manifest(path).entries[0]["text"] == "ONE\u2028TWO\x85THREE"  # one line: JSON Lines break at \n
    path.write_bytes(b"\n" + json.dumps(entry).encode() + b"\n\xff\xfe\n")
    with pytest.raises(ManifestError, match=r"m.jsonl line 3: not UTF-8 text"):
        read_manifest(path)
