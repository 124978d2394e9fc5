"""The benchmarks' mechanics (`make bench`): FLOP counts, the time-to-accuracy hook, the turn
scaling, the RSS measurement and the table of docs/performance.md. No timings are asserted: speed is measured by
`make bench`, never by a unit test."""

import sys

import pytest

from benchmarks import __main__ as bench
from benchmarks import chat, memory, training
from contextbot.model.network import ModelConfig
from contextbot.chat import ChatSession


@pytest.mark.parametrize("cell,gates,referents", [("gru", 3, 0), ("lstm", 4, 0), ("rnn", 1, 0),
                                                  ("gru", 3, 5)])
def test_flops_per_token_counts_every_matmul_forward_and_backward(cell, gates, referents):
    c = ModelConfig(vocab_size=20, cell=cell, embed=8, hidden=16, layers=2, referents=referents)
    fwd = 2 * gates * 16 * (8 + 16) + 2 * gates * 16 * (16 + 16) + 2 * 16 * 20 + 2 * 16 * 2 * referents
    assert training.flops_per_token(c) == 3 * fwd
    # The shapes the roofline times are exactly those FLOPs over a batch x seq_len step.
    shapes = training.matmul_shapes(c, batch=4, seq_len=10)
    assert sum(2 * m * k * n * count for _, m, k, n, count in shapes) == fwd * 4 * 10


