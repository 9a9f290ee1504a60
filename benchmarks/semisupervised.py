"""Semi-supervised MNIST (M2): test accuracy of the classifier q(y|x) by number of labels and
draw of the labelled set, beside the published figures; and the conditional generation of the
100-label model beside a fully labelled CVAE trained at the same budget.

    python benchmarks/classifier.py                      # once, for --generation
    python benchmarks/semisupervised.py --out runs/ss [--labels 100 600 1000 3000] [--draws 3]
        [--config examples/configs/mnist_m2.toml] [--set KEY=VALUE ...] [--generation] [--first-draw D]

Each (labels, draw) is a run folder ``OUT/labels{L}_draw{d}`` trained with ``seed = d`` (the
seed draws the labelled set, and everything else); a finished run is read, not retrained, so
the sweep can be stopped and started again. ``--generation`` draws ``generate --digit all
--n 100`` from the draw-0 run at the fewest labels and from ``OUT/cvae`` (the same config with
every label, ``data.labelled = 0``: today's CVAE) and judges both with the MNIST classifier.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pyro_vae import config
from pyro_vae.evaluate import classifier_accuracy
from pyro_vae.run import load_run, train_run
from pyro_vae.runfolder import load_dataset

PUBLISHED = {100: ("0.880", "0.932"), 600: ("", "0.944"), 1000: ("", "0.949"), 3000: ("", "0.958")}
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "mnist_m2.toml"


def trained(run_dir, cfg):
    """The run's record ``{accuracy, minutes, ...}``, training it first unless it finished before."""
    record_path = run_dir / "result.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    started = time.perf_counter()
    train_run(cfg, run_dir, overwrite=True, progress=False)
    minutes = (time.perf_counter() - started) / 60
    cfg, vae, _ = load_run(run_dir)
    # every test image, whatever data.test_limit kept for the per-epoch test ELBO
    test = load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_limit=0))).test
    last = (run_dir / "metrics.csv").read_text().splitlines()[-1].split(",")
    record = {"minutes": minutes, "epochs": int(last[0]), "steps": int(last[1])}
    if vae.semi_supervised:
        record["accuracy"] = classifier_accuracy(vae, test.x, test.y)
    record_path.write_text(json.dumps(record))
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--first-draw", type=int, default=0, help="start at this draw (to split a sweep over processes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--generation", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for labels in args.labels:
        records = []
        for draw in range(args.first_draw, args.draws):
            cfg = config.load(args.config, [*args.overrides, f"seed={draw}", f"data.labelled={labels}"])
            record = trained(args.out / f"labels{labels}_draw{draw}", cfg)
            print(f"{labels} labels, draw {draw}: accuracy {record['accuracy']:.4f} ({record['minutes']:.1f} min)", flush=True)
            records.append(record)
        accuracies = [r["accuracy"] for r in records]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else float("nan")
        rows.append((labels, statistics.mean(accuracies), spread, len(accuracies), statistics.mean(r["minutes"] for r in records)))
    print(f"\nclassifier q(y|x) test accuracy (10000 MNIST test images), config {args.config.name} {' '.join(args.overrides)}")
    print("| labels | this package: mean (std over draws) | draws | minutes per run | Kingma M2 | Pyro SS-VAE tutorial |")
    print("| --- | --- | --- | --- | --- | --- |")
    for labels, mean, spread, n, minutes in rows:
        kingma, pyro_tutorial = PUBLISHED.get(labels, ("", ""))
        print(f"| {labels} | {mean:.3f} ({spread:.3f}) | {n} | {minutes:.1f} | {kingma} | {pyro_tutorial} |")
    if args.generation:
        sys.path.insert(0, str(Path(__file__).parent))
        from classifier import load_classifier
        from conditional_accuracy import conditional_accuracy

        judge = load_classifier()
        cvae_cfg = config.load(args.config, [*args.overrides, "seed=0", "data.labelled=0"])
        trained(args.out / "cvae", cvae_cfg)
        print("\nconditional generation (generate --digit all --n 100, seed 0), judged by benchmarks/classifier.py")
        for name, run in ((f"M2, {min(args.labels)} labels", args.out / f"labels{min(args.labels)}_draw0"), ("CVAE, every label", args.out / "cvae")):
            per_class, overall = conditional_accuracy(run, judge, 100, 0)
            print(f"{name:20} {overall:.3f}   per digit " + " ".join(f"{a:.2f}" for a in per_class.tolist()))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
