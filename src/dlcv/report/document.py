"""A tiny document model (headings, text, tables, figures, commands, missing-run notes) and its two
renderings: one self-contained HTML file (figures embedded as base64, opens offline) and a Markdown twin
whose figures are copied into a folder beside it."""
from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dlcv.fileio import write_text


@dataclass
class Document:
    title: str
    items: list[tuple] = field(default_factory=list)

    def banner(self, text: str) -> None:
        """What a reader must know before any number (shown first, boxed)."""
        self.items.append(("banner", text))

    def heading(self, level: int, text: str) -> None:
        self.items.append(("heading", level, text))

    def text(self, text: str) -> None:
        self.items.append(("text", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.items.append(("table", header, rows))

    def figure(self, path: Path, caption: str) -> None:
        self.items.append(("figure", Path(path), caption))

    def command(self, text: str) -> None:
        self.items.append(("command", text))

    def missing(self, what: str, command: str) -> None:
        self.items.append(("missing", what, command))


# tables and figures fit the page's 1100 px (a 1280 px window): long cells wrap, wide figures scale down
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;max-width:100%;font-size:.92em}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;overflow-wrap:anywhere}
.banner{border:2px solid #e0a800;background:#fff8e1;padding:.6em 1em;margin:1em 0;font-size:1.05em}
th{background:#eef3fa}pre{background:#f5f5f5;padding:.5em;overflow-x:auto;white-space:pre-wrap}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.missing{border-left:4px solid #d9534f;background:#fdf2f2;padding:.4em .8em;margin:.6em 0}"""


def to_html(doc: Document) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(doc.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(doc.title)}</h1>"]
    for item in doc.items:
        kind = item[0]
        if kind == "heading":
            out.append(f"<h{item[1] + 1}>{html.escape(item[2])}</h{item[1] + 1}>")
        elif kind == "text":
            out.append(f"<p>{html.escape(item[1])}</p>")
        elif kind == "banner":
            out.append(f"<div class='banner'><b>{html.escape(item[1])}</b></div>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in item[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in item[2])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "figure":
            data = base64.b64encode(item[1].read_bytes()).decode()
            mime = "image/svg+xml" if item[1].suffix == ".svg" else "image/png"
            out.append(f"<figure><img alt='{html.escape(item[2])}' src='data:{mime};base64,{data}'>"
                       f"<figcaption>{html.escape(item[2])}</figcaption></figure>")
        elif kind == "command":
            out.append(f"<pre>{html.escape(item[1])}</pre>")
        elif kind == "missing":
            out.append(f"<div class='missing'><b>Missing:</b> {html.escape(item[1])}. Produce it with:"
                       f"<pre>{html.escape(item[2])}</pre></div>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, md_path: Path) -> str:
    """Figures are copied to `<name>_files/` beside the Markdown file and linked relatively."""
    files = md_path.parent / f"{md_path.stem}_files"
    out = [f"# {doc.title}", ""]
    for n, item in enumerate(doc.items):
        kind = item[0]
        if kind == "heading":
            out += ["#" * (item[1] + 1) + " " + item[2], ""]
        elif kind == "text":
            out += [item[1], ""]
        elif kind == "banner":
            out += [f"> **{item[1]}**", ""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in item[1]) + " |")
            out.append("|" + "---|" * len(item[1]))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in item[2]]
            out.append("")
        elif kind == "figure":
            files.mkdir(parents=True, exist_ok=True)
            target = files / f"{n:03d}_{item[1].name}"
            shutil.copyfile(item[1], target)
            out += [f"![{item[2]}]({files.name}/{target.name})", "", f"*{item[2]}*", ""]
        elif kind == "command":
            out += ["```bash", item[1], "```", ""]
        elif kind == "missing":
            out += [f"> **Missing:** {item[1]}. Produce it with:", ">", f"> `{item[2]}`", ""]
    return "\n".join(out)


def write(doc: Document, html_path: str | Path) -> tuple[Path, Path]:
    html_path = Path(html_path)
    md_path = html_path.with_suffix(".md")
    write_text(html_path, to_html(doc))
    write_text(md_path, to_markdown(doc, md_path))
    return html_path, md_path
