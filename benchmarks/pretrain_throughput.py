"""Pretraining throughput on Ray Train: cells/s and tokens/s per worker, scaling, loader headroom.

For each preset (default tiny and 3m) it runs short real pretraining runs (``run_pretraining``:
Ray Train, DDP, each worker reading its share with the training loader) with 1 and with 2 CPU
workers and reads the workers' own throughput metrics (data loading + optimizer steps;
validation and checkpoints excluded; the first logging interval, with warm-up, dropped). In the
same run it measures the data pipeline alone (the training loader over the same shards → RDA
collate, no model) and reports its cells/s against the fastest model consumption (the loader
must not be the bottleneck: target ≥ 5× headroom).

Scaling efficiency = cells/s with 2 workers / (2 × cells/s with 1 worker). On a 2-core machine
two workers also share the cores with their reader threads and the driver: a lower bound.

    python benchmarks/pretrain_throughput.py                       # Kang corpus, tiny and 3m
    python benchmarks/pretrain_throughput.py --corpus big_corpus --presets 3m 10m --steps 40

On a GPU machine, ``--gpu`` runs each preset on one GPU with bf16 and adds model FLOPs
utilization (MFU) for known devices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def build_kang_corpus(out: Path) -> str:
    """The bundled Kang PBMC data as a corpus (built once, reused)."""
    from scfm import datasets
    from scfm.corpus.build import BuildConfig, build_corpus
    from scfm.corpus.sources import H5ADSource

    if not (out / "manifests").is_dir():
        build_corpus(
            BuildConfig(
                output=str(out),
                sources=[H5ADSource(paths=[str(datasets.fetch("kang2018"))], name="kang")],
                val_fraction=0.05,
                executor="local",
                mlflow=False,
                progress=False,
            )
        )
    return str(out)


def loader_cells_per_s(corpus: str, batch_size: int) -> tuple[float, float]:
    """Steady-state cells/s and tokens/cell of the data side alone: the training loader
    (:class:`scfm.corpus.shuffled.ShuffledBatches`, one worker) → RDA collate.

    Reads one epoch; the clock starts at the first batch (index, first row groups: once per run).
    """
    import numpy as np

    from scfm.corpus.loader import open_corpus
    from scfm.corpus.shuffled import ShuffledBatches
    from scfm.model.rda import RDAConfig, collate

    data = ShuffledBatches(open_corpus(corpus), batch_size)
    rng, rda = np.random.default_rng(0), RDAConfig()
    cells = tokens = 0
    start = None
    for packed in data.epoch(0):
        batch = collate(packed, rda, rng)
        if start is None:  # first batch: start-up done
            start = time.perf_counter()
            continue
        cells += batch.batch_size
        tokens += int((~batch.padding_mask).sum())
    if start is None or cells == 0:
        raise ValueError(f"corpus {corpus} has fewer than two train batches of {batch_size}")
    return cells / (time.perf_counter() - start), tokens / cells


def train_rates(
    corpus: str, preset: str, workers: int, steps: int, batch: int, storage: str, gpu: bool
) -> dict[str, float]:
    import ray

    """Median worker throughput metrics of a short pretraining run (first interval dropped)."""
    import mlflow

    from scfm.train.config import PretrainConfig
    from scfm.train.pretrain import run_pretraining

    log_every = max(1, steps // 5)
    cpus_per_worker = min(1.0, ray.cluster_resources()["CPU"] / workers)
    cfg = PretrainConfig.load(
        overrides=[
            f"model={preset}",
            f"data.corpus={corpus}",
            f"data.micro_batch_size={batch}",
            "data.val_cells=8",
            f"train.global_batch_size={batch * workers}",
            f"train.max_steps={steps}",
            f"train.log_every={log_every}",
            f"train.val_every={steps}",
            f"train.checkpoint_every={steps}",
            f"scale.num_workers={workers}",
            f"scale.use_gpu={str(gpu).lower()}",
            f"scale.cpus_per_worker={cpus_per_worker}",
            f"storage_path={storage}",
            f"name=bench-{preset}-{workers}w-{time.time_ns()}",
            "tracking.register_as=null",
            "tracking.experiment=benchmark-pretrain",
        ]
    )
    result = run_pretraining(cfg)
    client = mlflow.MlflowClient()
    out = {"cpus_per_worker": cpus_per_worker}
    for key in ("cells_per_s", "tokens_per_s", "data_wait_fraction", "cpu_util_cores", "mfu"):
        history = [m.value for m in client.get_metric_history(result.run_id, key)]
        if history:
            out[key] = statistics.median(history[1:] or history)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", help="corpus directory (default: build one from Kang PBMC)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "3m"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="cells per worker per step")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16")
    parser.add_argument("--workdir", default="results/bench-pretrain")
    args = parser.parse_args()

    import ray

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(work / 'mlflow.db').resolve()}")
    corpus = args.corpus or build_kang_corpus(work / "kang-corpus")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    storage = tempfile.mkdtemp(prefix="scfm-bench-", dir=work)

    loader_rate, tokens_per_cell = loader_cells_per_s(corpus, args.batch)
    print(f"corpus {corpus}: {tokens_per_cell:.0f} encoder tokens per cell (after masking)")
    print(f"data pipeline alone (training loader → collate, 1 process): {loader_rate:,.0f} cells/s")

    rows = []
    for preset in args.presets:
        base = None
        for w in args.workers:
            r = train_rates(corpus, preset, w, args.steps, args.batch, storage, args.gpu)
            per_worker = r["cells_per_s"] / w
            if w == 1:
                base = per_worker
            eff = per_worker / base if base else float("nan")
            rows.append((preset, w, r, per_worker, eff))

    head = (
        "| preset | workers | CPUs/worker | cells/s | cells/s/worker | tokens/s/worker | "
        "scaling eff. | data wait | CPU cores busy/worker | loader headroom |"
    )
    print()
    print(head)
    print("|" + "---|" * 10)
    for preset, w, r, per_worker, eff in rows:
        print(
            f"| {preset} | {w} | {r['cpus_per_worker']:.2g} | {r['cells_per_s']:,.1f} | "
            f"{per_worker:,.1f} | "
            f"{r['tokens_per_s'] / w:,.0f} | {eff:.2f} | {r['data_wait_fraction']:.1%} | "
            f"{r['cpu_util_cores']:.2f} | {loader_rate / r['cells_per_s']:,.0f}× |"
            + (f" MFU {r['mfu']:.1%}" if "mfu" in r else "")
        )
    fastest = max(r["cells_per_s"] for _, _, r, _, _ in rows)
    print(
        f"\nloader headroom vs the fastest consumer: {loader_rate / fastest:,.1f}× "
        f"(target ≥ 5×): {'met' if loader_rate >= 5 * fastest else 'NOT met'}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
