"""The frozen-upstream feature cache: the round trip equals the live upstream, an extraction killed mid-run resumes
into the same index, a cache that does not match the run is refused, and training from it starts where training
from audio does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from training import first_step_loss

from recipes.audio import read_audio
from recipes.cache import (
    CachedFeatureDataset,
    CacheError,
    FeatureCache,
    FeatureCollate,
    IndexedUpstream,
    extract,
    indexed_upstream,
    parse_layers,
    upstream_fingerprint,
)
from recipes.data import AudioDataset, read_manifest, write_jsonl
from recipes.locking import LOCK
from recipes.module import SSLTaskModule, UpstreamConfig
from recipes.tasks import EmotionTask, SpeakerIdTask
from upstream import build_upstream
from upstream.hf import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clips(tmp_path) -> Path:
    """Noise clips of 1 s and 1.37 s (longer than a 0.5 s crop) and 0.3 s (shorter), with an fp32 fbank cache."""
    generator, entries = np.random.default_rng(0), []
    for name, seconds in [("long", 1.0), ("odd", 1.37), ("short", 0.3)]:
        wav = 0.1 * generator.standard_normal(int(seconds * 16000)).astype("float32")
        soundfile.write(str(tmp_path / f"{name}.wav"), wav, 16000, subtype="FLOAT")
        entries.append({"id": name, "audio": f"{name}.wav", "duration": seconds})
    manifest = write_jsonl(tmp_path / "clips.jsonl", entries)
    extract("fbank", [manifest], tmp_path / "fbank", dtype="float32", progress=False)
    return manifest


@pytest.fixture
def small(mini_corpus, tmp_path) -> Path:
    """Twelve emotion utterances of the mini corpus, with absolute audio paths."""
    manifest = read_manifest(mini_corpus / "emotion" / "train.jsonl")
    entries = [{**e, "audio": str(Path(e["audio"]).resolve())} for e in manifest.entries[:12]]
    return write_jsonl(tmp_path / "small.jsonl", entries)


def test_fp32_cache_equals_the_upstream_run_on_each_utterance_and_fp16_is_close(small, tmp_path):
    # Batches of one utterance (batch_seconds below any clip): the cached frames are what the upstream gives alone.
    extract("tiny_hubert", [small], tmp_path / "fp32", dtype="float32", batch_seconds=0.01, shard_seconds=5,
            progress=False)  # fmt: skip
    extract("tiny_hubert", [small], tmp_path / "fp16", dtype="float16", batch_seconds=0.01, progress=False)
    exact, half = FeatureCache(tmp_path / "fp32"), FeatureCache(tmp_path / "fp16")
    upstream = build_upstream("tiny_hubert")
    assert len(exact.index.shards) > 1 and exact.index.layers == list(range(upstream.num_layers))
    for entry in read_manifest(small).entries:
        wav = read_audio(entry["audio"], upstream.sample_rate)
        with torch.no_grad():
            live = upstream(wav[None])
        expected = torch.stack(live.hidden_states)[:, 0, : int(live.lengths[0])]
        assert torch.equal(exact.hidden(entry["id"]), expected)
        assert torch.allclose(half.hidden(entry["id"]), expected, rtol=1e-2, atol=1e-2)
        assert torch.equal(exact.hidden(entry["id"], 2, 5), expected[:, 2:5])


def test_cached_batches_are_one_block_in_the_stored_type_padded_with_zeros(small, tmp_path):
    """A float16 cache is batched as float16 (half the bytes per epoch); int8 comes scaled, in float32."""
    for dtype, stored in [("float16", torch.float16), ("int8", torch.float32)]:
        extract("tiny_hubert", [small], tmp_path / dtype, dtype=dtype, progress=False)
        cache = FeatureCache(tmp_path / dtype)
        dataset = CachedFeatureDataset(read_manifest(small), cache, targets=list(range(12)))
        items = [dataset[i] for i in (0, 5, 9)]
        batch = FeatureCollate()(items)
        block, lengths = batch["hidden_states"], batch["lengths"]
        assert block.dtype == stored and block.shape[:2] == (cache.index.num_layers, 3)
        assert (
            batch["targets"].tolist() == [0, 5, 9] and lengths.max() == block.size(2) and lengths.min() < lengths.max()
        )
        for row, item in enumerate(items):
            frames = int(lengths[row])
            assert torch.equal(block[:, row, :frames].float(), cache.hidden(item["id"]))
            assert torch.all(block[:, row, frames:] == 0)


def test_an_int8_cache_is_a_quarter_of_fp32_within_half_a_step_of_each_channels_scale(small, tmp_path):
    settings = {"batch_seconds": 0.01, "shard_seconds": 5, "progress": False}
    extract("tiny_hubert", [small], tmp_path / "fp32", dtype="float32", **settings)
    extract("tiny_hubert", [small], tmp_path / "int8", dtype="int8", **settings)
    exact, small8 = FeatureCache(tmp_path / "fp32"), FeatureCache(tmp_path / "int8")
    assert small8.index.dtype == "int8" and small8.index.shards == exact.index.shards
    assert small8.size_bytes() < 0.3 * exact.size_bytes()
    errors, norms = [], []
    for utterance in exact.index.utterances:
        shard = exact.index.utterances[utterance][0]
        approx, reference = small8.hidden(utterance), exact.hidden(utterance)
        scale = small8._handles[shard][1]  # [L', 1, D]: the shard's per-layer, per-channel step
        assert bool(((approx - reference).abs() <= scale / 2 + 1e-6).all())  # rounding, never clipping
        assert torch.equal(small8.hidden(utterance, 2, 5), approx[:, 2:5])
        errors.append((approx - reference).pow(2).sum())
        norms.append(reference.pow(2).sum())
    assert float((sum(errors) / sum(norms)).sqrt()) < 0.01  # relative RMS error under 1 %


def test_a_shard_write_that_fails_in_the_writer_thread_stops_the_extraction_and_keeps_the_shards_before(
    small, tmp_path, monkeypatch
):
    """Shards are written by a thread while the model runs on: its error still stops the run, and a rerun writes
    only what is missing."""
    import recipes.cache as cache_module

    save, calls = cache_module.save_file, []

    def failing_third(tensors, path, metadata):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(f"No space left on device: {path}")
        save(tensors, path, metadata=metadata)

    monkeypatch.setattr(cache_module, "save_file", failing_third)
    out, settings = tmp_path / "cache", {"dtype": "float32", "shard_seconds": 5, "progress": False}
    with pytest.raises(OSError, match="No space left"):
        extract("tiny_hubert", [small], out, **settings)
    kept = sorted(p.name for p in out.glob("shard_*.safetensors"))
    assert len(kept) >= 2 and "shard_00002.safetensors" not in kept and not (out / "index.json").exists()
    monkeypatch.setattr(cache_module, "save_file", save)
    index = extract("tiny_hubert", [small], out, **settings)
    assert len(index.utterances) == 12 and len(index.shards) > 3


def test_the_default_batch_is_20_seconds_of_audio_on_a_cpu(small, tmp_path, monkeypatch):
    import recipes.cache as cache_module

    seen = []
    original = cache_module.ShardBatches

    def recording(shards, batch_seconds, *args):
        seen.append(batch_seconds)
        return original(shards, batch_seconds, *args)

    monkeypatch.setattr(cache_module, "ShardBatches", recording)
    extract("tiny_hubert", [small], tmp_path / "cache", device="cpu", progress=False)
    extract("tiny_hubert", [small], tmp_path / "other", device="cpu", batch_seconds=7, progress=False)
    assert seen == [cache_module.DEFAULT_BATCH_SECONDS["cpu"], 7] and seen[0] == 20


def test_a_killed_extraction_resumes_from_its_finished_shards_into_the_same_index(mini_corpus, tmp_path):
    # One utterance a shard, 256 shards: the kill lands after the first shard and long before the last.
    manifest, out = mini_corpus / "emotion" / "train.jsonl", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "recipes.cli", "extract", "--upstream", "tiny_hubert", "--manifest", str(manifest),
               "--out", str(out), "--shard-seconds", "0.1", "--batch-seconds", "0.01", "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "shard_00001.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(out.glob("shard_*.safetensors"))
    assert finished and not (out / "index.json").exists()  # killed before the end: no index yet
    assert (out / LOCK).is_file()  # left by the killed process: stale, taken over below
    with pytest.raises(CacheError, match="unfinished extraction"):
        FeatureCache(out)
    stamps = {path.name: path.stat().st_mtime_ns for path in finished}
    settings = {"shard_seconds": 0.1, "batch_seconds": 0.01, "progress": False}
    resumed = extract("tiny_hubert", [manifest], out, **settings)
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())  # not written again
    assert not (out / LOCK).exists()
    clean = extract("tiny_hubert", [manifest], tmp_path / "clean", **settings)
    assert resumed.utterances == clean.utterances and resumed.shards == clean.shards
    assert len(resumed.shards) == len(resumed.utterances) > len(finished)
    for utterance in list(resumed.utterances)[::16]:
        assert torch.equal(FeatureCache(out).hidden(utterance), FeatureCache(tmp_path / "clean").hidden(utterance))


def test_a_cache_that_does_not_match_the_run_is_refused_with_the_reason(small, tmp_path):
    extract("tiny_hubert", [small], tmp_path / "cache", progress=False)
    cache = FeatureCache(tmp_path / "cache")
    manifest = read_manifest(small)
    hubert, wavlm = build_upstream("tiny_hubert"), build_upstream("tiny_wavlm")
    cache.check("tiny_hubert", upstream_fingerprint(hubert), manifest)  # the matching run passes
    with pytest.raises(CacheError, match="holds features of tiny_hubert .* upstream is tiny_wavlm"):
        cache.check("tiny_wavlm", upstream_fingerprint(wavlm), manifest)
    with torch.no_grad():
        hubert.model.encoder.layers[0].attention.k_proj.weight.add_(0.1)  # other weights, same name
    with pytest.raises(CacheError, match="fingerprint"):
        cache.check("tiny_hubert", upstream_fingerprint(hubert), manifest)
    extract("tiny_hubert", [small], tmp_path / "some", layers="0,2", progress=False)
    with pytest.raises(CacheError, match=r"has layers \[0, 2\] of 5; training reads every hidden state"):
        FeatureCache(tmp_path / "some").check("tiny_hubert", cache.index.fingerprint, manifest)
    extra = write_jsonl(tmp_path / "more.jsonl", [*manifest.entries, {**manifest.entries[0], "id": "new"}])
    with pytest.raises(CacheError, match="1 utterance\\(s\\) of .*more.jsonl are not in .*'new'"):
        cache.check("tiny_hubert", cache.index.fingerprint, read_manifest(extra))
    small.write_text(small.read_text() + "\n")  # the extracted manifest changed
    with pytest.raises(CacheError, match="changed since"):
        cache.check("tiny_hubert", cache.index.fingerprint, read_manifest(small))
    with pytest.raises(CacheError, match="not among the upstream's hidden states 0-4"):
        parse_layers("0,7", 5)


def mini_splits(corpus: Path, task: str) -> dict[str, str]:
    return {split: str(corpus / task / f"{split}.jsonl") for split in ("train", "valid")}


def test_training_from_the_cache_gives_the_first_step_loss_of_training_from_audio(mini_corpus, tmp_path):
    manifests = [mini_corpus / "emotion" / f"{split}.jsonl" for split in ("train", "valid")]
    extract("fbank", manifests, tmp_path / "cache", dtype="float32", progress=False)
    splits = mini_splits(mini_corpus, "emotion")
    live, cached = first_step_loss(splits, None), first_step_loss(splits, str(tmp_path / "cache"))
    assert cached == pytest.approx(live, rel=1e-5)


def test_a_pooling_family_trains_from_its_cache_as_from_audio(mini_corpus, tmp_path):
    # SEW's layers run at 25 Hz on pooled CNN frames: the cache, the frame counts and the padded batches must agree.
    manifests = [mini_corpus / "emotion" / f"{split}.jsonl" for split in ("train", "valid")]
    index = extract("tiny_sew", manifests, tmp_path / "cache", dtype="float32", progress=False)
    cache, upstream = FeatureCache(tmp_path / "cache"), build_upstream("tiny_sew")
    entry = read_manifest(manifests[0]).entries[0]
    with torch.no_grad():
        live = upstream(read_audio(entry["audio"], 16000)[None])
    assert index.layers == list(range(5)) and cache.hidden(entry["id"]).shape == (5, int(live.lengths[0]), 64)
    splits = mini_splits(mini_corpus, "emotion")
    live_loss = first_step_loss(splits, None, upstream="tiny_sew")
    cached_loss = first_step_loss(splits, str(tmp_path / "cache"), upstream="tiny_sew")
    assert cached_loss == pytest.approx(live_loss, rel=1e-4)


def test_training_from_the_cache_with_crops_gives_the_first_step_loss_of_training_from_audio(mini_corpus, tmp_path):
    # Every clip is longer than the 1 s crop, so every crop is inside its clip, where fbank's cached frames are the
    # crop's own frames: the same draws must give the same batch.
    manifests = [mini_corpus / "speaker_id" / f"{split}.jsonl" for split in ("train", "valid")]
    train = read_manifest(manifests[0])
    assert min(train.durations) > 1.0
    speakers = sorted({entry["speaker"] for entry in train.entries})
    extract("fbank", manifests, tmp_path / "cache", dtype="float32", progress=False)
    splits = mini_splits(mini_corpus, "speaker_id")
    live = first_step_loss(splits, None, SpeakerIdTask(speakers, crop_seconds=1.0))
    cached = first_step_loss(splits, str(tmp_path / "cache"), SpeakerIdTask(speakers, crop_seconds=1.0))
    assert cached == pytest.approx(live, rel=1e-5)


def test_a_clip_shorter_than_the_crop_is_tiled_to_the_crop_in_frames_as_audio_is_in_samples(clips, tmp_path):
    fbank, cache = build_upstream("fbank"), FeatureCache(tmp_path / "fbank")
    frames = int(fbank.frame_lengths(torch.tensor([8000]))[0])  # 48: what fbank makes of a 0.5 s crop
    manifest = read_manifest(clips)
    dataset = CachedFeatureDataset(manifest, cache, crop_seconds=0.5, crop_frames=frames)
    assert dataset.durations == [0.5, 0.5, 0.5]  # batches are sized as AudioDataset's
    whole = cache.hidden("short")
    clip = whole.size(1)  # 28 frames of 0.3 s
    tiled = dataset[2]["hidden"]
    assert tiled.shape == (1, frames, 80)
    assert torch.equal(tiled, torch.cat([whole, whole[:, : frames - clip]], dim=1))
    # The tiled audio's frames agree up to the seam, where its windows start to straddle the two copies.
    wav = AudioDataset(manifest, 16000, crop_seconds=0.5, frame_rate=fbank.frame_rate)[2]["wav"]
    with torch.no_grad():
        live = fbank(wav[None])
    assert int(live.lengths[0]) == frames
    torch.testing.assert_close(live.hidden_states[0][:, :clip], tiled[:, :clip])


def test_with_one_seed_cached_and_live_datasets_take_the_same_crops_of_the_same_utterances(clips, tmp_path):
    fbank, cache, manifest = build_upstream("fbank"), FeatureCache(tmp_path / "fbank"), read_manifest(clips)
    live = AudioDataset(manifest, 16000, crop_seconds=0.5, frame_rate=fbank.frame_rate)
    cached = CachedFeatureDataset(manifest, cache, crop_seconds=0.5, crop_frames=48)
    starts: dict[str, set[int]] = {"long": set(), "odd": set()}
    for seed in range(6):
        torch.manual_seed(seed)
        wavs = [live[i]["wav"] for i in range(len(manifest))]
        torch.manual_seed(seed)
        hiddens = [cached[i]["hidden"] for i in range(len(manifest))]
        for entry, wav, hidden in zip(manifest.entries, wavs, hiddens, strict=True):
            assert wav.numel() == 8000 and hidden.shape == (1, 48, 80)
            if entry["id"] == "short":
                continue  # tiled: the test above
            whole = cache.hidden(entry["id"])
            start = next(k for k in range(whole.size(1) - 47) if torch.equal(whole[:, k : k + 48], hidden))
            # The live crop starts on that frame, in samples, and its fbank is those cached frames.
            assert torch.equal(wav, read_audio(entry["audio"], 16000)[start * 160 : start * 160 + 8000])
            with torch.no_grad():
                torch.testing.assert_close(fbank(wav[None]).hidden_states[0], hidden)
            starts[entry["id"]].add(start)
    assert all(len(found) > 2 for found in starts.values())  # the crops move with the seed


def test_a_trainable_upstream_or_another_upstream_cannot_train_from_the_cache(mini_corpus, tmp_path, capsys):
    from recipes.cli import main

    manifests = [str(mini_corpus / "emotion" / f"{split}.jsonl") for split in ("train", "valid")]
    extract("tiny_hubert", manifests, tmp_path / "cache", progress=False)
    common = ["fit", "--config", str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml"), "--data.train", manifests[0],
              "--data.valid", manifests[1], "--data.features", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    trainable = [*common, "--model.upstream.name", "tiny_hubert", "--model.upstream.trainable", "all",
                 "--trainer.default_root_dir", str(tmp_path / "a")]  # fmt: skip
    assert main(trainable) == 2
    assert "stand in for a frozen upstream only" in capsys.readouterr().err
    other = [*common, "--model.upstream.name", "tiny_wavlm", "--trainer.default_root_dir", str(tmp_path / "b")]
    assert main(other) == 2
    assert "holds features of tiny_hubert" in capsys.readouterr().err


def test_bf16_autocast_on_the_cpu_is_an_option_recorded_in_the_index(small, tmp_path):
    settings = {"dtype": "float32", "batch_seconds": 0.01, "progress": False}
    extract("tiny_hubert", [small], tmp_path / "fp32", **settings)
    extract("tiny_hubert", [small], tmp_path / "bf16", autocast="bf16", **settings)
    exact, half = FeatureCache(tmp_path / "fp32"), FeatureCache(tmp_path / "bf16")
    assert (exact.index.autocast, half.index.autocast) == ("fp32", "bf16")  # what ran (auto: fp32 on a CPU)
    utterance = next(iter(exact.index.utterances))
    reference, approx = exact.hidden(utterance), half.hidden(utterance)
    assert not torch.equal(reference, approx)  # the forward really ran in bf16 ...
    assert float((approx - reference).abs().max() / reference.abs().max()) < 0.05  # ... close to float32
    with pytest.raises(CacheError, match="autocast must be one of auto, bf16, fp32"):
        extract("tiny_hubert", [small], tmp_path / "x", autocast="fp8")


def test_a_fit_from_the_cache_describes_its_frozen_upstream_from_the_index_and_trains_as_from_audio(
    mini_corpus, tmp_path
):
    folder = tmp_path / "hubert"
    tiny_model("hubert").save_pretrained(folder)  # loading from a folder draws from torch's generator
    name, manifests = f"hf:{folder}", [mini_corpus / "emotion" / f"{split}.jsonl" for split in ("train", "valid")]
    extract(name, manifests, tmp_path / "cache", dtype="float32", progress=False)
    built = build_upstream(name)
    module = SSLTaskModule(EmotionTask(), upstream=UpstreamConfig(name=name), features=str(tmp_path / "cache"))
    described = module.upstream
    assert isinstance(described, IndexedUpstream) and not list(described.parameters())
    fingerprint = FeatureCache(tmp_path / "cache").index.fingerprint
    assert module.upstream_fingerprint == upstream_fingerprint(built) == fingerprint
    for key in ("num_layers", "hidden_size", "sample_rate", "min_samples", "frame_rate"):
        assert getattr(described, key) == getattr(built, key), key
    # The head starts from the same weights, so the first step is the same as from audio.
    splits = mini_splits(mini_corpus, "emotion")
    live = first_step_loss(splits, None, upstream=name)
    assert first_step_loss(splits, str(tmp_path / "cache"), upstream=name) == pytest.approx(live, rel=1e-5)
    # Its checkpoint is a live fit's: no upstream weights, the name and fingerprint; loading builds the upstream.
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert "features" not in checkpoint["hyper_parameters"]
    assert not any(key.startswith("upstream.") for key in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = SSLTaskModule.from_checkpoint(tmp_path / "model.ckpt")
    assert type(loaded.upstream) is type(built)
    # What needs the model itself builds it on first use: the frames of a crop, audio.
    wav = read_audio(read_manifest(manifests[0]).entries[0]["audio"], 16000)[None]
    assert torch.equal(described.frame_lengths(torch.tensor([16000])), built.frame_lengths(torch.tensor([16000])))
    with torch.no_grad():
        assert torch.equal(described(wav).hidden_states[-1], built(wav).hidden_states[-1])
    # ... after checking it still loads the weights the cache was extracted from.
    tiny_model("hubert", seed=1).save_pretrained(folder)
    stale = SSLTaskModule(EmotionTask(), upstream=UpstreamConfig(name=name), features=str(tmp_path / "cache"))
    with pytest.raises(CacheError, match="now loads other weights"):
        stale.upstream.frame_lengths(torch.tensor([16000]))


def test_an_index_without_the_upstreams_input_or_of_another_upstream_has_the_upstream_built(small, tmp_path):
    extract("tiny_hubert", [small], tmp_path / "cache", progress=False)
    assert indexed_upstream("tiny_hubert", tmp_path / "cache") is not None
    assert indexed_upstream("tiny_wavlm", tmp_path / "cache") is None  # the cache's check says what is wrong
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    del index["sample_rate"], index["min_samples"]  # as strata wrote it before they were recorded
    (tmp_path / "cache" / "index.json").write_text(json.dumps(index))
    assert indexed_upstream("tiny_hubert", tmp_path / "cache") is None
    module = SSLTaskModule(EmotionTask(), upstream=UpstreamConfig(name="tiny_hubert"), features=str(tmp_path / "cache"))
    assert not isinstance(module.upstream, IndexedUpstream) and list(module.upstream.parameters())


def test_strata_fit_from_a_cache_imports_no_transformers_model_code(mini_corpus, tmp_path):
    manifests = [str(mini_corpus / "emotion" / f"{split}.jsonl") for split in ("train", "valid")]
    extract("tiny_hubert", manifests, tmp_path / "cache", progress=False)
    arguments = ["fit", "--config", str(ROOT / "egs" / "mini" / "conf" / "emotion.yaml"), "--data.train", manifests[0],
                 "--data.valid", manifests[1], "--data.features", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
                 "--trainer.enable_progress_bar", "false", "--model.upstream.name", "tiny_hubert",
                 "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    script = (
        "import sys\nfrom recipes.cli import main\n"
        f"assert main({arguments!r}) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('transformers.modeling_utils', 'upstream.hf'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    # Loading its checkpoint builds the real upstream from upstream.hf: the modules checked above are the ones a
    # built upstream imports.
    loaded = SSLTaskModule.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert type(loaded.upstream).__module__ == "upstream.hf"
