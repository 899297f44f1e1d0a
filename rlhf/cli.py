"""`rlhf`: validate a config, run the pipeline flow or one stage, compare pipeline runs.

Without PREFECT_API_URL the flow runs on Prefect's temporary local server; without MLFLOW_TRACKING_URI runs are
tracked in `<state_dir>/mlflow.db`; with `output_dir: s3://...` artifacts go to S3. No code changes between them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback

from components.config.loading import load_config
from components.config.pipeline import check_local_models
from components.config.stages import policy_stages, stage_names, stages, upstream_names
from components.errors import RLHFError
from components.io.redact import redact
from tasks import termination

log = logging.getLogger("rlhf")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml", help="pipeline YAML (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set ppo.lr=2e-5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF pipeline: data prep, SFT, reward model, PPO, "
                                                              "evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors (file, config, data)")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_args(sub.add_parser("validate", help="validate a config and print it resolved"))
    run = sub.add_parser("run", help="run the pipeline flow (cached stages are reused)")
    _config_args(run)
    run.add_argument("--force", action="append", default=[], choices=stage_names(), help="recompute this stage")
    run.add_argument("--from-stage", choices=stage_names(), help="recompute this stage and every later one")
    stage = sub.add_parser("stage", help="run one stage; upstream outputs from the cache or given as URIs")
    stage.add_argument("name", choices=[s.name for s in stages() if s.has_flow])
    _config_args(stage)
    for upstream in upstream_names():
        stage.add_argument(f"--{upstream}", metavar="URI", help=f"stored {upstream} output to start from")
    feedback = sub.add_parser("feedback", help="human feedback: collect in the Prefect UI, import or export labels")
    fsub = feedback.add_subparsers(dest="action", required=True)
    imp = fsub.add_parser("import", help="validate a label file (JSONL/CSV) and store it as a feedback dataset")
    imp.add_argument("file")
    _config_args(imp)
    for name, help_text in (("collect", "sample pairs and pause the feedback flow for answers in the Prefect UI"),
                            ("export", "write unlabelled pairs as JSONL for an outside labelling tool")):
        p = fsub.add_parser(name, help=help_text)
        _config_args(p)
        p.add_argument("--data", required=True, metavar="URI", help="stored data prep output")
        p.add_argument("--policy", required=True, metavar="URI", help="stored PPO (or SFT) output")
        p.add_argument("--baseline", metavar="URI", help="compare against this model instead of a second sample")
        p.add_argument("-n", type=int, default=8, help="number of pairs (default: %(default)s)")
        if name == "export":
            p.add_argument("--out", required=True, help="JSONL file to write")
    models = sub.add_parser("models", help="model utilities")
    msub = models.add_subparsers(dest="action", required=True)
    imp_model = msub.add_parser("import", help="import a GGUF file (llama.cpp) as a save_pretrained directory")
    imp_model.add_argument("gguf", help="the .gguf file")
    imp_model.add_argument("--out", required=True, help="directory to write (config, safetensors, tokenizer)")
    runs = sub.add_parser("runs", help="compare recent pipeline runs from MLflow")
    _config_args(runs)
    runs.add_argument("-n", type=int, default=10, help="how many runs (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            from components.models.gguf import import_gguf
            info = import_gguf(args.gguf, args.out)
            print(f"{args.out}: {info['architecture']}, {info['parameters'] / 1e6:.0f}M parameters; greedy output "
                  f"equals the GGUF model's ({info['probe']!r})")
            return 0
        config = load_config(args.config, args.set)
        if args.command == "validate":
            check_local_models(config)
            print(json.dumps(config.model_dump(mode="json"), indent=2))
            return 0
        os.environ.setdefault("PREFECT_HOME", os.path.abspath(os.path.join(config.state_dir, "prefect")))
        os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # Prefect's sqlite file needs its directory
        _quiet_logging(args.debug)
        if args.command == "runs":
            from rlhf.runs import print_runs
            print_runs(config, args.n)
            return 0
        signal.signal(signal.SIGTERM, _terminated)  # a clean failure: runs marked failed, the server stopped
        termination.watch()  # and recorded, so a stage stops even where the handler's exception was swallowed
        exporting = args.command == "feedback" and args.action == "export"  # runs no flow
        with contextlib.nullcontext() if exporting else _prefect_api(os.environ["PREFECT_HOME"]):
            if args.command == "feedback":
                return _feedback(args, config)
            return _run(args, config)
    except RLHFError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _prefect_api(prefect_home: str):
    """PREFECT_API_URL as set, else a temporary server that dies with this process (rlhf.server)."""
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from rlhf.server import temporary_server
    return temporary_server(prefect_home)


def _run(args, config) -> int:
    from flows.pipeline import rlhf_pipeline
    from flows.stages import stage_flow

    if args.command == "stage" and args.name not in config.stages:  # `rlhf stage dpo` on a PPO-only config
        config = config.model_copy(update={"policies": [*config.policies, args.name]})
    if args.command == "run":
        outputs = rlhf_pipeline(config, force=args.force, from_stage=args.from_stage)
    elif all(getattr(args, u) is None for u in config.upstream(args.name)):
        outputs = rlhf_pipeline(config, force=[args.name])  # upstream from the cache (computed if missing)
    else:  # the URIs given; the other upstream outputs are this config's own (computed if missing)
        uris = {f"{u}_uri": getattr(args, u) for u in config.upstream(args.name)}
        outputs = {args.name: stage_flow(args.name)(config=config, **uris)}
    _summary(outputs, config)
    return 0


def _feedback(args, config) -> int:
    if args.action == "import":
        from flows.feedback import import_feedback_flow
        out = import_feedback_flow(config, args.file)
    elif args.action == "collect":
        from flows.feedback import feedback_flow
        out = feedback_flow(config, args.data, args.policy, args.baseline, n_pairs=args.n)
    else:
        import json

        from components.feedback.pairs import make_pairs
        from components.io.store import ArtifactStore

        store = ArtifactStore(config.output_dir, os.path.join(config.state_dir, "cache"))
        local = {k: store.fetch(*u.rstrip("/").split("/")[-2:]) if u else None
                 for k, u in (("data", args.data), ("policy", args.policy), ("baseline", args.baseline))}
        pairs = make_pairs(local["data"], local["policy"], local["baseline"], args.n, seed=0)
        with open(args.out, "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps({"prompt": p["prompt"], "response_a": p["response_a"],
                                    "response_b": p["response_b"], "choice": ""}) + "\n")
        print(f"wrote {len(pairs)} pairs to {args.out}; fill `choice` (A, B or tie) and run: rlhf feedback import")
        return 0
    if out is None:
        print("no usable labels: nothing stored")
        return 1
    print(f"feedback dataset: {out.uri} (fingerprint {out.fingerprint[:12]})\n"
          f"train the reward model on it: rlhf run --set 'reward.feedback=[{out.uri}]'")
    return 0


def _summary(outputs, config) -> None:
    from components.evaluation.metrics import held_out, policy_names
    from tasks.tracking import is_key_metric

    print("\nsummary")
    for name, out in outputs.items():
        shown = {k: round(v, 4) for k, v in out.metrics.items() if is_key_metric(k)}
        print(f"  {name:7s} {'cached' if out.cached else 'ran   '} {out.uri}  {shown}")
    m = outputs["evaluate"].metrics if "evaluate" in outputs else {}
    policies = policy_names(p for p in policy_stages() if p in outputs)
    for policy, name in policies.items():
        if held_out("gold_mean", name) in m:
            print(f"  gold score on held-out prompts: SFT {m[held_out('gold_mean', 'sft')]:.3f} -> {config.algorithm(policy).upper()} "
                  f"{m[held_out('gold_mean', name)]:.3f}; wins {m[held_out('gold_win_rate_vs_sft', name)]:.0%} of "
                  f"prompts against SFT; KL to SFT {m[held_out('kl_to_ref', name)]:.2f} nats")
    for policy in policies:
        if outputs[policy].mlflow_run_id:
            print(f"  {policy} policy: {outputs[policy].uri} (MLflow run {outputs[policy].mlflow_run_id})")
    if policies:
        print("  compare runs: rlhf runs")


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed task's or flow's exception with its traceback (70-110 lines) before the CLI's one
    `error:` line; for an input error (RLHFError: it names the file, line or field) the line is what helps."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RLHFError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_logging(debug: bool = False) -> None:
    """Our progress lines at INFO; DeepSpeed and transformers only when something is wrong; tracebacks of input
    errors only with --debug."""
    if not debug:
        from prefect.logging.configuration import setup_logging

        setup_logging()  # what importing Prefect's flow machinery does; its handlers exist from here on

        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            for h in logging.getLogger(name).handlers:
                h.addFilter(_UserErrorsWithoutTraceback())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    for name in ("rlhf", "components"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
