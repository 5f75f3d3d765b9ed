"""Demo and session reports: a PNG plot along each pass and a Markdown + HTML summary.

The input is the JSON-ready document that :func:`mozi.host.demo.run_demo` returns (and that
``mozi demo --json`` prints): a list of ``links`` (each with its session figures and a
``profile`` of ``{"t_s", "sifted_kbps", "qber"}`` points every 10 s of the pass), the relay key
length and the image results. Every file is written atomically (temporary file in the same
folder, then :func:`os.replace`), so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPORT_FILES",
    "atomic_write",
    "plot_passes",
    "render_html",
    "render_markdown",
    "write_report",
]

REPORT_FILES = {"plot": "report.png", "markdown": "report.md", "html": "report.html"}
"""File names :func:`write_report` creates in the output folder."""


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed to disk and then renamed
    over ``path``; readers see either the old file or the complete new one.

    Parameters
    ----------
    path : path-like
        Destination file; its folder must exist.
    data : bytes or str
        Content; ``str`` is encoded as UTF-8.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _profile_arrays(link: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = link.get("profile") or []
    t = np.array([float(p["t_s"]) for p in points], dtype=float)
    rate = np.array([float(p["sifted_kbps"]) for p in points], dtype=float)
    qber = np.array([float(p["qber"]) if p.get("qber") is not None else np.nan
                     for p in points], dtype=float)
    return t, rate, qber


def plot_passes(doc: Mapping[str, Any]) -> bytes:
    """Draw sifted rate, QBER and key along each pass; return the PNG bytes.

    Three stacked panels share the time axis (pass time in seconds, as in each link's
    ``profile``): the sifted key rate in kbit/s, the QBER in percent (with the abort
    threshold when the document gives one), and the sifted key accumulated along the pass
    with the final secret key of the session marked at the end of the pass.

    Parameters
    ----------
    doc : mapping
        The demo document (see the module docstring); only ``links`` is required.

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_qber, ax_key = fig.subplots(3, 1, sharex=True)
    threshold = doc.get("qber_threshold")
    for link in doc.get("links", []):
        label = str(link.get("link", "link"))
        t, rate, qber = _profile_arrays(link)
        if t.size == 0:
            continue
        # profile points are bins starting at t_s; draw rates at bin centres and the
        # accumulated sifted key at bin ends, from 0 at the start of the first bin
        width = float(np.median(np.diff(t))) if t.size > 1 else float(
            doc.get("profile_bin_s", 10.0))
        (line,) = ax_rate.plot(t + width / 2, rate, marker=".", label=label)
        color = line.get_color()
        ax_qber.plot(t + width / 2, 100.0 * qber, marker=".", color=color, label=label)
        ends = np.concatenate([[t[0]], t + width])
        sifted_cum = np.concatenate([[0.0], np.cumsum(rate * 1e3 * width)])
        ax_key.plot(ends, sifted_cum / 1e3, color=color, label=f"{label}: sifted")
        final = float(link.get("final_key_bits") or 0)
        if link.get("aborted"):
            ax_key.plot([ends[-1]], [0.0], marker="x", color=color, markersize=10,
                        linestyle="none", label=f"{label}: aborted, no key")
        else:
            ax_key.plot([ends[-1]], [final / 1e3], marker="*", color=color, markersize=13,
                        linestyle="none", label=f"{label}: secret key {final / 1e3:.1f} kbit")
    if threshold is not None:
        ax_qber.axhline(100.0 * float(threshold), color="0.4", linestyle="--", linewidth=1,
                        label=f"abort threshold {100.0 * float(threshold):.0f} %")
    ax_rate.set_ylabel("sifted rate (kbit/s)")
    ax_qber.set_ylabel("QBER (%)")
    ax_key.set_ylabel("key (kbit)")
    ax_key.set_xlabel("pass time (s)")
    title = doc.get("title") or "Micius passes"
    ax_rate.set_title(str(title))
    for ax in (ax_rate, ax_qber, ax_key):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    ax_qber.set_ylim(bottom=0.0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100.0 * float(x):.2f} %"


def _num(x: Any, fmt: str = ",") -> str:
    if x is None:
        return "–"
    return format(x, fmt)


