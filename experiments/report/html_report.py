"""``report.html``: the whole report on one self-contained page a researcher opens in a browser.

Design summary, what performance is, the paper's table, the contrasts with the reference metric, decision
accuracy, covariates, leave-one-block-out sensitivity, the noise floor, every figure (PNG inlined as base64, so
the file travels alone), the full table in a collapsed section, and the configuration. No script, no external
resource: nothing to fail to load.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
small{color:#555}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.78em;max-height:30em}
details{margin:.8em 0}
"""


def image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def frame_html(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as an escaped HTML table, numbers to ``digits`` decimals, missing as 'undef.'."""
    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "undef." if not np.isfinite(v) else f"{v:.{digits}f}"
        return "undef." if v is None or v is pd.NA else str(v)

    return frame.to_html(index=False, escape=True, na_rep="undef.", formatters={c: cell for c in frame.columns},
                         border=0)


def figure_html(path: Path, caption: str) -> str:
    return f"<figure>{image_tag(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render(title: str, sections: list[tuple[str, str]]) -> str:
    """The page: a title and (heading, HTML body) sections."""
    body = "".join(f'<section><h2>{html.escape(h)}</h2>{b}</section>' for h, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def paragraph(text: str, cls: str = "") -> str:
    return f'<p{f" class={cls!r}" if cls else ""}>{html.escape(text)}</p>'


def config_html(config: dict | str | None) -> str:
    if config is None:
        return paragraph("no configuration recorded")
    text = config if isinstance(config, str) else json.dumps(config, indent=2, default=str)
    return f"<pre>{html.escape(text)}</pre>"
