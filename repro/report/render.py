"""The report's blocks as Markdown and as one self-contained HTML page.

A section is a list of blocks — ("p", text), ("table", header, rows), ("ul", items), ("pre", text)
or ("fig", name, png, caption) — and the same blocks become both files. The HTML embeds its
figures as PNG data URIs and loads no external CSS or JS. Only the Markdown our own sentences use
(`code` and **bold**) is rendered; every other character is escaped.
"""

from __future__ import annotations

import base64
import html
import re

def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[tuple[str, list]], figure_dir: str) -> str:
    lines = [f"# {title}", ""]
    for head, blocks in sections:
        lines += [f"## {head}", ""]
        for b in blocks:
            if b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "ul":
                lines += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "pre":
                lines += ["```", b[1], "```", ""]
            elif b[0] == "table":
                lines += ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |",
                          "| " + " | ".join("---" for _ in b[1]) + " |"]
                lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in b[2]] + [""]
            elif b[0] == "fig":
                lines += [f"![{b[3]}]({figure_dir}/{b[1]}.png)", "", f"*{b[3]}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """The Markdown our own sentences use — `code` and **bold** — as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f1f1f1; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .88em; color: #555; }
nav ol { columns: 2; font-size: .92em; }
"""


def render_html(title: str, sections: list[tuple[str, list]]) -> str:
    anchors = [re.sub(r"[^a-z0-9]+", "-", head.lower()).strip("-") for head, _ in sections]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{_inline(title)}</h1>",
             "<nav><ol>" + "".join(f'<li><a href="#{a}">{html.escape(h)}</a></li>'
                                   for a, (h, _) in zip(anchors, sections)) + "</ol></nav>"]
    for anchor, (head, blocks) in zip(anchors, sections):
        parts.append(f'<h2 id="{anchor}">{html.escape(head)}</h2>')
        for b in blocks:
            if b[0] == "p":
                parts.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "pre":
                parts.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b[0] == "table":
                parts.append("<table><thead><tr>" + "".join(f"<th>{_inline(str(h))}</th>" for h in b[1])
                             + "</tr></thead><tbody>"
                             + "".join("<tr>" + "".join(f"<td>{_inline(str(x))}</td>" for x in row) + "</tr>"
                                       for row in b[2]) + "</tbody></table>")
            elif b[0] == "fig":
                data = base64.b64encode(b[2]).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(b[3])}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{_inline(b[3])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