def _link_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for link in doc.get("links", []):
        status = f"aborted: {link.get('abort_reason') or 'yes'}" if link.get("aborted") else "ok"
        eff = link.get("ec_efficiency")
        rows.append([
            str(link.get("link")),
            _num(link.get("detections")),
            _num(link.get("sifted_bits")),
            _pct(link.get("qber_z")),
            _pct(link.get("qber_x")),
            "–" if eff is None else f"{float(eff):.3f}",
            _num(link.get("final_key_bits")),
            status,
        ])
    return rows


_PASS_HEAD = ["link", "station", "culmination", "closest", "loss", "processed",
              "simulate", "post-process"]


def _pass_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for link in doc.get("links", []):
        p = link.get("pass")
        if not p:
            continue
        wall = link.get("wall_time_s") or {}
        loss = p.get("loss_db_range") or [None, None]
        rows.append([
            str(link.get("link")),
            str(link.get("place") or link.get("station") or "–"),
            f"{float(p['max_elevation_deg']):.0f}°" if "max_elevation_deg" in p else "–",
            f"{float(p['min_distance_km']):.0f} km" if "min_distance_km" in p else "–",
            "–" if None in loss else f"{loss[0]:.1f}–{loss[1]:.1f} dB",
            f"{float(p['duration_s']):.0f} of {float(p['full_pass_s']):.0f} s"
            if "duration_s" in p and "full_pass_s" in p else "–",
            "–" if wall.get("simulate") is None else f"{float(wall['simulate']):.1f} s",
            "–" if wall.get("post_process") is None else f"{float(wall['post_process']):.1f} s",
        ])
    return rows


_FK_HEAD = ["link", "n_Z", "s_Z,0 (lower)", "s_Z,1 (lower)", "φ_Z (upper)", "λ_EC",
            "ℓ (bits)"]


def _fk_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for link in doc.get("links", []):
        fk = link.get("finite_key")
        if not fk:
            continue

        def num(key: str, fk=fk) -> str:
            v = fk.get(key)
            return "–" if v is None else f"{float(v):,.0f}"

        phi = fk.get("phi_z")
        rows.append([str(link.get("link")), num("n_z_total"), num("s_z0"), num("s_z1"),
                     "–" if phi is None else f"{100.0 * float(phi):.2f} %",
                     num("lambda_ec"), num("length")])
    return rows


_LINK_HEAD = ["link", "detections", "sifted bits", "QBER Z", "QBER X", "EC efficiency f",
              "secret key bits", "status"]
_IMAGE_HEAD = ["image", "bytes", "from", "to", "mode", "decrypted identical"]


def _image_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [[str(im.get("name")), _num(im.get("bytes")), str(im.get("from", "moscow")),
             str(im.get("to", "urumqi")), str(im.get("mode")),
             "yes" if im.get("decrypted_identical") else "NO"]
            for im in doc.get("images", [])]


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


_INSECURE = ("Insecure reproducible run: the keys of this demo follow from its seed and must "
             "not protect real data.")


def _verdict(doc: Mapping[str, Any]) -> str:
    images = doc.get("images", [])
    if images and all(im.get("decrypted_identical") for im in images):
        return (f"All {len(images)} images exchanged between Moscow and Urumqi were decrypted "
                f"bit-exact.")
    if not images:
        return "No image was exchanged (no shared key)."
    return "Some image did NOT decrypt bit-exact."


