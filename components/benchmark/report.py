"""The benchmark's human-readable outputs: `report.html`, one self-contained file with its plots
embedded as base64 PNGs (it opens from an object store, a KFP HTML artifact or an e-mail), and
`summary.md`, the headline numbers for a pull request or a model card. Both read only metrics.json's
dict, so a report can be re-rendered from an old run's metrics."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

from kubeclip.components.benchmark.gate import lookup
from kubeclip.components.benchmark.retrieval import KS

MAX_CLASSES_SHOWN = 40  # beyond this the per-class plot shows the worst and best 20
HEADLINE = {
    "zeroshot": ("top1", "top5", "mean_per_class_recall", "single_template_top1"),
    "linear_probe": ("top1", "mean_per_class_recall"),
    "robustness": ("clean.zeroshot", "mean.zeroshot", "retained.zeroshot", "clean.linear_probe",
                   "mean.linear_probe", "retained.linear_probe"),
    "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"),
}
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}"""


def plots(metrics: dict) -> dict[str, tuple[str, Figure]]:
    """{id: (caption, figure)} for every plot the metrics support."""
    out = {}
    zeroshot, probe, robust = metrics.get("zeroshot"), metrics.get("linear_probe"), metrics.get("robustness")
    if zeroshot:
        out["per-class-accuracy"] = ("Per-class accuracy (recall) on the test split", _per_class(zeroshot, probe))
        out["confusion-matrix"] = ("Zero-shot confusion matrix, rows normalised (true class by row)",
                                   _confusion(zeroshot))
    if zeroshot and probe:
        out["zeroshot-vs-probe"] = ("Zero-shot against linear probes trained on k examples per class and on "
                                    "the whole probe split", _probe_curve(zeroshot, probe))
    if robust:
        out["accuracy-vs-severity"] = ("Top-1 under corruption by severity (0 = clean); solid: zero-shot, "
                                       "dashed: linear probe", _severity(robust))
    if metrics.get("retrieval"):
        out["retrieval-recall"] = ("Retrieval recall@k", _retrieval(metrics["retrieval"]))
    return out


def headline(metrics: dict) -> dict[str, float]:
    """The headline numbers by dotted path (zeroshot.top1, ...), as the gate addresses them."""
    return {f"{task}.{key}": lookup(metrics[task], key) for task, keys in HEADLINE.items() if task in metrics
            for key in keys if lookup(metrics[task], key) is not None}


