"""The paper's Table 2, ours beside it: the tables' rows, the paper's numbers, and the report of an ablation.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §4.2 and Table 2 (a)–(e). · *Code:* `tinymask/training/ablation_report.py`
· *Test:* `tests/test_ablations.py`

`TABLES` lists each table's rows (our variant, the paper's mask AP / AP50 / AP75) and the Δ rows the paper discusses.
`aggregate` turns the runs' results into per-row means ± standard deviations over seeds and Δ rows ± their standard
errors (`tinymask/training/ablations.py` says why); `format_table` prints a table in the paper's layout (text or
Markdown), `write_outputs` writes ablations.json, ablations.md and ablations.png.
"""
from __future__ import annotations

import io
import math
import os
import platform
import sys
from dataclasses import dataclass

from tinymask._files import atomic_write, write_json, write_text

METRICS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class Row:
    label: str  # the row's name in the paper's table
    variant: str  # the key of the tinymask variant that plays it (VARIANTS)
    paper: tuple  # the paper's (AP, AP50, AP75) mask; None where the paper gives no figure
    paper_box: tuple | None = None  # the paper's box (AP, AP50, AP75), Table 2(d) only
    marks: tuple = ()  # extra columns of the paper's table (Table 2c: align? bilinear? agg.)


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    paper_model: str
    ours_model: str
    rows: tuple
    deltas: tuple = ()  # (row a, row b): print "b − a" like the paper's Δ rows
    mark_names: tuple = ()
    box: bool = False  # also show box AP (Table 2d)


TABLES = {
    "a": Table("a", "Backbone architecture", "ResNet-50", "mini ResNet (1 block per stage)",
               (Row("C4", "c4", (30.3, 51.2, 31.5)),
                Row("FPN", "fpn", (33.6, 55.2, 35.3))),
               deltas=((0, 1),)),
    "b": Table("b", "Multinomial vs. independent masks", "ResNet-50-C4", "mini C4",
               (Row("softmax", "c4-softmax", (24.8, 44.1, 25.1)),
                Row("sigmoid", "c4", (30.3, 51.2, 31.5)),
                Row("class-agnostic (§4.2)", "c4-agnostic", (29.7, None, None))),
               deltas=((0, 1), (2, 1))),
    "c": Table("c", "RoIAlign at stride 16", "ResNet-50-C4", "mini C4",
               (Row("RoIPool", "c4-pool", (26.9, 48.8, 26.4), marks=("", "", "max")),
                Row("RoIWarp", "c4-warp-max", (27.2, 49.2, 27.1), marks=("", "x", "max")),
                Row("RoIWarp", "c4-warp-avg", (27.1, 48.9, 27.1), marks=("", "x", "ave")),
                Row("RoIAlign", "c4-align-max", (30.2, 51.0, 31.8), marks=("x", "x", "max")),
                Row("RoIAlign", "c4", (30.3, 51.2, 31.5), marks=("x", "x", "ave"))),
               deltas=((0, 4),), mark_names=("align?", "bilinear?", "agg.")),
    "d": Table("d", "RoIAlign at stride 32", "ResNet-50-C5", "mini C5",
               (Row("RoIPool", "c5-pool", (23.6, 46.5, 21.6), paper_box=(28.2, 52.7, 26.9)),
                Row("RoIAlign", "c5", (30.9, 51.8, 32.1), paper_box=(34.0, 55.3, 36.4))),
               deltas=((0, 1),), box=True),
    "e": Table("e", "Mask branch", "ResNet-50-FPN", "mini FPN",
               (Row("MLP  fc: 1024 -> 1024 -> K*28^2", "fpn-mlp", (31.5, 53.7, 32.8)),
                Row("FCN  conv: 256 x4 -> deconv -> K", "fpn", (33.6, 55.2, 35.3))),
               deltas=((0, 1),)),
}


PAPER_NOTE = ("paper: Mask R-CNN Table 2, mask AP on COCO minival (class-agnostic: §4.2); "
              "ours: mask AP x 100 on held-out shapes, mean ± std over seeds")


def mean_std(values: list) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": values}


