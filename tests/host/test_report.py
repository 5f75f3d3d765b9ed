"""Report: PNG plot, Markdown and HTML summaries, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mozi.host.report import (
    REPORT_FILES,
    atomic_write,
    plot_passes,
    render_html,
    render_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _doc():
    t = np.arange(0.0, 120.0, 10.0)
    prof = [{"t_s": float(x), "sifted_kbps": float(5 + 4 * np.sin(x / 40)), "qber": 0.015}
            for x in t]
    return {
        "title": "Mozi demo <test>",
        "qber_threshold": 0.11,
        "links": [
            {"link": "satellite-moscow", "detections": 123456, "sifted_bits": 600000,
             "qber_z": 0.0123, "qber_x": 0.0151, "ec_efficiency": 1.071,
             "final_key_bits": 150000, "aborted": False, "profile": prof,
             "place": "Zvenigorod (Moscow)",
             "pass": {"max_elevation_deg": 55.0, "min_distance_km": 598.2,
                      "loss_db_range": [28.1, 39.9], "duration_s": 40.0, "full_pass_s": 345.5},
             "wall_time_s": {"simulate": 1.25, "post_process": 6.5},
             "finite_key": {"n_z_total": 300000, "s_z0": 0.0, "s_z1": 94327.2, "phi_z": 0.0614,
                            "lambda_ec": 24880, "length": 150000}},
            {"link": "satellite-urumqi", "detections": 1000, "sifted_bits": 500,
             "qber_z": 0.25, "qber_x": 0.27, "ec_efficiency": None, "final_key_bits": 0,
             "aborted": True, "abort_reason": "QBER 25.00 % above threshold 11.00 %",
             "profile": prof[:4]},
        ],
        "relay_key_bits": 0,
        "images": [{"name": "micius-256x64.png", "bytes": 2048, "mode": "otp",
                    "decrypted_identical": True}],
        "settings": {"eps_sec": 1e-10},
        "wall_time_s": 12.5,
    }


def test_plot_is_png():
    png = plot_passes(_doc())
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 10_000            # three panels with data, not an empty canvas


def test_plot_without_profile_still_renders():
    assert plot_passes({"links": [{"link": "x", "profile": []}]}).startswith(PNG_MAGIC)


def test_markdown_content():
    md = render_markdown(_doc())
    assert "| satellite-moscow | 123,456 | 600,000 | 1.23 % | 1.51 % | 1.071 | 150,000 | ok |" \
        in md
    assert "aborted: QBER 25.00 % above threshold 11.00 %" in md
    assert "| micius-256x64.png | 2,048 | moscow | urumqi | otp | yes |" in md
    assert "![sifted rate, QBER and key](report.png)" in md
    assert "decrypted bit-exact" in md
    assert "| satellite-moscow | 300,000 | 0 | 94,327 | 6.14 % | 24,880 | 150,000 |" in md
    assert ("| satellite-moscow | Zvenigorod (Moscow) | 55° | 598 km | 28.1–39.9 dB | 40 of 346 s "
            "| 1.2 s | 6.5 s |") in md


def test_markdown_flags_failed_image():
    doc = _doc()
    doc["images"][0]["decrypted_identical"] = False
    md = render_markdown(doc)
    assert "did NOT decrypt" in md
    assert "| NO |" in md


def test_html_escapes_and_embeds_plot():
    page = render_html(_doc(), png=PNG_MAGIC + b"rest")
    assert "Mozi demo &lt;test&gt;" in page
    assert "<test>" not in page
    assert "data:image/png;base64,iVBORw0KGgpyZXN0" in page
    # 4 header rows, 2 links, 1 pass, 1 finite-key row, 1 image
    assert page.count("<tr>") == 4 + 2 + 1 + 1 + 1


def test_write_report(tmp_path):
    paths = write_report(tmp_path, _doc())
    assert {p.name for p in paths.values()} == set(REPORT_FILES.values())
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)
    assert "satellite-urumqi" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(os.listdir(tmp_path)) == sorted(REPORT_FILES.values())   # no temp left


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]
