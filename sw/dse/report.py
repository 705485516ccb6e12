"""Presenting a DSE report: Pareto plots (matplotlib) and a terminal summary (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_pareto", "summary_table"]


def plot_pareto(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write ``pareto_DSP48E2.png`` and ``pareto_BRAM36.png`` into ``directory``: latency
    against the resource for every evaluated point (feasible and not), the feasible front,
    the board's limit, the best point and the base config. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    evaluated = [p for p in report["points"] if p["status"] == "evaluated"]
    best = report.get("best_point")
    base = report.get("baseline") or {}
    written = []
    for resource in ("DSP48E2", "BRAM36"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for feasible, colour, label in ((True, "tab:blue", "feasible"), (False, "0.75", "over the board's limits")):
            chosen = [p for p in evaluated if p["feasible"] is feasible]
            if chosen:
                ax.scatter([p["resources"][resource] for p in chosen], [p["latency_ms"] for p in chosen],
                           s=12, color=colour, label=f"{label} ({len(chosen)})", zorder=2)
        front = sorted((p for p in report["pareto"] if resource in p["fronts"]), key=lambda p: p[resource])
        if front:
            ax.step([p[resource] for p in front], [p["latency_ms"] for p in front], where="post",
                    color="tab:red", lw=1.5, label=f"Pareto front ({len(front)})", zorder=3)
        ax.axvline(report["board"]["limits"][resource], color="k", ls="--", lw=1,
                   label=f"{report['board']['name']} limit ({report['board']['limits'][resource]})")
        if best is not None:
            ax.scatter([best["resources"][resource]], [best["latency_ms"]], marker="*", s=180, color="gold",
                       edgecolor="k", label=f"best: {best['latency_ms']:.2f} ms", zorder=4)
        if "latency_ms" in base:
            ax.scatter([base["resources"][resource]], [base["latency_ms"]], marker="D", s=60, color="tab:green",
                       edgecolor="k", label=f"base {base['name']}: {base['latency_ms']:.2f} ms", zorder=4)
        ax.set_xlabel(f"{resource} (resource model)")
        ax.set_ylabel(f"{report['model']} latency, ms (performance model)")
        ax.set_yscale("log")
        ax.set_title(f"{report['space']['name']}: latency vs {resource} on {report['board']['device']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"pareto_{resource}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def summary_table(report: dict[str, Any], console: Any) -> None:
    """Counts, the Pareto points and the best point, for a terminal."""
    from rich.table import Table

    console.print(f"{report['model']} on {report['board']['name']} ({report['board']['device']}): "
                  f"{report['evaluated']} evaluated, {report['skipped']} skipped, {report['feasible']} feasible "
                  f"in {report['wall_seconds']} s ({report.get('cluster', '')})", markup=False)
    table = Table(title="Pareto points (feasible)")
    for column in ("name", "latency ms", "DSP48E2", "BRAM36", "LUT", "FF", "front"):
        table.add_column(column, justify="left" if column in ("name", "front") else "right")
    for point in report["pareto"]:
        table.add_row(point["name"], f"{point['latency_ms']:.3f}", *(str(round(point[k])) for k in
                                                                    ("DSP48E2", "BRAM36", "LUT", "FF")),
                      ", ".join(point["fronts"]))
    console.print(table)
    best = report.get("best_point")
    if best is None:
        console.print("no feasible point", markup=False)
    else:
        console.print(f"best: {best['name']} {best['latency_ms']:.3f} ms with {best['values']}", markup=False)
    if report.get("vs_baseline"):
        cmp = report["vs_baseline"]
        console.print(f"base {report['baseline']['name']}: {cmp['baseline_latency_ms']:.3f} ms; the best is "
                      f"{cmp['speedup']}x {'faster' if cmp['speedup'] >= 1 else 'slower'}", markup=False)
    for path in report.get("files", []):
        console.print(f"wrote {path}", markup=False)