def test_turn_scaling_reports_growing_history_and_keeps_the_conversation(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    rows = chat.turn_scaling(s, at=(1, 3, 6), repeats=2, refeed_repeats=1)
    assert [r["turn"] for r in rows] == [1, 3, 6]
    assert rows[0]["history_chars"] == 0 < rows[1]["history_chars"] < rows[2]["history_chars"]
    assert all(r["carried_ms"] > 0 and r["refeed_ms"] > 0 for r in rows)
    assert s.chars_seen > 0  # the carried conversation is put back after the re-fed turns


def test_peak_rss_measures_the_child_not_the_parent():
    rss, out = memory.peak_rss([sys.executable, "-c", "b = bytearray(200 * 2**20); print('ok')"])
    assert out.strip() == "ok" and rss >= 200 * 2 ** 20
    with pytest.raises(RuntimeError):
        memory.peak_rss([sys.executable, "-c", "raise SystemExit(3)"])


def test_peak_rss_does_not_count_a_large_benchmark_process():
    """After the training parts the benchmark holds hundreds of MB; a forked child's ru_maxrss
    would include them. A bare Python must still measure as a bare Python."""
    ballast = bytearray(400 * 2 ** 20)  # touched: resident in this process
    rss, out = memory.peak_rss([sys.executable, "-c", "print('ok')"])
    assert out.strip() == "ok" and rss < 100 * 2 ** 20 and len(ballast)


def test_performance_page_block_is_rewritten_from_the_results(tmp_path, monkeypatch):
    page = tmp_path / "performance.md"
    page.write_text(f"intro\n{bench.START}\nold\n{bench.END}\nrest\n", encoding="utf-8")
    monkeypatch.setattr(bench, "PAGE", page)
    r = {"machine": "test box", "date": "2026-01-01",
         "chat": {"latency": {"median_ms": 0.9, "p95_ms": 1.5, "first_char_median_ms": 0.2,
                              "chars_per_sec": 40000, "ms_per_step": 0.018},
                  "turns": [{"turn": 1, "history_chars": 0, "carried_ms": 1.0, "refeed_ms": 1.0}],
                  "last_over_first": 1.0}}
    assert bench.write_page(r)
    text = page.read_text(encoding="utf-8")
    assert "old" not in text and "test box" in text and "0.90 / 1.50 ms" in text and "18.0 µs/char" in text
    assert text.startswith("intro\n") and text.endswith("rest\n")


def test_a_page_without_the_block_is_left_alone(tmp_path, monkeypatch):
    page = tmp_path / "performance.md"
    page.write_text("no block here\n", encoding="utf-8")
    monkeypatch.setattr(bench, "PAGE", page)
    assert not bench.write_page({"machine": "test box", "date": "2026-01-01"})
    assert page.read_text(encoding="utf-8") == "no block here\n"
    monkeypatch.setattr(bench, "PAGE", tmp_path / "missing.md")
    assert not bench.write_page({"machine": "test box", "date": "2026-01-01"})


def test_performance_page_has_the_bench_block():
    assert bench.PAGE == bench.REPO / "docs" / "performance.md"
    text = bench.PAGE.read_text(encoding="utf-8")
    assert bench.START in text and bench.END in text


def test_performance_page_table_is_what_bench_writes_from_bench_json():
    """The committed table is exactly what `make bench` would write from docs/bench.json."""
    import json
    text = bench.PAGE.read_text(encoding="utf-8")
    block = text.split(bench.START, 1)[1].split(bench.END, 1)[0]
    assert block.strip() == bench.markdown(json.loads(bench.OUT.read_text(encoding="utf-8")))


def test_time_to_accuracy_at_another_batch_writes_nothing(monkeypatch):
    """`--batch N` measures a recipe that is not the default: its figure is shown, never written
    over the default's in docs/bench.json or docs/performance.md."""
    seen = {}

    def fake_run(minutes, batch):
        seen["batch"] = batch
        return {"target": 0.99, "batch": batch, "reached": True, "seconds": 216.9,
                "limit_minutes": minutes, "curve": [{"step": 50, "seconds": 216.9, "near": 0.99}]}

    written = []
    monkeypatch.setattr(bench.accuracy, "run", fake_run)
    monkeypatch.setattr(bench, "write_atomic", lambda path, data: written.append(path))
    assert bench.main(["--only", "accuracy", "--batch", "8"]) == 0
    assert seen == {"batch": 8} and written == []
    assert bench.main(["--only", "accuracy"]) == 0  # the default recipe's figure is written
    assert seen == {"batch": None} and written[0] == bench.OUT
    row = bench.rows({"accuracy": fake_run(15.0, 8)})[0]
    assert row[:2] == ("time to 99% on pronouns 0-3 turns back (batch 8)", "3.6 min")


@pytest.mark.parametrize("argv", [["--only", "accuracy", "--batch", "0"],
                                  ["--only", "accuracy", "--batch", "-3"],
                                  ["--only", "accuracy", "--batch", "x"],
                                  ["--only", "chat", "--batch", "32"],
                                  ["--quick", "--batch", "32"]])
def test_a_batch_below_one_or_without_the_accuracy_part_is_a_usage_error(argv, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a refused command measured something")

    for part in (bench.accuracy, bench.chat, bench.training, bench.memory):
        monkeypatch.setattr(part, "run", must_not_run)
    monkeypatch.setattr(bench, "write_atomic", must_not_run)
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and "--batch" in capsys.readouterr().err


def test_baseline_loop_trains_a_few_steps_on_a_tiny_corpus():
    """The word_language_model-style baseline: chunks of a token stream cut into columns, the
    state carried across chunks and across the end of the text."""
    from contextbot.train.options import TrainOptions
    o = TrainOptions(hidden=16, embed=8, batch=3, seq_len=5, out="unused.safetensors")
    text = "Q: Who is she?\nA: She is a physicist.\n" * 3
    data, vocab = training.batchify(text, 3)
    assert data.shape == (len(text) // 3, 3) and vocab == len(set(text))
    assert training.baseline_chars_per_sec(o, steps=12, warmup=1, text=text) > 0
    assert training.baseline_chars_per_sec(TrainOptions(cell="lstm", hidden=16, embed=8, batch=2,
                                                        seq_len=4, out="unused.safetensors"),
                                           steps=3, warmup=1, text=text, vocab_size=50) > 0


def test_table_shows_the_baseline_and_the_ratio_or_a_dash_for_older_results():
    t = {"contextbot_chars_per_sec": 40000.0, "tutorial_chars_per_sec": 13000.0,
         "roofline_chars_per_sec": 60000.0, "roofline_gflops": 130.0, "fraction_of_roofline": 0.66}
    old = {a: b for a, b, _ in bench.rows({"training": t})}
    assert old["training: baseline (PyTorch word_language_model loop)"] == "—"
    assert old["training: contextbot / baseline"] == "—"
    new = {a: b for a, b, _ in bench.rows({"training": t | {"baseline_chars_per_sec": 20000.0,
                                                          "contextbot_over_baseline": 2.0}})}
    assert new["training: baseline (PyTorch word_language_model loop)"] == "20,000 chars/s"
    assert new["training: contextbot / baseline"] == "2.00x"
    md = bench.markdown({"machine": "test box", "date": "2026-01-01",
                         "training": t | {"baseline_chars_per_sec": 20000.0, "contextbot_over_baseline": 2.0}})
    assert "| training: contextbot / baseline | 2.00x |  |" in md


def test_profile_table_is_written_between_its_markers(tmp_path):
    from benchmarks import profile
    page = tmp_path / "performance.md"
    page.write_text(f"intro\n{profile.START}\nold\n{profile.END}\nrest\n", encoding="utf-8")
    p = {"machine": "test box", "date": "2026-01-01", "steps": 20, "batch": 16, "seq_len": 192,
         "cell": "gru", "hidden": 256, "parts": {part: 0.001 for part in profile.PARTS},
         "sum": 0.006, "whole_step": 0.0059}
    assert profile.write_page(p, page)
    text = page.read_text(encoding="utf-8")
    assert "old" not in text and "test box" in text and "| recurrence backward | 1.00 | 17% |" in text
    assert text.startswith("intro\n") and text.endswith("rest\n")
    real = bench.PAGE.read_text(encoding="utf-8")
    assert profile.START in real and profile.END in real
