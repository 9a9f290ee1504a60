"""`pyro-vae train | evaluate | compare | generate | encode | explore`: parse arguments and call the package; nothing else.

Every ``UserError`` becomes one line on stderr and exit status 2.
"""

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

from .errors import UserError, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser():
    parser = _Parser(prog="pyro-vae", description="Variational autoencoders written the Pyro way.")
    parser.add_argument("--version", action="version", version=f"pyro-vae {version('pyro_vae')}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a VAE into a run folder")
    p.add_argument("--config", help="TOML config file (defaults for every key not in it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=5 (repeatable)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with its own config.toml unless --config is given "
                   "(--set train.epochs=N trains it on to N epochs)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="importance-weighted log p(x) on the test set")
    p.add_argument("run_dir")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples per datum (default 5000)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N test images")
    p.add_argument("--chunk-size", type=int, default=0, help="importance samples drawn at once (default: chosen for memory)")
    p.add_argument("--batch-size", type=int, default=100, help="test images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    p = sub.add_parser("compare", help="a table of runs' stored log p(x), with paired differences against a baseline",
                       description="Reads the evaluations `pyro-vae evaluate` stored in each run folder (no checkpoint is loaded). "
                                   "One row per run, runs whose configs differ only in seed grouped into one row; refuses, with exit "
                                   "status 2, evaluations on different test images or with different K.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--baseline", metavar="RUN", help="the run the others are compared with (default: the first)")
    p.add_argument("--format", default="text", choices=("text", "markdown", "latex", "json"))
    p.add_argument("--plot", metavar="FILE.png", help="also draw the paired differences and their 95%% intervals (a forest plot)")
    p.add_argument("--num-samples", type=int, help="use the evaluations with this K (default: the largest K all runs share)")
    p.add_argument("--allow-different-k", action="store_true", help="compare evaluations with different K (printed as a caveat)")

    p = sub.add_parser("generate", help="decode prior samples to images")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64, help="number of images (per digit with --digit all)")
    p.add_argument("--digit", help="conditional runs: a class 0..9, or 'all' for one row per class")
    p.add_argument("--same-style", action="store_true", help="with --digit all: one z per column, shared by every class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=".png for an image grid, .npz for arrays")

    p = sub.add_parser("encode", help="write the mean and standard deviation of q(z|x) for each image",
                       description="Writes an .npz with loc and scale, (N, latent_dim) float32, and labels, (N,) int64; "
                                   "labels is absent when the run's data have none; a semi-supervised run adds y_probs, (N, C) float32, "
                                   "the classifier's q(y|x).")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="which images (default test; a dynamically binarized run's training images get one seeded binarization)")
    p.add_argument("--limit", type=int, help="encode only the first N images of the split")

    p = sub.add_parser("explore", help="latent-space figures, active units and per-dimension KL",
                       description="Writes latent_map.png, interpolations.png, traversals.png (and manifold.png for a 2-D latent) "
                                   "and prints the active units and the per-dimension KL over the test set.")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder for the figures (default: the run folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo KL and prior-quantile draws")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser


def cmd_train(args):
    from . import config, distributed
    from .run import train_run

    base = args.config
    if args.resume and base is None and (Path(args.out) / "config.toml").is_file():
        base = Path(args.out) / "config.toml"  # --resume --set train.epochs=N continues the run's own config
    cfg = config.load(base, args.overrides)
    with distributed.init(cfg.train.device) as world:
        train_run(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, world=world)
        if world.is_main:
            print(f"wrote {args.out}: config.toml, checkpoint.pt, metrics.csv, samples.png, reconstructions.png, loss.png")


def cmd_evaluate(args):
    from .evaluate import evaluate_run

    evaluate_run(args.run_dir, num_samples=args.num_samples, limit=args.limit, chunk_size=args.chunk_size,
                 batch_size=args.batch_size, seed=args.seed, device=args.device, json_summary=args.json)


def cmd_compare(args):
    from . import compare

    if args.plot is not None and not (args.plot.endswith(".png") and Path(args.plot).parent.is_dir()):
        raise UserError(f"--plot must name a .png file in an existing folder, got {args.plot}")
    rows = compare.compare(args.runs, baseline=args.baseline, num_samples=args.num_samples, allow_different_k=args.allow_different_k)
    if args.plot is not None:  # first: a plot it cannot draw is refused before anything is printed
        compare.plot(rows, Path(args.plot))
    print(compare.format_table(rows, args.format))
    if len({str(r["num_samples"]) for r in rows}) > 1 or any(isinstance(r["num_samples"], list) for r in rows):
        print("pyro-vae: caution: the rows were evaluated with different K; log p(x) estimates rise with K, so part of a "
              "difference is the estimator's", file=sys.stderr)
    if args.plot is not None:
        print(f"wrote {args.plot}", file=sys.stderr)


def cmd_generate(args):
    from .generate import generate_run

    generate_run(args.run_dir, Path(args.out), n=args.n, digit=args.digit, same_style=args.same_style, seed=args.seed)
    print(f"wrote {args.out}")


def cmd_encode(args):
    from .explore import encode_run

    encode_run(args.run_dir, Path(args.out), split=args.split, limit=args.limit)
    print(f"wrote {args.out}")


def cmd_explore(args):
    from .explore import explore_run

    explore_run(args.run_dir, None if args.out is None else Path(args.out), json_summary=args.json, seed=args.seed)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "generate": cmd_generate, "encode": cmd_encode, "explore": cmd_explore}


def main(argv=None):
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        COMMANDS[command](args)
    except UserError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: the machine's problem, said in one line
        then = "run again (training continues with --resume)" if command == "train" else "run the command again"
        print(one_line(f"pyro-vae: error: cannot read or write {e.filename or 'a file'}: {e.strerror or e}; free space or fix permissions, then {then}"),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = "the last completed epoch's checkpoint is kept (continue with --resume)" if command == "train" else "no file was left half-written"
        print(f"pyro-vae: interrupted; {kept}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
