"""`rlhf runs`: recent pipeline runs side by side, from MLflow: the params that differ and the key metrics."""
from __future__ import annotations

from pathlib import Path


def comparison(runs: list) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for MLflow runs: id, start, status, stages that ran, differing params, key metrics."""
    differing = sorted(k for k in set().union(*(r.data.params for r in runs))
                       if len({r.data.params.get(k) for r in runs}) > 1)
    from tasks.tracking import KEY_METRICS, policy_metrics

    metrics = [m for m in KEY_METRICS + policy_metrics() if any(m in r.data.metrics for r in runs)]
    header = ["run", "started", "status", "ran"] + differing + metrics
    rows = []
    for r in runs:
        ran = ",".join(k[len("stage."):] for k, v in sorted(r.data.tags.items())
                       if k.startswith("stage.") and k.count(".") == 1 and v == "ran") or "-"
        rows.append([r.info.run_id[:8], _time(r.info.start_time), r.info.status, ran]
                    + [r.data.params.get(k, "") for k in differing]
                    + [f"{r.data.metrics[m]:.4g}" if m in r.data.metrics else "" for m in metrics])
    return header, rows


def print_runs(config, n: int) -> None:
    from tasks.tracking import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri(Path(config.state_dir)), config.tracking.experiment or config.name)
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.kind` = 'pipeline'",
                                      order_by=["attributes.start_time DESC"], max_results=n)
    if not runs:
        print(f"no pipeline runs in experiment {config.tracking.experiment or config.name} at {tracker.uri}")
        return
    header, rows = comparison(runs)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def _time(ms: int) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M")
