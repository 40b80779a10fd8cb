"""bench/fru_report.py: re-measuring one dataset keeps the other dataset's section of the report."""

from __future__ import annotations

import json

from bench import fru_report


def test_report_for_one_dataset_keeps_the_others_numbers(tmp_path):
    path = tmp_path / "results.json"
    assert fru_report.kept_sections(path, ["gtsrb32"]) == {}  # no earlier report: nothing to keep
    old = {"lisa18": {"restoration": {"summary": {"restoration_def": 0.957}}},
           "gtsrb32": {"restoration": {"summary": {"restoration_def": 0.839}}}, "machine": "x86_64"}
    path.write_text(json.dumps(old))
    assert fru_report.kept_sections(path, ["gtsrb32"]) == {"lisa18": old["lisa18"]}
    assert fru_report.kept_sections(path, ["lisa18", "gtsrb32"]) == {}
