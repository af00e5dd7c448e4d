import pytest

from recipes.cli import main
from recipes.speed import Speed, noise_batch, speed_table, time_upstream


def test_the_table_gives_ratios_against_the_first_upstream():
    student = Speed("student", parameters=2_000_000, hidden_states=3, seconds=0.05, audio_seconds=40.0)
    teacher = Speed("teacher", parameters=8_000_000, hidden_states=13, seconds=0.2, audio_seconds=40.0)
    surface = Speed("fbank", parameters=0, hidden_states=1, seconds=0.01, audio_seconds=40.0)
    header, rows = speed_table([student, teacher, surface])
    assert header[2] == header[5] == "vs first"
    assert rows[1] == ["teacher", "8.00", "4.00x", 13, "200.0", "4.00x", "0.0050"]
    assert rows[0][2] == rows[0][5] == "1.00x"
    _, rows = speed_table([surface, student])
    assert rows[1][2] == "-" and rows[1][5] == "5.00x"  # no parameters to compare with


def test_the_batch_is_seeded_and_silent_past_each_length():
    wavs, lengths = noise_batch(3, 2.0, 16000)
    assert lengths.tolist() == [16000, 24000, 32000] and wavs.shape == (3, 32000)
    assert wavs[0, 16000:].abs().sum() == 0 and wavs[0, :16000].abs().sum() > 0
    again, _ = noise_batch(3, 2.0, 16000)
    assert (again == wavs).all()


def test_time_upstream_measures_a_real_forward(tiny_dirs):
    speed = time_upstream(f"hf:{tiny_dirs['hubert']}", batch_size=2, seconds=1.0, repeats=2, device="cpu")
    assert speed.parameters > 0 and speed.hidden_states == 5 and speed.seconds > 0
    assert speed.audio_seconds == pytest.approx(1.5)
    with pytest.raises(ValueError, match="repeats"):
        time_upstream("fbank", repeats=0)


def test_strata_speed_prints_one_row_per_upstream(capsys):
    main(["speed", "fbank", "mfcc", "--batch-size", "1", "--seconds", "1", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| fbank " in out and "| mfcc " in out and "median of 1" in out
