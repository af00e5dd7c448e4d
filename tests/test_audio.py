"""Audio comes in mono float32 at the asked rate, or with an error naming the file and the problem."""

import numpy as np
import pytest
import soundfile
import torch

from recipes.audio import AudioError, read_audio, tone


def write(path, data, rate=16000):
    soundfile.write(path, data, rate)
    return path


def test_reads_a_segment_in_seconds(tmp_path):
    ramp = np.linspace(-0.5, 0.5, 16000, dtype="float32")
    path = write(tmp_path / "ramp.wav", ramp)
    segment = read_audio(path, 16000, start=0.25, end=0.5)
    assert segment.dtype == torch.float32 and segment.shape == (4000,)
    assert torch.allclose(segment, torch.from_numpy(ramp[4000:8000]), atol=1e-4)


def test_resamples_to_the_asked_rate(tmp_path):
    path = write(tmp_path / "tone8k.wav", tone(1.0, 440.0, 8000).numpy(), 8000)
    wav = read_audio(path, 16000)
    assert wav.shape == (16000,)
    spectrum = torch.fft.rfft(wav).abs()
    assert int(spectrum.argmax()) == 440  # 1 s of audio: bin k is k Hz


def test_flac_reads_like_wav(tmp_path):
    data = tone(0.5).numpy()
    wav = read_audio(write(tmp_path / "a.wav", data), 16000)
    flac = read_audio(write(tmp_path / "a.flac", data), 16000)
    assert torch.allclose(wav, flac, atol=1e-4)


def test_bad_audio_is_named_in_the_error(tmp_path):
    with pytest.raises(AudioError, match="missing.wav does not exist"):
        read_audio(tmp_path / "missing.wav", 16000)
    with pytest.raises(AudioError, match="empty.wav is empty"):
        read_audio(write(tmp_path / "empty.wav", np.zeros(0, dtype="float32")), 16000)
    with pytest.raises(AudioError, match="2 channels"):
        read_audio(write(tmp_path / "stereo.wav", np.zeros((100, 2), dtype="float32")), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="could not read audio file .*junk.wav"):
        read_audio(junk, 16000)


def test_non_finite_samples_are_an_error_naming_the_file_the_count_and_the_time(tmp_path):
    wav = np.zeros(16000, dtype="float32")
    wav[8000], wav[8001] = np.nan, np.inf
    soundfile.write(str(tmp_path / "nan.wav"), wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav holds 2 non-finite samples \(NaN or inf\), the first at 0.500 s"):
        read_audio(tmp_path / "nan.wav", 16000)
    with pytest.raises(AudioError, match="the first at 0.500 s"):  # the time in the file, not in the segment
        read_audio(tmp_path / "nan.wav", 16000, start=0.25, end=0.75)
    assert read_audio(tmp_path / "nan.wav", 16000, start=0.0, end=0.4).isfinite().all()  # the clean part reads


def test_a_duration_the_file_does_not_have_is_an_error_naming_both(tmp_path):
    soundfile.write(str(tmp_path / "two.wav"), np.zeros(32000, dtype="float32"), 16000)
    with pytest.raises(AudioError, match=r"two.wav holds 2.000 s of audio but the manifest says duration 200.000 s"):
        read_audio(tmp_path / "two.wav", 16000, duration=200.0)
    assert read_audio(tmp_path / "two.wav", 16000, duration=2.09).numel() == 32000  # within 0.1 s: rounding
    assert read_audio(tmp_path / "two.wav", 16000, duration=1.91).numel() == 32000
    with pytest.raises(AudioError, match="manifest says duration 1.850 s"):  # beyond 0.1 s and 5 %
        read_audio(tmp_path / "two.wav", 16000, duration=1.85)
    with pytest.raises(AudioError, match=r"holds 2.000 s of audio but the segment ends at 3.000 s"):
        read_audio(tmp_path / "two.wav", 16000, start=1.0, end=3.0)
