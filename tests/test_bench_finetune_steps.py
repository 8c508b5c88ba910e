"""benchmarks/finetune_steps.py: variants parsed strictly, every variant fine-tuned from the same student."""
from __future__ import annotations

import pytest

from benchmarks.finetune_steps import main, parse_variants


def test_variants_are_steps_and_images_and_bad_ones_are_one_usage_line(capsys, tmp_path):
    assert parse_variants("125:4000, 4000:0") == [(125, 4000), (4000, 0)]
    for bad in ("", "0:100", "12", "a:1"):
        with pytest.raises(ValueError):
            parse_variants(bad)
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path), "--variants", "5:0"])
    assert caught.value.code == 2 and "not a lana run folder" in capsys.readouterr().err


def test_each_variant_fine_tunes_the_same_student_on_its_images(trained_run, capsys, one_thread):
    run, config, _ = trained_run
    assert main([str(run.path), "--share", "0.6", "--variants", "3:100,3:0"]) == 0
    out = capsys.readouterr().out
    assert "selection:" in out and "teacher:" in out
    import re

    images = [int(n) for n in re.findall(r"^3 steps on (\d+) images", out, re.M)]
    assert images[0] == 100 and images[1] > 100  # 0 = every training image (the run's train_limit lifted)
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| steps", "| ---"))]
    assert [line.split(" | ")[0] for line in table] == ["| 0", "| 3", "| 3"]  # before fine-tuning, then each variant
