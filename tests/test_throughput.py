"""The throughput benchmark (llava.bench.throughput) on the tiny checkpoint: rows, identity check, JSON."""

from __future__ import annotations

import json

from llava.bench import throughput


def test_throughput_rows_table_and_json(tiny_llava, tmp_path, capsys):
    out = tmp_path / "t.json"
    rows = throughput.main(["--model-path", tiny_llava, "--num-questions", "5", "--batch-sizes", "2,4",
                            "--methods", "none,entropy", "--repeats", "2", "--warmup", "0", "--new-tokens", "3",
                            "--threads", "1", "--json", str(out)])
    # Batch size 1 is always measured: it is what the speedups are relative to.
    assert [(r["method"], r["batch_size"]) for r in rows] == [
        ("none", 1), ("none", 2), ("none", 4), ("entropy", 1), ("entropy", 2), ("entropy", 4)]
    for r in rows:
        assert r["qps"] > 0 and len(r["qps_rounds"]) == 2
        # float32 on the CPU: every question gets the tokens it gets at batch size 1, in every round.
        assert r["identical"] is True and r["differing"] == 0
        assert r["keep"] == (576 if r["method"] == "none" else 166)  # 192 on the 32-layer rule
    assert [r["speedup"] for r in rows if r["batch_size"] == 1] == [1.0, 1.0]
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows
    assert saved["meta"]["dtype"] == "float32" and saved["meta"]["questions"] == 5
    assert len(set(saved["meta"]["text_tokens"])) > 1  # random prompts of several lengths: padded batches
    table = capsys.readouterr().out
    assert "| entropy | 166 | 4 |" in table and "identical" in table
