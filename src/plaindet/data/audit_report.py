"""The files of a label audit: ``report.html``, ``suggestions.json``, ``suggestions.csv`` and
``top16.jpg`` (:func:`write_report`).

``report.html`` is one self-contained page that opens with no network: no external script, style,
font or image; every thumbnail is a JPEG data URI. Each card is one suggestion, lowest score (most
likely wrong) first: the image with all its labels drawn thin, the audited label drawn solid and the
suggested box dashed. Two menus filter the cards by issue type and by class, with a few lines of
inline JavaScript. A table lists the lowest-scored images. ``top16.jpg`` puts the cards of the 16
lowest-scored suggestions on one picture, captioned with id, type and score.

Every file is written atomically (:func:`plaindet.weights.atomic_write`), so an interrupted run never
leaves a torn report.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from plaindet.data.audit import KINDS, AuditReport, Issue

THUMBNAIL = 320  # long side of a card's image, in pixels
MAX_CARDS = 300  # cards on the page; every issue is in suggestions.json and the CSV
MAX_IMAGES = 50  # rows of the lowest-scored-images table
_EXPLAIN = {
    "overlooked": "an object the model sees that has no label: add the dashed box",
    "spurious": "a label where the model sees nothing: remove it",
    "wrong_class": "the model sees another class here: relabel",
    "badly_located": "the model places this object elsewhere: move the label to the dashed box",
    "duplicate": "two labels of one object: remove this one",
}


def write_report(report: AuditReport, out: str | Path, *, max_cards: int = MAX_CARDS) -> list[Path]:
    """Write ``suggestions.json``, ``suggestions.csv``, ``report.html`` and (when there is an issue)
    ``top16.jpg`` into the folder ``out`` (made if needed); returns their paths in that order. The
    HTML shows the ``max_cards`` lowest-scored issues."""
    from plaindet.viz import contact_sheet
    from plaindet.weights import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "suggestions.json": report.to_json() + "\n",
        "suggestions.csv": report.to_csv(),
        "report.html": report_html(report, max_cards=max_cards),
    }
    paths = []
    for name, text in texts.items():
        paths.append(atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8")))
    if report.issues:
        tiles = [(f"#{i.id} {i.kind.replace('_', ' ')} {i.score:.2f}", thumbnail(report, i)) for i in report.issues[:16]]
        sheet = contact_sheet(tiles)
        paths.append(atomic_write(out / "top16.jpg", lambda tmp: sheet.save(tmp, format="JPEG", quality=85)))
    return paths


def thumbnail(report: AuditReport, issue: Issue, size: int = THUMBNAIL):
    """The PIL image of one card: the image scaled to long side ``size``, its other labels thin, the
    audited label solid and the suggested box dashed."""
    from PIL import Image

    from plaindet.data.images import read_image
    from plaindet.viz import draw

    sample = report.dataset.samples[issue.image_index]
    image = read_image(sample.image_path)
    scale = size / max(image.shape[:2])
    pil = Image.fromarray(image).resize((max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))))
    names = report.dataset.class_names
    others = [k for k in range(len(sample.boxes)) if k != issue.label_index]
    pil = draw(pil, sample.boxes[others] * scale, sample.labels[others], class_names=names, crowd=sample.iscrowd[others], thickness=1, font_size=10)
    boxes, labels, dashed = [], [], []
    if issue.label_index is not None:
        boxes.append(issue.box)
        labels.append(issue.label)
        dashed.append(False)
    s = issue.suggestion
    if s["box"] is not None and (s["action"] != "relabel" or issue.label_index is None):
        boxes.append(s["box"])
        labels.append(s["label"])
        dashed.append(True)
    if boxes:
        pil = draw(pil, np.asarray(boxes) * scale, labels, class_names=names, dashed=dashed, thickness=3, font_size=12)
    return pil


def _data_uri(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _suggestion_text(issue: Issue, names: list[str]) -> str:
    s = issue.suggestion
    if s["action"] == "relabel":
        return f"{html.escape(names[issue.label])} &rarr; {html.escape(names[s['label']])}"
    if s["action"] == "add":
        return f"add {html.escape(names[s['label']])}"
    if s["action"] == "move":
        return f"move {html.escape(names[issue.label])}"
    return f"remove {html.escape(names[issue.label])}"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
h1{font-size:1.4em} .warn{background:#fff3cd;padding:.5em;border:1px solid #e0c36a}
.bar{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:1em}
.card{background:#fff;border:1px solid #ccc;border-radius:4px;padding:6px;width:330px;font-size:.85em}
.card img{display:block;max-width:320px;max-height:320px;margin:auto}
.kind{font-weight:bold} .score{float:right;font-family:monospace} .file{color:#666;word-break:break-all}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px}
"""