def aggregate(results: list, tables) -> dict:
    """Per table and row: our mask (and box) AP/AP50/AP75 over seeds (x 100), the paper's, and the Δ rows."""
    by_variant = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    out = {}
    for key in tables:
        t = TABLES[key]
        rows = []
        for row in t.rows:
            runs = sorted(by_variant.get(row.variant, []), key=lambda r: r["seed"])
            if not runs:
                raise ValueError(f"no result for variant {row.variant} of Table 2({key})")
            done = [r for r in runs if r["segm"] is not None]  # a diverged run has no AP: it is listed, not averaged
            ours = None if not done else {
                "mask": {m: mean_std([100 * r["segm"][m] for r in done]) for m in METRICS},
                "box": {m: mean_std([100 * r["bbox"][m] for r in done]) for m in METRICS}}
            rows.append({"label": row.label, "variant": row.variant, "marks": list(row.marks),
                         "seeds": [r["seed"] for r in done], "diverged": [r["seed"] for r in runs if r["segm"] is None],
                         "ours": ours,
                         "paper": {"mask": dict(zip(METRICS, row.paper)),
                                   "box": dict(zip(METRICS, row.paper_box)) if row.paper_box else None}})
        deltas = []
        for a, b in t.deltas:
            d = {"from": rows[a]["label"] + (f" {rows[a]['marks'][-1]}" if rows[a]["marks"] else ""),
                 "to": rows[b]["label"] + (f" {rows[b]['marks'][-1]}" if rows[b]["marks"] else ""),
                 "rows": [a, b]}
            for kind in ("mask", "box"):
                d[kind] = {}
                for m in METRICS:
                    pa, pb = (rows[a]["paper"][kind] or {}).get(m), (rows[b]["paper"][kind] or {}).get(m)
                    d[kind][m] = {"ours": None, "se": None,
                                  "paper": None if pa is None or pb is None else round(pb - pa, 1)}
                    if rows[a]["ours"] is None or rows[b]["ours"] is None:
                        continue  # every seed of one row diverged
                    x, y = rows[a]["ours"][kind][m], rows[b]["ours"][kind][m]
                    d[kind][m]["ours"] = y["mean"] - x["mean"]
                    d[kind][m]["se"] = math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])
            deltas.append(d)
        out[key] = {"title": t.title, "paper_model": t.paper_model, "ours_model": t.ours_model,
                    "mark_names": list(t.mark_names), "box": t.box, "rows": rows, "deltas": deltas}
    return out


def _ours(row: dict, kind: str, metric: str, markdown: bool) -> str:
    """Our cell: mean ± std over the seeds that trained; "*" when some seeds diverged, "diverged" when all did."""
    if row["ours"] is None:
        return "diverged"
    s = row["ours"][kind][metric]
    star = "*" if row.get("diverged") else ""
    return f"{s['mean']:.1f} ± {s['std']:.1f}{star}" if markdown else f"{s['mean']:5.1f} ±{s['std']:4.1f}{star}"


def _delta(d: dict, kind: str, metric: str, markdown: bool) -> str:
    v = d[kind][metric]
    if v["ours"] is None:
        return "-"
    return f"**{v['ours']:+.1f}** ± {v['se']:.1f}" if markdown else f"{v['ours']:+6.1f} ±{v['se']:3.1f}"


def _diverged_note(t: dict) -> list:
    return [f"* {r['label']}: seed(s) {', '.join(map(str, r['diverged']))} diverged (the loss became NaN), left out"
            for r in t["rows"] if r.get("diverged")]


def _paper(v) -> str:
    return "   - " if v is None else f"{v:5.1f}"