def render_markdown(doc: Mapping[str, Any], *, plot_name: str | None = REPORT_FILES["plot"]
                    ) -> str:
    """Render the document as a Markdown summary.

    Parameters
    ----------
    doc : mapping
        The demo document.
    plot_name : str or None
        Relative file name of the plot to embed, or ``None`` for no image.

    Returns
    -------
    str
        Markdown text.
    """
    title = doc.get("title") or "Mozi demo"
    parts = [f"# {title}", ""]
    if doc.get("description"):
        parts += [str(doc["description"]), ""]
    parts += [_verdict(doc), ""]
    if doc.get("insecure_reproducible"):
        parts += [f"**{_INSECURE}**", ""]
    parts += ["## Links", "", _md_table(_LINK_HEAD, _link_rows(doc)), ""]
    if _pass_rows(doc):
        parts += ["## Passes", "", _md_table(_PASS_HEAD, _pass_rows(doc)), ""]
    if _fk_rows(doc):
        parts += ["## Finite-key analysis (Lim et al. 2014)", "",
                  _md_table(_FK_HEAD, _fk_rows(doc)), ""]
    if "relay_key_bits" in doc:
        parts += ["## Trusted relay", "",
                  f"The satellite announced K_SM ⊕ K_SU; Moscow and Urumqi now share "
                  f"**{_num(doc['relay_key_bits'])} bits** of key.", ""]
    if doc.get("images"):
        parts += ["## Images", "",
                  _md_table(_IMAGE_HEAD, _image_rows(doc)), ""]
    if plot_name:
        parts += ["## Along the passes", "", f"![sifted rate, QBER and key]({plot_name})", ""]
    settings = doc.get("settings")
    if settings:
        parts += ["## Settings", ""]
        parts += [f"- `{k}`: {v}" for k, v in settings.items()]
        parts += [""]
    if doc.get("wall_time_s") is not None:
        parts += [f"Wall time: {float(doc['wall_time_s']):.1f} s.", ""]
    return "\n".join(parts)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: Mapping[str, Any], *, png: bytes | None = None) -> str:
    """Render the document as a self-contained HTML page.

    Parameters
    ----------
    doc : mapping
        The demo document.
    png : bytes or None
        Plot to embed inline (as a ``data:`` URI), or ``None`` for none.

    Returns
    -------
    str
        HTML text.
    """
    esc = html.escape
    title = esc(str(doc.get("title") or "Mozi demo"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:.25em .6em;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    if doc.get("description"):
        parts.append(f"<p>{esc(str(doc['description']))}</p>")
    parts.append(f"<p><strong>{esc(_verdict(doc))}</strong></p>")
    if doc.get("insecure_reproducible"):
        parts.append(f"<p><em>{esc(_INSECURE)}</em></p>")
    parts += ["<h2>Links</h2>", _html_table(_LINK_HEAD, _link_rows(doc))]
    if _pass_rows(doc):
        parts += ["<h2>Passes</h2>", _html_table(_PASS_HEAD, _pass_rows(doc))]
    if _fk_rows(doc):
        parts += ["<h2>Finite-key analysis (Lim et al. 2014)</h2>",
                  _html_table(_FK_HEAD, _fk_rows(doc))]
    if "relay_key_bits" in doc:
        parts += ["<h2>Trusted relay</h2>",
                  f"<p>The satellite announced K<sub>SM</sub> ⊕ K<sub>SU</sub>; Moscow and "
                  f"Urumqi now share <strong>{esc(_num(doc['relay_key_bits']))} bits</strong> "
                  f"of key.</p>"]
    if doc.get("images"):
        parts += ["<h2>Images</h2>",
                  _html_table(_IMAGE_HEAD, _image_rows(doc))]
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts += ["<h2>Along the passes</h2>",
                  f'<img alt="sifted rate, QBER and key" src="data:image/png;base64,{data}">']
    settings = doc.get("settings")
    if settings:
        parts.append("<h2>Settings</h2><ul>")
        parts += [f"<li><code>{esc(str(k))}</code>: {esc(str(v))}</li>"
                  for k, v in settings.items()]
        parts.append("</ul>")
    if doc.get("wall_time_s") is not None:
        parts.append(f"<p>Wall time: {float(doc['wall_time_s']):.1f} s.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out_dir: str | os.PathLike[str], doc: Mapping[str, Any]) -> dict[str, Path]:
    """Write the plot, the Markdown and the HTML summary into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Existing output folder.
    doc : mapping
        The demo document.

    Returns
    -------
    dict of str to pathlib.Path
        ``{"plot": …, "markdown": …, "html": …}``, the files written (names in
        :data:`REPORT_FILES`).
    """
    out = Path(out_dir)
    png = plot_passes(doc)
    return {
        "plot": atomic_write(out / REPORT_FILES["plot"], png),
        "markdown": atomic_write(out / REPORT_FILES["markdown"], render_markdown(doc)),
        "html": atomic_write(out / REPORT_FILES["html"], render_html(doc, png=png)),
    }