_SCRIPT = """
function applyFilters(){
  var k=document.getElementById('kind').value, c=document.getElementById('cls').value, shown=0;
  var cards=document.querySelectorAll('.card');
  for(var i=0;i<cards.length;i++){
    var ok=(k===''||cards[i].dataset.kind===k)&&(c===''||cards[i].dataset.classes.split('|').indexOf(c)>=0);
    cards[i].style.display=ok?'':'none'; if(ok){shown++;}
  }
  document.getElementById('shown').textContent=shown;
}
"""


def report_html(report: AuditReport, *, max_cards: int = MAX_CARDS) -> str:
    """The self-contained HTML page (see the module docstring)."""
    d = report.dataset
    names = d.class_names
    counts = report.counts()
    shown = report.issues[:max_cards]
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>plaindet label audit: {esc(str(d.root))} ({esc(d.split)})</title><style>{_STYLE}</style></head><body>",
        f"<h1>Label audit of {esc(str(d.root))}, split {esc(d.split)}</h1>",
        f"<p>{len(d)} images, {sum(len(s.boxes) for s in d.samples)} labels; {len(report.issues)} issues: "
        + ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in KINDS)
        + f". Scores are in [0, 1], low = likely wrong; issues scored below {report.config.threshold} are listed. "
        "On each image the audited label is drawn solid, the suggested box dashed, the other labels thin.</p>",
    ]
    parts += [f"<p class='warn'>warning: {esc(w)}</p>" for w in report.warnings]
    kind_options = "".join(f"<option value='{k}'>{k.replace('_', ' ')} ({counts[k]})</option>" for k in KINDS)
    class_options = "".join(f"<option value='{k}'>{esc(n)}</option>" for k, n in enumerate(names))
    parts.append(
        "<div class='bar'>issue type <select id='kind' onchange='applyFilters()'><option value=''>all</option>"
        f"{kind_options}</select> class <select id='cls' onchange='applyFilters()'><option value=''>all</option>"
        f"{class_options}</select> <span id='shown'>{len(shown)}</span> shown"
        + (f" (the {max_cards} lowest-scored of {len(report.issues)}; all are in suggestions.json)" if len(report.issues) > max_cards else "")
        + "</div><div class='cards'>"
    )
    for issue in shown:
        classes = {issue.label} | ({issue.suggestion["label"]} if issue.suggestion["label"] is not None else set())
        parts.append(
            f"<div class='card' data-kind='{issue.kind}' data-classes='{'|'.join(str(c) for c in sorted(classes))}'>"
            f"<img alt='' src='{_data_uri(thumbnail(report, issue))}'>"
            f"<div><span class='kind'>#{issue.id} {issue.kind.replace('_', ' ')}</span><span class='score'>{issue.score:.3f}</span></div>"
            f"<div>{_suggestion_text(issue, names)}: {_EXPLAIN[issue.kind]}</div>"
            f"<div class='file'>{esc(Path(issue.file).name)} (image id {issue.image_id})</div></div>"
        )
    parts.append("</div><h2>Lowest-scored images</h2><table><tr><th>image</th><th>score</th><th>issues</th></tr>")
    per_image: dict[int, int] = {}
    for issue in report.issues:
        per_image[issue.image_index] = per_image.get(issue.image_index, 0) + 1
    for k, score in report.image_scores[:MAX_IMAGES]:
        parts.append(f"<tr><td>{esc(d.samples[k].image_path.name)}</td><td>{score:.3f}</td><td>{per_image.get(k, 0)}</td></tr>")
    parts.append(f"</table><script>{_SCRIPT}</script></body></html>\n")
    return "".join(parts)
