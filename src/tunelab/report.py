"""report.html: the whole run on one self-contained page (images embedded, no network).

Sections appear for the stages the run has: data preparation, search, training, evaluation.
A small script marks each section with how many of its images decoded, so a headless browser can
check that the page renders.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.data.prepare import duplicates_summary
from tunelab.evaluate.scoring import comparison_rows, labels_by_error
from tunelab.rundir import RunDir, read_jsonl, read_trials, write_text_atomic

PER_LABEL_ROWS = 25  # the report shows the worst labels; per_label.csv has them all

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #2171b5;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem} td,th{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#eef3fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:.4rem .4rem 0 0} .muted{color:#666;font-size:.9rem}
.figures{display:flex;flex-wrap:wrap;align-items:flex-start} .figures img{max-width:48%}
"""

SCRIPT = """
window.addEventListener('load', () => {
  document.querySelectorAll('section').forEach(section => {
    const images = [...section.querySelectorAll('img')];
    const ok = images.filter(img => img.complete && img.naturalWidth > 0).length;
    section.dataset.imagesOk = ok + '/' + images.length;
  });
  document.body.dataset.rendered = 'yes';
});
"""


def _image(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" title="{html.escape(caption)}">'


def _cell(value: Any) -> str:
    if isinstance(value, str) and "." in value:  # numbers read back from trials.csv
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>'


def _prepare(run: RunDir) -> str:
    path = run.data / "prepare_report.json"
    if not path.is_file():
        return ""
    report = json.loads(path.read_text())
    clusters = report["clusters"]
    silhouette = f"{clusters['silhouette']:.3f}" if clusters.get("silhouette") is not None else "n/a"
    body = _table(["step", "rows"], [[k.replace("_", " "), v] for k, v in report["counts"].items()])
    body += (f"<p>{html.escape(duplicates_summary(report))}; K = {clusters['k']} "
             f"({html.escape(clusters['method'])}), silhouette {silhouette}; "
             f"split {html.escape(str(report['sizes']))}.</p>")
    body += _near_duplicate_pairs(report.get("near_duplicates"))
    if "representativeness" in report:
        rows = [[k, v["sample"], v["random_mean"], v["percentile"]] for k, v in report["representativeness"].items()]
        body += "<p>How representative the training sample is, beside random samples of the same size:</p>"
        body += _table(["measure", "sample", "random (mean)", "percentile of ours"], rows)
    figures = [_image(run.data / name, name) for name in ("clusters.png", "cluster_sizes.png", "labels.png")]
    return _section("prepare", "Data preparation", body + f'<div class="figures">{"".join(figures)}</div>')


def _near_duplicate_pairs(near: dict[str, Any] | None) -> str:
    """The calls a user should check: removed pairs nearest the threshold, and pairs whose labels differ."""
    if not near:
        return ""
    columns = ["cosine_distance", "word_edits", "text", "label", "kept_text", "kept_label"]
    header = ["distance", "words changed", "row", "label", "twin", "twin's label"]
    words = (f", and fewer changed words than {near['word_share']} of the longer text's words, by at least one"
             if near["word_share"] is not None else "")
    body = (f"<p class='muted'>Near copies: within cosine distance {near['threshold']} of the text vectors "
            f"({near['vector_candidates']} candidate pairs){words}.</p>")
    if near["borderline_removed"]:
        body += ("<h3>Removed near duplicates closest to the threshold</h3>"
                 + _table(header, [[pair[c] for c in columns] for pair in near["borderline_removed"]]))
    if near["conflicting_pairs"]:
        fate = "kept" if near["conflicts_policy"] == "keep" else "the later row dropped"
        body += (f"<h3>Near copies with different labels ({near['conflicts']}, {fate})</h3>"
                 "<p class='muted'>Label noise, or a contrast the model should learn.</p>"
                 + _table(header, [[pair[c] for c in columns] for pair in near["conflicting_pairs"]]))
    return body


def _search(run: RunDir) -> str:
    rows = read_trials(run)
    if not rows:
        return ""
    header = list(rows[0])
    body = f"<p>{len(rows)} trials, best first (scored on the validation split).</p>"
    body += _table(header, [[row[h] for h in header] for row in rows[:20]])
    names = ("metric_vs_lr.png", "grid_heatmap.png", "validation_curves.png")
    figures = [_image(run.search / name, name) for name in names]
    return _section("search", "Hyperparameter search", body + f'<div class="figures">{"".join(figures)}</div>')


def _training(run: RunDir) -> str:
    path = run.model / "training_summary.json"
    if not path.is_file():
        return ""
    summary = json.loads(path.read_text())
    rows = [[k.replace("_", " "), v] for k, v in summary.items() if not isinstance(v, dict) and k != "run_dir"]
    rows += [["trainable parameters", summary["parameters"]["trainable"]],
             ["all parameters", summary["parameters"]["total"]]]
    body = _table(["", ""], rows) + _image(run.model / "loss.png", "training loss")
    return _section("training", "Training", body)


def _evaluation(run: RunDir, examples: int) -> str:
    path = run.eval / "metrics.json"
    if not path.is_file():
        return ""
    metrics = json.loads(path.read_text())
    names, rows = comparison_rows(metrics)
    strategy = metrics.get("decoding", {}).get("strategy", "greedy")
    body = f"<p>{metrics['n_test']} test examples, identical prompts for every model, {strategy} decoding.</p>"
    body += _table(["metric", *names], [[key, *values] for key, values in rows])
    if metrics.get("verdict"):
        body += f"<p><strong>{html.escape(metrics['verdict'])}</strong></p>"
    figures = [_image(run.eval / f"confusion_{n}.png", f"confusion matrix, {n}") for n in names]
    figures.append(_image(run.eval / "reliability.png", "reliability of the label probabilities"))
    body += f'<div class="figures">{"".join(figures)}</div>'
    predictions_path = run.eval / "predictions.jsonl"
    predictions = read_jsonl(predictions_path) if predictions_path.is_file() else []
    per_label = labels_by_error(metrics, predictions)
    if per_label:
        shown = per_label[:PER_LABEL_ROWS]
        more = (f" ({len(shown)} worst of {len(per_label)}; every label in eval/per_label.csv)"
                if len(per_label) > len(shown) else "")
        body += (f"<h3>Labels by error, worst first{more}</h3>"
                 + _table(list(shown[0]), [list(row.values()) for row in shown]))
    confusions = Counter((p["gold"], p["tuned_answer"]) for p in predictions
                         if p.get("tuned_answer") is not None and p["tuned_answer"] != p["gold"])
    if confusions:
        body += ("<h3>Most frequent confusions of the tuned model</h3>"
                 + _table(["gold", "answered", "rows"], [[g, a, n] for (g, a), n in confusions.most_common(15)]))
    if predictions:
        columns = ["input", "gold", *[f"{n}_answer" for n in names]]
        body += "<h3>Example predictions</h3>" + _table(
            columns, [[p.get(c) for c in columns] for p in predictions[:examples]])
    return _section("evaluation", "Evaluation on the test split", body)


def write_report(run_dir: Path, examples: int = 12) -> Path:
    run = RunDir(run_dir)
    sections = [_prepare(run), _search(run), _training(run), _evaluation(run, examples)]
    title = f"tunelab report: {html.escape(run.root.name)}"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>tunelab report</h1>"
            f"<p class='muted'>{html.escape(str(run.root.resolve()))}</p>{''.join(s for s in sections if s)}"
            "</body></html>")
    path = run.root / "report.html"
    write_text_atomic(path, page)
    return path