def format_table(key: str, t: dict, markdown: bool = False) -> str:
    """One table in the paper's layout: the paper's columns, ours (mean ± std) and the paper's side by side."""
    kinds = ["mask", "box"] if t["box"] else ["mask"]
    head = f"Table 2({key}) {t['title']} — paper: {t['paper_model']}; ours: {t['ours_model']}"
    cols = []
    for kind in kinds:
        pre = "" if kind == "mask" else "box "
        cols += [f"{pre}{m}" for m in METRICS]
    if markdown:
        lines = [f"**{head}**", ""]
        header = ["", *t["mark_names"]] + [f"ours {c}" for c in cols] + [f"paper {c}" for c in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] + [":-:"] * (len(header) - 1)) + "|")
        for r in t["rows"]:
            ours = [_ours(r, k, m, True) for k in kinds for m in METRICS]
            paper = [_paper((r["paper"][k] or {}).get(m)).strip() for k in kinds for m in METRICS]
            lines.append("| " + " | ".join([r["label"], *r["marks"], *ours, *paper]) + " |")
        for d in t["deltas"]:
            ours = [_delta(d, k, m, True) for k in kinds for m in METRICS]
            paper = ["-" if d[k][m]["paper"] is None else f"{d[k][m]['paper']:+.1f}" for k in kinds for m in METRICS]
            lines.append("| " + " | ".join([f"Δ {d['to']} − {d['from']}", *[""] * len(t["mark_names"]), *ours,
                                             *paper]) + " |")
        notes = _diverged_note(t)
        return "\n".join(lines + ([""] + [n + "  " for n in notes] if notes else []))
    marks_w = [max(len(n), 3) for n in t["mark_names"]]
    delta_labels = [f"Δ {d['to']} − {d['from']}" for d in t["deltas"]]
    label_w = max(len(x) for x in [r["label"] for r in t["rows"]] + delta_labels) + 2
    pw = [max(7, len(c)) + 1 for c in cols]  # paper column widths
    bar = " " * (label_w + sum(w + 1 for w in marks_w))
    lines = [head]
    lines.append(bar + "  | " + f"{'ours: mean ±std over seeds':^{12 * len(cols)}}" + "  | " + f"{'paper':^{sum(pw)}}")
    top = " " * label_w + "".join(f"{n:>{w + 1}}" for n, w in zip(t["mark_names"], marks_w))
    top += "  | " + "".join(f"{c:>12}" for c in cols) + "  | " + "".join(f"{c:>{w}}" for c, w in zip(cols, pw))
    lines.append(top)
    cells = [(k, m) for k in kinds for m in METRICS]
    for r in t["rows"]:
        s = f"{r['label']:<{label_w}}" + "".join(f"{m:>{w + 1}}" for m, w in zip(r["marks"], marks_w))
        s += "  | " + "".join(f"{_ours(r, k, m, False):>12}" for k, m in cells)
        s += "  | " + "".join(f"{_paper((r['paper'][k] or {}).get(m)):>{w}}" for (k, m), w in zip(cells, pw))
        lines.append(s)
    for d, label in zip(t["deltas"], delta_labels):
        s = f"{label:<{label_w}}" + " " * sum(w + 1 for w in marks_w)
        s += "  | " + "".join(_delta(d, k, m, False).rjust(12) for k, m in cells)
        s += "  | " + "".join(("-" if d[k][m]["paper"] is None else f"{d[k][m]['paper']:+.1f}").rjust(w)
                              for (k, m), w in zip(cells, pw))
        lines.append(s)
    if t["deltas"]:
        lines.append("(Δ: a difference of means, ± its standard error over seeds)")
    return "\n".join(lines + _diverged_note(t))


def machine_info(jobs: int, backend: str) -> dict:
    import numpy as np
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
            "jobs": jobs, "backend": backend,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")}


def write_outputs(report: dict, out_dir) -> list:
    """ablations.json, ablations.md, ablations.png in `out_dir`; returns their paths."""
    out_dir = os.fspath(out_dir)
    paths = [os.path.join(out_dir, n) for n in ("ablations.json", "ablations.md", "ablations.png")]
    write_json(paths[0], report, indent=1)
    s = report["setting"]
    md = [f"# Mask R-CNN Table 2 in miniature ({s['name']} setting)", "",
          f"`{report['command']}` — {len(s['seeds'])} seeds × {s['iterations']} iterations per variant, batch "
          f"{s['batch_size']}, shapes `{s['difficulty']}` ({s['num_train']} training / {s['num_val']} held-out "
          f"images of {s['image_size']}×{s['image_size']}); {report['minutes']:.1f} min on "
          f"{report['machine']['cpus']} CPUs ({report['machine']['processor']}), backend "
          f"{report['machine']['backend']}, {report['machine']['jobs']} runs at a time.", "",
          PAPER_NOTE + ".", ""]
    for key, t in report["tables"].items():
        md += [format_table(key, t, markdown=True), ""]
    write_text(paths[1], "\n".join(md))
    plot_tables(report["tables"], paths[2])
    return paths


def plot_tables(tables: dict, path) -> None:
    """One panel per table: our mask AP and AP75 (bars with the seeds' std) next to the paper's (hatched)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.2), squeeze=False)
    for ax, (key, t) in zip(axes[0], tables.items()):
        n = len(t["rows"])
        labels = [r["label"].split("  ")[0] + (f"\n{r['marks'][-1]}" if r["marks"] else "") for r in t["rows"]]
        width = 0.2
        for j, (m, colour) in enumerate((("AP", "tab:blue"), ("AP75", "tab:orange"))):
            x = [i + (j - 1.5) * width for i in range(n)]
            ours = [r["ours"]["mask"][m] if r["ours"] else {"mean": 0.0, "std": 0.0} for r in t["rows"]]  # diverged: 0
            ax.bar(x, [o["mean"] for o in ours], width, yerr=[o["std"] for o in ours], color=colour, capsize=3,
                   label=f"ours {m}")
            x = [i + (j + 0.5) * width for i in range(n)]
            ax.bar(x, [r["paper"]["mask"][m] or 0 for r in t["rows"]], width, color=colour, alpha=0.35,
                   hatch="//", label=f"paper {m}")
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(f"Table 2({key}) {t['title']}", fontsize=9)
        ax.set_ylabel("mask AP x 100")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
