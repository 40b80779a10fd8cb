"""The README's main job, end to end (slow: about 30 s on 2 cores)."""

import pytest

from signguard.demo import run_demo


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    report = run_demo(tmp_path, quick=True, progress=False)
    for r in report["models"].values():
        assert r["onnx_max_abs_diff"] <= 1e-4
        assert r["edge_torch_agreement"] >= 0.99
        assert r["edge_classified"] > 0
    assert (tmp_path / "report.md").is_file()