def render_html(metrics: dict) -> str:
    model, dataset = metrics.get("model", {}), metrics.get("dataset", {})
    title = f"kubeclip benchmark: {dataset.get('name', '')} (model {model.get('id', '?')})"
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>Checkpoint <code>{_e(model.get('checkpoint', ''))}</code>; dataset "
            f"<code>{_e(dataset.get('path', ''))}</code>, split <code>{_e(dataset.get('split', ''))}</code>.</p>"]
    for task in HEADLINE:
        if task in metrics:
            body += [f"<h2>{_e(task.replace('_', ' '))}</h2>", _table(_rows(task, metrics[task]))]
    for plot_id, (caption, figure) in plots(metrics).items():
        body.append(f'<figure id="{plot_id}"><img alt="{_e(caption)}" src="data:image/png;base64,{_png(figure)}">'
                    f"<figcaption>{_e(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def render_markdown(metrics: dict) -> str:
    model, dataset = metrics.get("model", {}), metrics.get("dataset", {})
    lines = [f"# Benchmark: {dataset.get('name', '')}", "",
             f"Model `{model.get('id', '?')}` on `{dataset.get('path', '')}` (split `{dataset.get('split', '')}`).",
             "", "| task | metric | value |", "|---|---|---|"]
    for task in HEADLINE:
        if task in metrics:
            lines += [f"| {task} | {name} | {value} |" for name, value in _rows(task, metrics[task])]
    return "\n".join(lines) + "\n"


def _rows(task: str, section: dict) -> list[tuple[str, str]]:
    """(metric, formatted value) pairs of a task's headline numbers."""
    rows = [(key, _fmt(lookup(section, key))) for key in HEADLINE[task] if lookup(section, key) is not None]
    if task == "zeroshot":
        rows.append(("images / classes / templates",
                     f"{section['images']} / {len(section['classes'])} / {section['templates']}"))
    if task == "linear_probe":
        rows.append(("C / probe examples", f"{section['C']:g} / {section['train_samples']}"))
        rows += [(f"{k}-shot top1", _fmt(v["top1"])) for k, v in section["few_shot"].items()]
    if task == "retrieval":
        rows.append(("images / captions", f"{section['images']} / {section['texts']}"))
    return rows


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td>{_e(name)}</td><td>{_e(value)}</td></tr>" for name, value in rows)
    return f"<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{cells}</tbody></table>"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# Plots


def _per_class(zeroshot: dict, probe: dict | None) -> Figure:
    classes, recall = zeroshot["classes"], np.array(zeroshot["per_class_recall"])
    order = np.argsort(recall, kind="stable")
    if len(order) > MAX_CLASSES_SHOWN:
        half = MAX_CLASSES_SHOWN // 2
        order = np.concatenate([order[:half], order[-half:]])
    figure = Figure(figsize=(8, 1.5 + 0.25 * len(order)))
    ax = figure.subplots()
    y = np.arange(len(order))
    height = 0.4 if probe else 0.8
    ax.barh(y, recall[order], height, label="zero-shot")
    if probe:
        ax.barh(y + height, np.array(probe["per_class_recall"])[order], height, label="linear probe")
        ax.legend(loc="lower right")
    ax.set_yticks(y + (height / 2 if probe else 0), [classes[i] for i in order], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (recall)")
    ax.set_title("per-class accuracy" + (" (worst and best classes)" if len(classes) > len(order) else ""))
    return figure


def _confusion(zeroshot: dict) -> Figure:
    matrix = np.array(zeroshot["confusion_matrix"], dtype=float)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    classes = zeroshot["classes"]
    side = min(12, 3 + 0.35 * len(classes))
    figure = Figure(figsize=(side + 1, side))
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figure


def _probe_curve(zeroshot: dict, probe: dict) -> Figure:
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    shots = sorted(probe["few_shot"], key=int)
    per_class_all = probe["train_samples"] / max(1, len(zeroshot["classes"]))
    x = [int(k) for k in shots] + [per_class_all]
    y = [probe["few_shot"][k]["top1"] for k in shots] + [probe["top1"]]
    ax.plot(x, y, "o-", label="linear probe (k per class; last: all of probe/)")
    ax.axhline(zeroshot["top1"], color="C1", linestyle="--", label="zero-shot")
    ax.set_xscale("log")
    ax.set_xlabel("labelled examples per class")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.legend()
    return figure


def _severity(robust: dict) -> Figure:
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    x = [0, *robust["severities"]]
    for i, (name, entry) in enumerate(robust["corruptions"].items()):
        for method, style in (("zeroshot", "-"), ("linear_probe", "--")):
            if method in entry:
                y = [robust["clean"][method], *(entry[method][str(s)] for s in robust["severities"])]
                ax.plot(x, y, style, marker="o", color=f"C{i}",
                        label=f"{name} ({'zero-shot' if method == 'zeroshot' else 'probe'})")
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return figure


def _retrieval(retrieval: dict) -> Figure:
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    width = 0.4
    for i, (direction, label) in enumerate((("i2t", "image to text"), ("t2i", "text to image"))):
        ax.bar(np.arange(len(KS)) + i * width, [retrieval[f"{direction}_r{k}"] for k in KS], width, label=label)
    ax.set_xticks(np.arange(len(KS)) + width / 2, [f"R@{k}" for k in KS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend()
    return figure
