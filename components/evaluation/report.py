"""The evaluation report: markdown plus PNG plots (PPO curves; score distributions of the policy vs SFT), and
`report.html` with the plots inside, which MLflow's artifact view renders (it shows .md as plain text)."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from components.evaluation.metrics import held_out  # noqa: E402

BASELINES = ("sft", "champion")  # the models a candidate policy is compared with


def read_history(ppo_dir: str | Path) -> list[dict]:
    path = Path(ppo_dir) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_curves(history: list[dict], path: Path) -> None:
    """PPO reward, gold (held-out evaluations) and KL to the reference over iterations."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    series = [("objective/scores", "reward model score (train)"), (held_out("gold_mean"), "gold score (held-out)"),
              ("objective/kl", "KL to reference (nats)")]
    for ax, (key, title) in zip(axes, series):
        points = [(h["iteration"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 20 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_scores(rows: list[dict], key: str, path: Path) -> None:
    """Histogram of `key` (score or gold) per model."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model in dict.fromkeys(r["model"] for r in rows):
        ax.hist([r[key] for r in rows if r["model"] == model], bins=20, alpha=0.5, label=model)
    ax.set_title(f"{key} per response", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_frontier(metrics: dict[str, float], models: list[str], key: str, path: Path) -> None:
    """The DPO paper's frontier view: each model's held-out `key` (gold or reward-model score) against its KL
    to the SFT model, one point per model."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model in models:
        x, y = metrics.get(held_out("kl_to_ref", model)), metrics.get(held_out(key, model))
        if x is not None and y is not None:
            ax.scatter([x], [y], s=40)
            ax.annotate(model, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.margins(0.2)  # room for the labels
    ax.set_xlabel("KL to SFT (nats per response)")
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs KL to SFT", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(metrics: dict[str, float], rows: list[dict], models: list[str], threshold: float) -> str:
    per_model = {m: {k.removeprefix(held_out("", m)): v for k, v in metrics.items() if k.startswith(held_out("", m))
                     and "/" not in k.removeprefix(held_out("", m)) and "win_rate" not in k and "hacking" not in k}
                 for m in models}
    keys = sorted({k for values in per_model.values() for k in values})
    lines = ["# Evaluation", "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key in keys:
        cells = [f"{per_model[m][key]:.4g}" if key in per_model[m] else "" for m in models]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    candidates = [m for m in models if m not in BASELINES]
    named = "policy" not in candidates  # several policies: eval/<q> repeats the chosen one's eval/<policy>/<q>
    lines += ["", *(f"- {k}: {v:.1%}" for k, v in sorted(metrics.items())
                    if "win_rate" in k and not (named and k.count("/") == 1))]
    for m in candidates:
        if held_out("reward_hacking", m) in metrics:
            verdict = "**FLAGGED**" if metrics[held_out("reward_hacking", m)] else "not flagged"
            lines.append(f"- reward hacking{'' if m == 'policy' else f' ({m})'}: {verdict} (reward-model gain exceeds "
                         f"gold gain by {metrics[held_out('reward_hacking_excess', m)]:.2f} SFT std; threshold "
                         f"{threshold:g})")
    lines += ["", "![PPO curves](curves.png)", "", "![frontier](frontier.png)", "", "![scores](scores.png)", "",
              "## Samples", ""]
    for r in [r for m in candidates for r in [r for r in rows if r["model"] == m][:max(5 // len(candidates), 2)]]:
        prompt = r["prompt"].strip().replace("\n", " ↵ ").replace("`", "'")  # a chat template's newlines
        lines.append(f"- {'' if r['model'] == 'policy' else r['model'] + ': '}`{prompt}` **->** {' '.join(r['response'].split())} (score {r['score']:.2f}"
                     + (f", gold {r['gold']:g})" if r.get("gold") is not None else ")"))
    return "\n".join(lines) + "\n"


def write(out_dir: Path, metrics: dict[str, float], rows: list[dict], history: list[dict], threshold: float,
          frontier_key: str = "score_mean") -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    plot_curves(history, out_dir / "curves.png")
    plot_frontier(metrics, models, frontier_key, out_dir / "frontier.png")
    plot_scores(rows, "gold" if rows and rows[0].get("gold") is not None else "score", out_dir / "scores.png")
    (out_dir / "report.md").write_text(markdown(metrics, rows, models, threshold))
    (out_dir / "report.html").write_text(html(self_contained(out_dir / "report.md")))


def self_contained(report: Path) -> str:
    """The markdown with its local images inlined as data: URIs (a Prefect artifact has no files beside it)."""
    def inline(match: re.Match) -> str:
        image = report.parent / match.group(2)
        if not image.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"
    return re.sub(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)", inline, report.read_text())


def html(markdown_text: str) -> str:
    import markdown as md

    body = md.markdown(markdown_text, extensions=["tables"])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}</style></head><body>"
            f"{body}</body></html>")
