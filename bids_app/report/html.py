"""HTML rendering: jinja2 templates shipped in ``templates/``, inline CSS, no script,
no font or file from outside the report's folder; nothing time-dependent."""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = number
    env.filters["pct"] = percent
    env.filters["md"] = inline_markdown
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits; ``n/a`` for None / NaN."""
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:
        return "n/a"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.{digits}g}"


def percent(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if v != v else f"{v:.{digits}f} %"


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) in CSS pixels of a PNG (header) or a matplotlib SVG (pt), or None."""
    import re

    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    m = re.search(rb'<svg[^>]*\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"', head)
    if m:
        return round(float(m.group(1)) * 96 / 72), round(float(m.group(2)) * 96 / 72)
    return None


def natural_key(value: str | None) -> tuple:
    if value is None:
        return (0, 0, "")
    return (1, int(value), value) if str(value).isdigit() else (2, 0, str(value))


def inline_markdown(text: str):
    """Escape ``text`` and turn its `backticks` into <code> (the methods paragraphs)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))
