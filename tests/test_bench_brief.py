"""``mobilesam benchmark --table brief``: the brief's comparison table (issue 14 item 5)."""

from __future__ import annotations

import pytest

from mobilesam import bench_brief


def test_rows_are_the_briefs_and_bad_names_are_refused(capsys) -> None:
    from mobilesam.cli import main

    labels = [r.label for r in bench_brief.BRIEF_ROWS]
    assert labels[:4] == ["Meta SAM-b", "Meta SAM2-b", "Meta SAM2-t", "MobileSAM"]
    assert {r.key: r.brief for r in bench_brief.BRIEF_ROWS}["sam2_t"] == (78.1, 38.9, 25997.0)  # the brief's row
    assert [r.key for r in bench_brief.check_rows(["sam2_t", "sam_b"])] == ["sam_b", "sam2_t"]
    assert main(["benchmark", "--table", "brief", "--table-models", "sam2_t,nope"]) == 2
    assert "error: --table-models: expected some of sam_b,sam2_b,sam2_t,mobile_sam," in capsys.readouterr().err
    with pytest.raises(ValueError, match="^points_per_side: expected an integer >= 1"):
        bench_brief.run_brief_table(table_models=["mobile_sam"], points_per_side=0)


@pytest.mark.slow
def test_table_times_a_random_model_when_the_file_is_absent(tmp_path, monkeypatch) -> None:
    """No weights at hand (empty cache and folder): random MobileSAM weights, said so in the row; the
    brief's figures beside ours; without Ultralytics its column says so."""
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MOBILESAM_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    report = bench_brief.run_brief_table(table_models=["mobile_sam"], points_per_side=1, ultralytics=False)
    row = next(line for line in report.splitlines() if line.startswith("| MobileSAM |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["mobile_sam.pt", "random"] and cells[4] == "10.1"  # parameters, M
    assert float(cells[5]) > 0 and float(cells[6]) > 0  # ms per image, ms to the first mask
    assert cells[7] == "not installed" and cells[9:] == ["40.7", "10.1", "25381"]
    assert "Random weights (files not in the current folder nor the cache): MobileSAM." in report
