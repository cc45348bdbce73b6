"""``expdiff eval``: score ExpDiff models against the baselines on held-out identities (paper Tables II/III)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_device_flag, settings_from


def _method(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), path.strip()


DESCRIPTION = """\
Evaluate on the identities of a dataset split (default: test). For every subject each method predicts
every expression unit from the subject's own neutral mesh and maps; predictions are compared with the
true expression:
  FVD    mean vertex L2 distance in mm (lower is better)
  PSNR   dB per BRDF map kind (albedo, specular, roughness, normal), data range 1 (higher is better)
  SSIM   per map kind, data range 1 (higher is better)
  LPIPS  only when lpips_weights_path names local safetensors weights (nothing is downloaded)

Also, for every map kind, the change PSNR (dPSNR): the predicted change (expression minus neutral) against
the true change, peak = the true change's range, over the whole map and inside the region that changes.

Baselines, always included: 'neutral copy' (no change), '3DMM' (the mean training-identity expression
delta added to the neutral, geometry and textures) and 'ridge' (a personalised 3DMM: per expression,
ridge regression from the neutral's PCA coefficients to the change of vertices and texels, fitted on
--train-split and tuned on the val split of --train-dataset). Ablations are other model folders:
  --method 'w/o attention=models/no-attn' --method one-hot=models/onehot

Prints the table, writes <out>/metrics.csv (an 'all' row per method plus one row per method and
expression), <out>/summary.csv (one line per method with its margin over the best baseline: FVD ratio,
change-PSNR difference per kind) and logs the per-method means and the CSV to MLflow (experiment 'evaluation').
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score models and baselines on held-out identities (FVD, PSNR, SSIM, LPIPS)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION)
    p.add_argument("--dataset", required=True, metavar="PATH", help="dataset folder made by `expdiff data`")
    p.add_argument("--model", metavar="PATH",
                   help="ExpDiff pipeline folder (or models:/NAME@alias), reported as 'ExpDiff'; without it and "
                   "without --method only the baselines are scored")
    p.add_argument("--method", action="append", type=_method, default=[], metavar="NAME=PATH",
                   help="another pipeline folder (or models:/ reference) to score under NAME; repeatable")
    p.add_argument("--without-prior", action="append", default=[], metavar="NAME",
                   help="also score method NAME (e.g. 'ExpDiff') with its expression prior switched off, as "
                   "'NAME (no prior)'; repeatable")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="identities to evaluate (default: test; 'all' for a held-out set made apart from the "
                   "training corpus, with --train-dataset)")
    p.add_argument("--train-split", default="train", choices=["train", "val", "test"],
                   help="identities whose mean expression delta is the 3DMM baseline (default: train)")
    p.add_argument("--train-dataset", default=None, metavar="PATH",
                   help="dataset whose --train-split the 3DMM baseline averages (default: --dataset); use the "
                   "models' training corpus when --dataset is a separately made held-out set")
    p.add_argument("--max-subjects", type=int, default=None, metavar="N", help="only the first N subjects of the split")
    p.add_argument("--expressions", default=None, metavar="U1,U2,...",
                   help="comma-separated units to evaluate (default: every unit of the dataset)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="sampler steps (default: each model's own)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--fvd-groups", default=None, metavar="G1,G2",
                   help="restrict FVD to vertices of these material groups, e.g. M_Face (default: all vertices)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for metrics.csv (default: <output_root>/evaluations/<dataset>-<time>); an existing "
                   "metrics.csv is never overwritten")
    p.add_argument("--per-expression", action="store_true", help="also print one line per method and expression")
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True,
                   help="log metrics and the CSV to MLflow, experiment 'evaluation' (default: on)")
    add_device_flag(p)
    p.set_defaults(func=run)


def _model_path(settings, ref: str) -> Path:
    if ref.startswith("models:/"):
        from ..registry import resolve_model

        return resolve_model(settings, ref)
    return Path(ref)


def run(args: argparse.Namespace) -> int:
    from ..errors import ExpDiffInputError, PublishError
    from ..evaluation.evaluate import evaluate_methods
    from ..evaluation.metrics import LpipsMetric, lpips_status
    from ..evaluation.baselines import BASELINES
    from ..evaluation.report import format_table, log_report, write_csv, write_summary_csv

    settings = settings_from(args)
    methods: dict[str, Path] = {}
    for name, ref in ([("ExpDiff", args.model)] if args.model else []) + list(args.method):
        if name in methods:
            raise ExpDiffInputError(None, f"method name {name!r} given twice")
        methods[name] = _model_path(settings, ref)
    dataset = Path(args.dataset)
    out = Path(args.out) if args.out else \
        settings.output_path / "evaluations" / f"{dataset.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
    csv_path = out / "metrics.csv"
    if csv_path.exists():
        raise PublishError(f"{csv_path}: already exists and will not be overwritten; choose another --out")

    status = lpips_status(settings)
    lpips = LpipsMetric(status.path, status.net, "cpu") if status.available else None
    expressions = [e.strip() for e in args.expressions.split(",") if e.strip()] if args.expressions else None
    groups = [g.strip() for g in args.fvd_groups.split(",") if g.strip()] if args.fvd_groups else None

    start = time.perf_counter()
    rows = evaluate_methods(dataset, methods, split=args.split, train_split=args.train_split,
                            train_dataset_root=args.train_dataset,
                            max_subjects=args.max_subjects, expressions=expressions, seed=args.seed,
                            steps=args.steps, device=settings.device, lpips=lpips, fvd_groups=groups,
                            without_prior=args.without_prior)
    seconds = time.perf_counter() - start
    write_csv(rows, csv_path)
    write_summary_csv(rows, out / "summary.csv", BASELINES)

    n_methods = len({r.method for r in rows})
    n_expressions = len(rows) // n_methods - 1  # every method has its 'all' row plus one per expression
    n_subjects = rows[0].samples // n_expressions
    print(f"\n{dataset} split '{args.split}': {n_subjects} subject(s) x {n_expressions} expression(s), "
          f"{n_methods} method(s), {seconds:.1f} s")
    print(format_table(rows))
    if args.per_expression:
        print()
        print(format_table(rows, per_expression=True))
    print(f"\nLPIPS: computed ({status.reason})" if status.available else f"\nLPIPS: not computed: {status.reason}")
    print(f"wrote {csv_path} and {out / 'summary.csv'}")
    if args.mlflow:
        params = {"dataset": str(dataset.resolve()), "split": args.split, "train_split": args.train_split,
                  "max_subjects": args.max_subjects, "steps": args.steps, "seed": args.seed,
                  "fvd_groups": args.fvd_groups or "all vertices", "lpips": status.available,
                  **{f"model.{name}": str(path) for name, path in methods.items()}}
        run_id = log_report(settings, rows, csv_path, params=params, run_name=f"eval {dataset.resolve().name}")
        print(f"logged to MLflow run {run_id} at {settings.tracking_uri}")
    return 0
