"""detstack.progress: a tqdm bar on a terminal, a bounded number of plain lines in a log."""

from __future__ import annotations

import io
import threading
import time

import pytest

from detstack.errors import ConfigError
from detstack.progress import ENV_VAR, progress
from training.synth import SynthConfig, write_synthetic_dataset


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, the way a real tty does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_progress_override(monkeypatch):
    # The developer's own setting must not change what these tests see.
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_a_log_stream_gets_no_carriage_return_and_at_most_a_dozen_lines_for_10000_items():
    log = io.StringIO()
    bar = progress(range(10_000), desc="decoding images", unit="img", stream=log, min_interval_s=0)
    items = list(bar)
    assert items == list(range(10_000))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12
    assert lines[0].startswith("decoding images: 1000/10000 img (10%)")
    assert lines[-1].startswith("decoding images: done, 10000 img in ")
    assert lines[-1].endswith("img/s)")


def test_a_terminal_stream_gets_a_tqdm_bar():
    terminal = _Terminal()
    bar = progress(range(50), desc="synth", unit="img", stream=terminal)
    assert bar.mode == "bar"
    assert list(bar) == list(range(50))
    text = terminal.getvalue()
    assert "\r" in text
    assert "synth:" in text and "/50" in text


def test_update_style_counts_bytes_and_the_final_line_carries_the_scaled_total():
    log = io.StringIO()
    with progress(
        total=5_300_000, desc="weights.pth", unit="B", unit_scale=True, stream=log, min_interval_s=0
    ) as bar:
        for _ in range(53):
            bar.update(100_000)
    assert bar.n == 5_300_000
    lines = log.getvalue().splitlines()
    assert len(lines) <= 11
    assert lines[-1].startswith("weights.pth: done, 5.3 MB in ")
    assert "/5.3 MB (" in lines[0]


def test_an_unknown_total_writes_a_line_each_interval_and_one_at_the_end():
    log = io.StringIO()

    def slow():
        for item in range(3):
            time.sleep(0.02)
            yield item

    bar = progress(slow(), desc="stream", stream=log, interval_s=0.01, min_interval_s=0)
    assert list(bar) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "stream: 1 it",
        "stream: 2 it",
        "stream: 3 it",
        "stream: done",
    ]


def test_a_loop_left_early_says_where_it_stopped():
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        for item in progress(range(100), desc="epoch 1", stream=log):
            if item == 41:
                raise RuntimeError("non-finite loss")
    assert log.getvalue().splitlines()[-1].startswith("epoch 1: stopped at 41/100 it after ")


def test_postfix_values_appear_on_log_lines():
    log = io.StringIO()
    bar = progress(range(10), desc="epoch 1", stream=log, min_interval_s=0)
    for _ in bar:
        bar.set_postfix(loss="0.512")
    assert "loss=0.512" in log.getvalue().splitlines()[0]


def test_a_loop_over_in_a_moment_writes_only_its_final_line():
    log = io.StringIO()
    list(progress(range(4), desc="evaluate", stream=log))
    lines = log.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("evaluate: done, 4 it in ")


def test_close_is_idempotent_so_a_final_line_is_written_once():
    log = io.StringIO()
    bar = progress(range(3), desc="evaluate", stream=log)
    list(bar)
    bar.close()
    assert log.getvalue().count("evaluate: done") == 1


def test_disabled_progress_writes_nothing_but_still_yields_and_counts():
    log = io.StringIO()
    bar = progress(range(7), desc="x", stream=log, enabled=False)
    assert list(bar) == list(range(7))
    assert bar.n == 7
    assert log.getvalue() == ""


def test_the_environment_variable_forces_lines_on_a_terminal_and_off_anywhere(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "lines")
    terminal = _Terminal()
    list(progress(range(20), desc="synth", stream=terminal))
    assert "\r" not in terminal.getvalue()
    assert terminal.getvalue().splitlines()[-1].startswith("synth: done, 20 it")

    monkeypatch.setenv(ENV_VAR, "off")
    terminal = _Terminal()
    list(progress(range(20), desc="synth", stream=terminal))
    assert terminal.getvalue() == ""


def test_an_explicit_mode_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "off")
    log = io.StringIO()
    list(progress(range(5), desc="x", stream=log, mode="lines"))
    assert log.getvalue().startswith("x: done, 5 it")


def test_an_unknown_mode_in_the_environment_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fancy")
    with pytest.raises(ConfigError, match=r"DETSTACK_PROGRESS.*auto, bar, lines, off.*'fancy'"):
        progress(range(3), desc="x", stream=io.StringIO())


def test_a_non_positive_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="interval_s"):
        progress(range(3), desc="x", stream=io.StringIO(), interval_s=0)


def test_updates_from_several_threads_are_all_counted():
    log = io.StringIO()
    with progress(total=8_000, desc="score", unit="task", stream=log) as bar:

        def work():
            for _ in range(1_000):
                bar.update(1)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert bar.n == 8_000
    assert log.getvalue().splitlines()[-1].startswith("score: done, 8000 task")


def test_the_default_stream_is_stderr_at_call_time(capsys):
    list(progress(range(4), desc="default"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("default: done, 4 it")


def test_synth_log_output_has_no_carriage_return_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # Regression (issue 11): tqdm drew \r frames into CI logs and tee'd files.
    write_synthetic_dataset(tmp_path, SynthConfig(images=3, size=48), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("synth: done, 3 img in ")


def test_a_line_on_time_is_not_followed_a_moment_later_by_a_percent_line(monkeypatch):
    """Regression: a 30-s line at 39 % was followed one second later by a line at 40 %."""

    class Clock:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

    monkeypatch.setattr("detstack.progress.time", Clock)
    log = io.StringIO()
    with progress(total=100, desc="epoch", stream=log, interval_s=30.0, min_interval_s=1.0) as bar:
        for _ in range(30):  # 0.2 s each: lines at 10, 20 and 30 %
            Clock.now += 0.2
            bar.update()
        for _ in range(9):  # 31..39 %, 3.5 s each: the 30-s line lands at 39 %
            Clock.now += 3.5
            bar.update()
        Clock.now += 1.1  # 40 %, 1.1 s after the line on time
        bar.update()
        for _ in range(10):  # on to 50 %
            Clock.now += 0.2
            bar.update()
    counts = [line.split(":")[1].split("/")[0].strip() for line in log.getvalue().splitlines()]
    assert counts[:5] == ["10", "20", "30", "39", "50"]
