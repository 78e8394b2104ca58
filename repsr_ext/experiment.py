"""The RepSR paper's claims at a small scale: a resumable grid of training arms x seeds.

Claims checked (RepSR, Wang et al. 2022, arXiv:2205.05671):

1. BN inside re-parameterizable SR blocks improves results once its train/test mismatch is removed
   (``repsr`` and ``repsr_switch0.5`` against ``repsr_no_bn``);
2. training with mini-batch statistics and then switching BN to population statistics removes what
   plain BN does wrong (``repsr`` against ``repsr_batch_bn``, which keeps mini-batch statistics
   throughout and is deployed with its running statistics; the smooth-region crop figure);
3. the RepSR block beats RepVGG, ACB, DBB and ECB (and a plain conv) at the same deployed size.

Every arm trains the same deployed network (``BASE``: M4C16, x4, PReLU) on the same data (the
embedded training photographs), with the same iterations, optimizer (Adam) and schedule (cosine);
only the training block or its BN treatment (``ARMS``) changes. Each run is evaluated once trained,
deployed (``model.safetensors``, the re-parameterized plain conv chain, so BN uses its running
statistics) on the held-out photographs (``data.HELDOUT``; PSNR/SSIM on Y, border = scale).

Files, under ``out_dir`` (default ``experiments/runs``)::

    <arm>/seed_<k>/result.json        the finished run (see ``run_one``)
    <arm>/seed_<k>/model.safetensors  its deployed network
    <arm>/seed_<k>/config.yaml, log.csv
    <arm>/seed_<k>/checkpoints/last.pt   only while the run is unfinished (every CHECKPOINT_EVERY)

``run_grid`` skips runs that have a ``result.json``, resumes runs that have a checkpoint (the
trainer's bitwise-exact resume) and starts the others, seed by seed (all arms of seed 0 first), so
an interrupted grid is continued by running the same command again, in any later session.
``summarize`` / ``render_results`` turn the result files into tables (``experiments/RESULTS.md``,
between markers, leaving the hand-written reading alone) and figures (matplotlib, optional extra
``experiment``).

Command line: ``repsr experiment run|summarize|measure`` (``python -m repsr_ext.experiment`` too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import __version__
from .data import bicubic_upscale, quantize_8bit, validation_pairs
from .formats import _atomic_write
from .metrics import psnr_ssim_y, rgb_to_y
from .nets import PlainSR
from .train import _RESUME_MAY_CHANGE, Trainer, TrainConfig, build_network, load_checkpoint

# --- the grid ------------------------------------------------------------------------------------

DEFAULT_OUT = "experiments/runs"
DEFAULT_RESULTS = "experiments/RESULTS.md"
DEFAULT_FIGURES = "experiments/figures"
DEFAULT_SEEDS = 3
# Sized so that the whole grid (9 arms x 3 seeds) takes about 2.2 h of training at the speeds
# measured on the project's 2-core machine (MEASURED_IT_PER_S), leaving room for evaluation,
# checkpoints and a busier machine within about three hours; experiments/README.md has the sums.
DEFAULT_ITERATIONS = 12_000
CHECKPOINT_EVERY = 1_000

# The common training setup: the deployed network, the data, the optimizer and its schedule.
BASE: dict = dict(
    preset="M4C16",
    scale=4,
    act="prelu",
    data="embedded",
    val_data="embedded",
    patch_size=64,
    batch_size=16,
    augment=True,
    lr=5e-4,
    betas=(0.9, 0.99),
    schedule="cosine",
    min_lr=1e-7,
    ema_decay=0.0,  # no EMA: the exported weights are the trained ones, in every arm alike
    num_workers=0,
    val_every=0,  # the grid evaluates the deployed file itself, once, at the end
    checkpoint_every=CHECKPOINT_EVERY,
    log_every=200,
    device="cpu",
)

_REPSR = {"expansion": 2, "bn": "both"}

# name -> the TrainConfig keys that make the arm. Blocks other than repsr are trained as in their
# own papers: BN (repvgg, acb, dbb) with mini-batch statistics throughout and deployed with its
# running statistics; plain and ecb have no BN, where bn_switch_at changes nothing.
ARMS: dict[str, dict] = {
    "plain": dict(block="plain", block_options={}, bn_switch_at=1.0),
    "repvgg": dict(block="repvgg", block_options={}, bn_switch_at=1.0),
    "acb": dict(block="acb", block_options={}, bn_switch_at=1.0),
    "dbb": dict(block="dbb", block_options={}, bn_switch_at=1.0),
    "ecb": dict(block="ecb", block_options={}, bn_switch_at=1.0),
    "repsr": dict(block="repsr", block_options=dict(_REPSR), bn_switch_at=0.8),
    "repsr_switch0.5": dict(block="repsr", block_options=dict(_REPSR), bn_switch_at=0.5),
    "repsr_batch_bn": dict(block="repsr", block_options=dict(_REPSR), bn_switch_at=1.0),
    "repsr_no_bn": dict(block="repsr", block_options={**_REPSR, "bn": "none"}, bn_switch_at=1.0),
}

DESCRIPTIONS: dict[str, str] = {
    "plain": "plain 3x3 conv (the deployed form)",
    "repvgg": "RepVGG block, BN batch stats throughout",
    "acb": "ACB block, BN batch stats throughout",
    "dbb": "DBB block, BN batch stats throughout",
    "ecb": "ECB block (no BN)",
    "repsr": "RepSR block, BN switched to population stats at 0.8 (the method)",
    "repsr_switch0.5": "RepSR block, BN switched at 0.5",
    "repsr_batch_bn": "RepSR block, BN batch stats throughout (plain BN)",
    "repsr_no_bn": "RepSR block without BN",
}

# The questions the tables answer: (claim, arm A, arm B) -> A minus B, paired by seed.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("1: BN helps once the mismatch is removed", "repsr", "repsr_no_bn"),
    ("1: BN helps once the mismatch is removed", "repsr_switch0.5", "repsr_no_bn"),
    ("1/2: plain BN (mismatch kept)", "repsr_batch_bn", "repsr_no_bn"),
    ("2: the switch fixes plain BN", "repsr", "repsr_batch_bn"),
    ("2: the switch fixes plain BN", "repsr_switch0.5", "repsr_batch_bn"),
    ("2: switch point", "repsr", "repsr_switch0.5"),
    ("3: RepSR vs other blocks", "repsr", "plain"),
    ("3: RepSR vs other blocks", "repsr", "repvgg"),
    ("3: RepSR vs other blocks", "repsr", "acb"),
    ("3: RepSR vs other blocks", "repsr", "dbb"),
    ("3: RepSR vs other blocks", "repsr", "ecb"),
)

# Training speed of each arm with the grid's patch/batch on the project's 2-core VM (torch 2.13
# CPU, 2 threads, after 10 warm-up steps; `repsr experiment measure`), used only to estimate how
# long what is left of the grid will take.
MEASURED_IT_PER_S: dict[str, float] = {
    "plain": 119.7, "repvgg": 69.8, "acb": 58.1, "dbb": 28.9, "ecb": 24.6,
    "repsr": 36.9, "repsr_switch0.5": 39.0, "repsr_batch_bn": 37.8, "repsr_no_bn": 50.6,
}



@dataclass(frozen=True)
class Grid:
    """One round of the experiment: the common setup, the arms, the default size and where its
    files go. ``per_seed(seed)`` adds TrainConfig keys that depend on the seed (round 2: which fold
    of photographs trains and which tests); ``evaluate(plain, config, output)`` scores a finished
    run (default: ``evaluate_round1``) and returns the result keys it adds (at least ``images``,
    rows with psnr, ssim, bicubic_psnr, bicubic_ssim)."""

    name: str
    base: dict
    arms: dict
    descriptions: dict
    comparisons: tuple
    out: str
    results: str
    figures: str
    seeds: int
    iterations: int
    ms_per_iteration: dict  # one process, as the grid runs; for the time estimate only
    per_seed: Callable[[int], dict] | None = None
    evaluate: Callable | None = None


ROUND1 = Grid("round1", BASE, ARMS, DESCRIPTIONS, COMPARISONS, DEFAULT_OUT, DEFAULT_RESULTS, DEFAULT_FIGURES,
              DEFAULT_SEEDS, DEFAULT_ITERATIONS, {arm: 1000 / v for arm, v in MEASURED_IT_PER_S.items()})


def get_grid(name: str | Grid) -> Grid:
    """The grid of round "1"/"round1" or "2"/"round2" (a Grid is returned as it is)."""
    if isinstance(name, Grid):
        return name
    key = str(name).removeprefix("round")
    if key == "1":
        return ROUND1
    if key == "2":
        from .experiment_round2 import ROUND2  # here: round 2 imports this module
        return ROUND2
    raise ValueError(f"unknown round {name!r}; rounds: 1, 2")

# Keys the grid sets per run; overrides may not change them.
_GRID_KEYS = frozenset({"block", "block_options", "bn_switch_at", "seed", "iterations", "output", "resume"})
RESULT_FILE = "result.json"
RESULT_FORMAT = "repsr_ext.experiment_result"
BEGIN_MARK = "<!-- BEGIN GENERATED: `repsr experiment summarize` rewrites everything up to END GENERATED -->"
END_MARK = "<!-- END GENERATED -->"


def check_arms(names: Iterable[str] | None, grid: Grid = ROUND1) -> list[str]:
    """``names`` (all arms of ``grid`` when None) in grid order; ValueError for an unknown one."""
    arms = grid.arms
    if names is None:
        return list(arms)
    names = list(names)
    unknown = [n for n in names if n not in arms]
    if unknown:
        raise ValueError(f"unknown arm {', '.join(map(repr, unknown))}; arms of {grid.name}: {', '.join(arms)}")
    return [n for n in arms if n in names]


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    seeds = sorted(set(int(s) for s in seeds))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def run_dir(out_dir, arm: str, seed: int) -> Path:
    return Path(out_dir) / arm / f"seed_{seed}"


def run_config(out_dir, arm: str, seed: int, iterations: int | None = None,
               overrides: dict | None = None, grid: Grid = ROUND1, **settings) -> TrainConfig:
    """The TrainConfig of one run: the grid's base, then its per-seed keys, then ``overrides``
    (e.g. a tiny preset for tests), then the arm, the seed, the iterations (default: the grid's)
    and the output folder. ``settings``: keys that do not change what is computed (``progress``,
    ``resume``, ...)."""
    check_arms([arm], grid)
    iterations = grid.iterations if iterations is None else iterations
    overrides = dict(overrides or {})
    fixed = sorted((_GRID_KEYS | {k for arm in grid.arms.values() for k in arm}) & set(overrides))
    if fixed:
        raise ValueError(f"overrides may not set {', '.join(fixed)}: the grid sets them per arm and run")
    bad = sorted(set(settings) - _RESUME_MAY_CHANGE)
    if bad:
        raise ValueError(f"settings {', '.join(bad)} change the computation; pass them as overrides")
    per_seed = grid.per_seed(seed) if grid.per_seed else {}
    values = {**grid.base, **per_seed, **overrides, **grid.arms[arm], "seed": seed, "iterations": iterations,
              "output": str(run_dir(out_dir, arm, seed)), "progress": False, **settings}
    return TrainConfig.from_dict(values, source=f"experiment {grid.name} arm {arm!r}")


def _computed(config: dict) -> dict:
    """The keys of a config dict that decide what a run computes."""
    return {k: v for k, v in config.items() if k not in _RESUME_MAY_CHANGE}


def _differences(wanted: dict, found: dict) -> list[str]:
    wanted, found = _computed(wanted), _computed(found)
    return [f"{k} (found {found.get(k)!r}, wanted {wanted.get(k)!r})"
            for k in sorted(set(wanted) | set(found)) if wanted.get(k) != found.get(k)]


def read_result(path) -> dict:
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path} is not an experiment result file")
    return result


def run_status(config: TrainConfig) -> str:
    """'done' (result file), 'partial' (a checkpoint to resume from) or 'todo'."""
    output = Path(config.output)
    if (output / RESULT_FILE).is_file():
        return "done"
    if (output / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "todo"


# --- evaluation ----------------------------------------------------------------------------------


@torch.inference_mode()
def upscale(plain: PlainSR, lr: torch.Tensor) -> torch.Tensor:
    """The deployed network on one LR image, rounded to 8 bit as a saved PNG would be."""
    return quantize_8bit(plain.eval()(lr[None].float())[0])


def evaluate_round1(plain: PlainSR, config: TrainConfig, output: Path) -> dict:
    """Round 1's evaluation: the deployed network on the held-out photographs."""
    return {"images": evaluate_deployed(plain, config.val_data)}


def evaluate_deployed(plain: PlainSR, source: str = "embedded") -> list[dict]:
    """Per held-out image: PSNR/SSIM (Y, border = scale) of ``plain`` and of bicubic upscaling."""
    scale = plain.scale
    rows = []
    for name, lr, hr in validation_pairs(source, scale):
        psnr, ssim = psnr_ssim_y(upscale(plain, lr), hr, crop_border=scale)
        bicubic_psnr, bicubic_ssim = psnr_ssim_y(bicubic_upscale(lr, scale), hr, crop_border=scale)
        rows.append(dict(image=name, psnr=psnr, ssim=ssim, bicubic_psnr=bicubic_psnr, bicubic_ssim=bicubic_ssim))
    return rows


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- running ---------------------------------------------------------------------------------------


def run_one(config: TrainConfig, arm: str, keep_checkpoint: bool = False,
            log: Callable[[str], None] = print, grid: Grid = ROUND1) -> dict:
    """Trains (or resumes) one run to the end, evaluates its deployed file and writes
    ``result.json``; returns the result. The result holds: arm, seed, config, per-image and mean
    PSNR/SSIM of the deployed network and of bicubic upscaling, training seconds (summed over
    sessions, from the checkpoint) and seconds per iteration, deployed and training parameters,
    the iterations it was resumed at, and the software and machine, plus what the grid's
    ``evaluate`` adds (round 2: dead leaves, flat regions, ...). Unless ``keep_checkpoint``,
    the checkpoint (optimizer state included) is removed once the result is written."""
    output = Path(config.output)
    checkpoint = output / "checkpoints" / "last.pt"
    resumed_at = []
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        differing = _differences(config.to_dict(), state["config"])
        if differing:
            raise ValueError(f"{output} holds a run with other settings ({'; '.join(differing)}); "
                             "finish it with those settings or use another --out")
        resumed_at.append(int(state["iteration"]))
        config = TrainConfig.from_dict({**config.to_dict(), "resume": "last"})
        log(f"{arm} seed {config.seed}: resuming at iteration {resumed_at[0]} of {config.iterations}")
    else:
        log(f"{arm} seed {config.seed}: training {config.iterations} iterations")
    extra = {"initial_loss": initial_loss(config)} if grid.evaluate is not None else {}
    trainer = Trainer(config)
    try:
        trained = trainer.run()
    finally:
        trainer.close()
    state = load_checkpoint(checkpoint)
    training_seconds = float(state["elapsed"])
    plain = PlainSR.load(output / "model.safetensors")
    evaluation = (grid.evaluate or evaluate_round1)(plain, config, output)
    images = evaluation["images"]
    mean = {key: float(np.mean([row[key] for row in images]))
            for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    result = {
        "format": RESULT_FORMAT,
        "round": grid.name,
        "arm": arm,
        "description": grid.descriptions.get(arm, ""),
        "seed": config.seed,
        "config": {**config.to_dict(), "resume": ""},
        "iterations": trained.iteration,
        **mean,
        **extra,
        **evaluation,
        "training_seconds": training_seconds,
        "seconds_per_iteration": training_seconds / max(trained.iteration, 1),
        "final_loss": trained.loss,
        "deployed_params": count_parameters(plain),
        "training_params": count_parameters(build_network(config)),
        "resumed_at": resumed_at,
        "threads": torch.get_num_threads(),
        "versions": {"repsr_ext": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=1) + "\n"
    _atomic_write(output / RESULT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
        try:
            checkpoint.parent.rmdir()
        except OSError:
            pass
    log(f"{arm} seed {config.seed}: PSNR {mean['psnr']:.3f} dB, SSIM {mean['ssim']:.4f} "
        f"(bicubic {mean['bicubic_psnr']:.3f} dB), {result['seconds_per_iteration'] * 1000:.1f} ms/it")
    return result


def plan(out_dir, seeds=None, iterations: int | None = None, only=None,
         overrides: dict | None = None, grid: Grid = ROUND1) -> list[tuple[str, int, TrainConfig, str]]:
    """The runs of the grid in the order they run (seed by seed, arms in the grid's order), each
    as (arm, seed, config, status) with status 'done', 'partial' or 'todo'. ``seeds``: a count
    (seeds 0..n-1) or a list; default the grid's."""
    seeds = grid.seeds if seeds is None else seeds
    return [(arm, seed, config, run_status(config))
            for seed in _seed_list(seeds) for arm in check_arms(only, grid)
            for config in [run_config(out_dir, arm, seed, iterations, overrides, grid)]]


def estimate_seconds(runs: list[tuple[str, int, TrainConfig, str]], grid: Grid = ROUND1, workers: int = 1) -> float:
    """Training time left for the runs not done, at the grid's measured ms per iteration, spread
    over ``workers`` processes (resumed runs counted whole); only meaningful for the default setup."""
    return sum(config.iterations * grid.ms_per_iteration.get(arm, 35.0) / 1000
               for arm, _, config, status in runs if status != "done") / workers


def initial_loss(config: TrainConfig, batches: int = 4) -> float:
    """The L1 loss of the run's network as initialised (same seed and build as the trainer), on
    ``batches`` training batches of a fixed sample stream, BN on batch statistics as in the first
    step: the check that every arm starts from about the same loss."""
    import copy

    from .data import InfiniteSampler, make_train_dataset, rgb_to_luma

    torch.manual_seed(config.seed)
    net = copy.deepcopy(build_network(config)).train()  # its own BN statistics, updated and thrown away
    dataset = make_train_dataset(config.data, config.scale, config.patch_size, config.data_lr, config.augment)
    sampler = iter(InfiniteSampler(len(dataset), seed=12_345))
    losses = []
    with torch.no_grad():
        for _ in range(batches):
            pairs = [dataset[next(sampler)] for _ in range(config.batch_size)]
            lr, hr = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            if config.in_channels == 1:
                lr, hr = rgb_to_luma(lr), rgb_to_luma(hr)
            losses.append(float(torch.nn.functional.l1_loss(net(lr), hr)))
    return float(np.mean(losses))


def _run_in_worker(config: dict, arm: str, keep_checkpoint: bool, grid_name: str, threads: int) -> dict:
    """``run_one`` in a worker process of ``run_grid`` (``threads`` torch threads)."""
    torch.set_num_threads(threads)
    return run_one(TrainConfig.from_dict(config), arm, keep_checkpoint, _say, get_grid(grid_name))


def run_grid(out_dir=None, seeds=None, iterations: int | None = None, only=None, *,
             overrides: dict | None = None, threads: int | None = None, keep_checkpoints: bool = False,
             max_minutes: float | None = None, progress: bool = False, workers: int = 1,
             grid: Grid | str = ROUND1, log: Callable[[str], None] = print) -> list[dict]:
    """Runs the grid ``only`` arms (default all) x ``seeds`` (a count: seeds 0..n-1, or a list;
    default the grid's) into ``out_dir`` (default the grid's folder).

    A run with a ``result.json`` is skipped (after checking it was made with the same settings), one
    with a checkpoint is resumed, the others are trained from scratch. ``overrides``: TrainConfig
    keys that replace the grid's base for every arm (tests use a tiny preset). ``threads``: torch
    threads per process while the grid runs. ``workers``: runs trained side by side in that many
    processes (spawned; each with ``threads`` threads, default 1), in grid order as workers free
    up: on a 2-core machine two one-thread processes train about twice as fast as one two-thread
    process. ``max_minutes``: start no new run after this many minutes (runs in progress finish).
    Returns the results of every finished run of the grid, skipped ones included.
    """
    grid = get_grid(grid)
    out_dir = grid.out if out_dir is None else out_dir
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    started = time.monotonic()
    runs = plan(out_dir, seeds, iterations, only, overrides, grid)
    todo = sum(status != "done" for *_, status in runs)
    log(f"grid {grid.name}: {len(runs)} runs, {len(runs) - todo} done, {todo} to run, in {out_dir}")
    finished = {}
    for arm, seed, config, status in runs:  # every finished run checked before anything trains
        if status == "done":
            result = read_result(Path(config.output) / RESULT_FILE)
            differing = _differences(config.to_dict(), result["config"])
            if differing:
                raise ValueError(f"{config.output} holds a result made with other settings "
                                 f"({'; '.join(differing)}); use another --out")
            finished[arm, seed] = result
    for arm, seed in finished:
        log(f"{arm} seed {seed}: done, skipped")
    pending = [(arm, seed, config) for arm, seed, config, _ in runs if (arm, seed) not in finished]

    def time_is_up() -> bool:
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            log(f"stopping: {max_minutes:g} minutes have passed; run the same command again to continue")
            return True
        return False

    new: dict[tuple[str, int], dict] = {}
    if workers == 1:
        previous_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for arm, seed, config in pending:
                if time_is_up():
                    break
                if progress:
                    config = TrainConfig.from_dict({**config.to_dict(), "progress": True})
                new[arm, seed] = run_one(config, arm, keep_checkpoints, log, grid)
        finally:
            torch.set_num_threads(previous_threads)
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = {}
            queue = list(pending)
            try:
                while queue or running:
                    while queue and len(running) < workers and not time_is_up():
                        arm, seed, config = queue.pop(0)
                        future = pool.submit(_run_in_worker, config.to_dict(), arm, keep_checkpoints,
                                             grid.name, threads or 1)
                        running[future] = (arm, seed)
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        new[running.pop(future)] = future.result()
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    results = [finished.get((arm, seed)) or new.get((arm, seed)) for arm, seed, *_ in runs]
    return [r for r in results if r is not None]


def measure_speed(arms=None, iterations: int = 30, warmup: int = 10, overrides: dict | None = None,
                  threads: int | None = None, grid: Grid = ROUND1,
                  log: Callable[[str], None] = print) -> dict[str, float]:
    """Training iterations per second of each arm with the grid's setup (its base + overrides),
    timed over ``iterations`` steps after ``warmup`` steps, in a temporary folder."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    speeds = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for arm in check_arms(arms, grid):
                config = run_config(tmp, arm, 0, warmup + iterations, {**(overrides or {}), "checkpoint_every": 0},
                                    grid)
                trainer = Trainer(config)
                try:
                    trainer.run(until=warmup)
                    speeds[arm] = trainer.run(until=warmup + iterations).iterations_per_second
                finally:
                    trainer.close()
                log(f"{arm:16s} {speeds[arm]:7.1f} it/s  ({1000 / speeds[arm]:.1f} ms/it)")
    finally:
        torch.set_num_threads(previous_threads)
    return speeds


# --- summary ---------------------------------------------------------------------------------------


def load_results(out_dir) -> list[dict]:
    """Every result file under ``out_dir`` (``<arm>/seed_<k>/result.json``)."""
    return [read_result(path) for path in sorted(Path(out_dir).glob(f"*/seed_*/{RESULT_FILE}"))]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = [float(v) for v in values]
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _arm_order(arms: Iterable[str]) -> list[str]:
    arms = set(arms)
    return [a for a in ARMS if a in arms] + sorted(arms - set(ARMS))


def summarize(out_dir=DEFAULT_OUT, results: list[dict] | None = None) -> list[dict]:
    """One row per arm with results, in ``ARMS`` order: arm, description, runs, seeds, iterations, scale,
    mean and sample std over seeds of PSNR / SSIM / PSNR gain over bicubic, bicubic PSNR/SSIM,
    seconds per iteration (median), deployed and training parameters, and per image the mean PSNR."""
    results = load_results(out_dir) if results is None else results
    by_arm: dict[str, list[dict]] = {}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)
    table = []
    for arm in _arm_order(by_arm):
        runs = sorted(by_arm[arm], key=lambda r: r["seed"])
        row = dict(arm=arm, description=runs[0].get("description", DESCRIPTIONS.get(arm, "")), runs=len(runs),
                   seeds=[r["seed"] for r in runs], iterations=sorted({r["iterations"] for r in runs}),
                   scale=runs[0]["config"]["scale"])
        for key in ("psnr", "ssim"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in runs])
        row["gain_mean"], row["gain_std"] = _mean_std([r["psnr"] - r["bicubic_psnr"] for r in runs])
        row["bicubic_psnr"] = float(np.mean([r["bicubic_psnr"] for r in runs]))
        row["bicubic_ssim"] = float(np.mean([r["bicubic_ssim"] for r in runs]))
        # Median: one run slowed by something else on the machine should not move the arm's speed.
        row["seconds_per_iteration"] = float(np.median([r["seconds_per_iteration"] for r in runs]))
        row["deployed_params"] = sorted({r["deployed_params"] for r in runs})
        row["training_params"] = sorted({r["training_params"] for r in runs})
        images: dict[str, list[float]] = {}
        for r in runs:
            for image in r["images"]:
                images.setdefault(image["image"], []).append(image["psnr"])
        row["image_psnr"] = {name: float(np.mean(v)) for name, v in images.items()}
        row["psnr_by_seed"] = {r["seed"]: r["psnr"] for r in runs}
        row["ssim_by_seed"] = {r["seed"]: r["ssim"] for r in runs}
        table.append(row)
    return table


def architecture(plain: PlainSR) -> tuple:
    """What fixes a deployed network's size and speed: channels per layer, activation, scale, residual."""
    return tuple(plain.channels), plain.act_type, plain.scale, plain.residual


def deployed_network(out_dir, results: list[dict], lr_size: tuple[int, int] | None = (180, 320),
                     repeats: int = 5) -> dict | None:
    """The deployed network shared by the finished runs: checks that every run's
    ``model.safetensors`` has the same architecture (only the weights differ, so parameters and
    speed are the same for every arm by construction) and returns its parameters, multiply-adds
    per LR pixel and, unless ``lr_size`` is None, the median time of one ``lr_size`` frame with the
    fused engine and with PyTorch eager on this machine (one run's weights; any would do)."""
    from .cli import time_fused_vs_eager  # here: cli imports this module

    paths = [run_dir(out_dir, r["arm"], r["seed"]) / "model.safetensors" for r in results]
    models = [PlainSR.load(p) for p in paths if p.is_file()]
    if not models:
        return None
    kinds = {architecture(m) for m in models}
    if len(kinds) != 1:
        raise ValueError(f"the deployed networks differ between runs ({len(kinds)} architectures): "
                         "not a like-for-like grid")
    plain = models[0].eval()
    channels = plain.channels
    facts = dict(files=len(models), params=count_parameters(plain), channels=channels, act=plain.act_type,
                 scale=plain.scale, macs_per_lr_pixel=sum(9 * a * b for a, b in zip(channels, channels[1:])))
    if lr_size is not None:
        x = torch.rand(1, plain.in_channels, *lr_size)
        eager_seconds, fused_seconds, _ = time_fused_vs_eager(plain, x, repeats)
        facts.update(lr_size=tuple(lr_size), threads=torch.get_num_threads(), repeats=repeats,
                     fused_seconds=fused_seconds, eager_seconds=eager_seconds)
    return facts


def format_deployed(facts: dict | None) -> str:
    if facts is None:
        return ""
    text = (f"Deployed network, the same in every arm by construction (checked: the {facts['files']} "
            f"`model.safetensors` files have the same layers, channels {facts['channels']}, "
            f"{facts['act']}, x{facts['scale']}; only the weights differ): {facts['params']:,} parameters, "
            f"{facts['macs_per_lr_pixel']:,} multiply-adds per LR pixel.")
    if "fused_seconds" in facts:
        h, w = facts["lr_size"]
        gmacs = facts["macs_per_lr_pixel"] * h * w / 1e9
        text += (f" One {h}x{w} -> {h * facts['scale']}x{w * facts['scale']} frame ({gmacs:.2f} G multiply-adds), "
                 f"median of {facts['repeats']}, when the summary was written, {facts['threads']} threads "
                 f"({_machine()}): fused CPU engine {facts['fused_seconds'] * 1e3:.1f} ms, "
                 f"PyTorch eager (channels_last) {facts['eager_seconds'] * 1e3:.1f} ms.")
    return text + "\n"


def _machine() -> str:
    """CPU model and core count, for the speed line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def compare(table: list[dict]) -> list[dict]:
    """``COMPARISONS`` where both arms have results: the PSNR and SSIM of A minus B over the
    seeds both have (mean, sample std), and on how many of them A is better."""
    rows = {row["arm"]: row for row in table}
    out = []
    for claim, a, b in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        seeds = sorted(set(rows[a]["psnr_by_seed"]) & set(rows[b]["psnr_by_seed"]))
        if not seeds:
            continue
        dpsnr = [rows[a]["psnr_by_seed"][s] - rows[b]["psnr_by_seed"][s] for s in seeds]
        dssim = [rows[a]["ssim_by_seed"][s] - rows[b]["ssim_by_seed"][s] for s in seeds]
        (pm, ps), (sm, ss) = _mean_std(dpsnr), _mean_std(dssim)
        out.append(dict(claim=claim, a=a, b=b, seeds=len(seeds), dpsnr_mean=pm, dpsnr_std=ps,
                        dssim_mean=sm, dssim_std=ss, a_better=sum(d > 0 for d in dpsnr)))
    return out


def _pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _signed_pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:+.{digits}f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_tables(table: list[dict]) -> str:
    """The summary as markdown: per arm (ranked by mean PSNR), the paired comparisons, per image."""
    if not table:
        return "_No finished runs yet._\n"
    ranked = sorted(table, key=lambda r: -r["psnr_mean"])
    bicubic = ranked[0]
    deployed = sorted({p for row in table for p in row["deployed_params"]})
    iterations = sorted({i for row in table for i in row["iterations"]})
    parts = [
        f"Mean ± sample std over seeds; held-out photographs, x{ranked[0]['scale']}, PSNR (dB) / SSIM on Y, "
        f"border = scale, deployed network. Iterations per run: {', '.join(map(str, iterations))}. "
        f"Bicubic: {bicubic['bicubic_psnr']:.3f} dB / {bicubic['bicubic_ssim']:.4f}. Deployed parameters: "
        + (f"{deployed[0]:,} in every arm." if len(deployed) == 1
           else f"DIFFER between arms ({', '.join(f'{p:,}' for p in deployed)}) -- not a like-for-like grid!"),
        "",
        _markdown_table(
            ["rank", "arm", "what", "seeds", "PSNR", "SSIM", "gain over bicubic", "ms / iteration (median)",
             "training params"],
            [[str(i + 1), f"`{r['arm']}`", r["description"], str(r["runs"]), _pm(r["psnr_mean"], r["psnr_std"], 3),
              _pm(r["ssim_mean"], r["ssim_std"], 4), _signed_pm(r["gain_mean"], r["gain_std"], 3),
              f"{1000 * r['seconds_per_iteration']:.1f}", ", ".join(f"{p:,}" for p in r["training_params"])]
             for i, r in enumerate(ranked)],
        ),
    ]
    comparisons = compare(table)
    if comparisons:
        parts += [
            "",
            "Paired by seed (same seed: same sample stream), A minus B:",
            "",
            _markdown_table(
                ["claim", "A", "B", "seeds", "Δ PSNR (dB)", "Δ SSIM", "seeds where A is better"],
                [[c["claim"], f"`{c['a']}`", f"`{c['b']}`", str(c["seeds"]),
                  _signed_pm(c["dpsnr_mean"], c["dpsnr_std"], 3),
                  _signed_pm(c["dssim_mean"], c["dssim_std"], 4), f"{c['a_better']} of {c['seeds']}"]
                 for c in comparisons],
            ),
        ]
    names = list(dict.fromkeys(n for row in table for n in row["image_psnr"]))
    parts += [
        "",
        "PSNR (dB) per held-out image, mean over seeds:",
        "",
        _markdown_table(["arm", *names],
                        [[f"`{r['arm']}`", *(f"{r['image_psnr'][n]:.3f}" if n in r["image_psnr"] else "–"
                                             for n in names)] for r in table]),
    ]
    return "\n".join(parts) + "\n"


# --- figures ----------------------------------------------------------------------------------------


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def ranking_plot(table: list[dict], path) -> Path:
    """Arms ranked by mean PSNR, with sample-std error bars and each seed as a dot, next to the
    same for SSIM; the bicubic baseline as a dashed line."""
    from matplotlib.figure import Figure

    ranked = sorted(table, key=lambda r: r["psnr_mean"])
    fig = Figure(figsize=(11, 0.45 * len(ranked) + 1.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(ranked))
    for ax, key, label, baseline in ((axes[0], "psnr", "PSNR (dB, Y)", "bicubic_psnr"),
                                     (axes[1], "ssim", "SSIM (Y)", "bicubic_ssim")):
        means = [r[f"{key}_mean"] for r in ranked]
        stds = [r[f"{key}_std"] or 0.0 for r in ranked]
        colors = ["tab:red" if r["arm"].startswith("repsr") else "tab:blue" for r in ranked]
        ax.errorbar(means, y, xerr=stds, fmt="none", ecolor="black", capsize=4, zorder=2)
        ax.scatter(means, y, c=colors, s=40, zorder=3, label="mean ± std over seeds")
        for i, r in enumerate(ranked):
            values = list(r[f"{key}_by_seed"].values())
            ax.scatter(values, [i] * len(values), marker="x", s=18, color="gray", zorder=1)
        ax.axvline(float(np.mean([r[baseline] for r in ranked])), color="gray", linestyle="--", label="bicubic")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{r['arm']} (n={r['runs']})" for r in ranked])
    axes[0].legend(loc="lower right", fontsize="small")
    fig.suptitle("Held-out photographs, deployed networks (same size); x: individual seeds")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


SMOOTH_MEAN_Y = (48.0, 220.0)  # on the 16..235 scale of Y


def find_smooth_crop(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], size: int, scale: int,
                     margin: int = 16) -> tuple[str, int, int]:
    """(image name, top, left) of the ``size`` x ``size`` HR window with the lowest variance of Y
    over all images, on a grid of ``scale`` pixels, at least ``margin`` from the border, among
    windows of mid-tone mean brightness (Y in ``SMOOTH_MEAN_Y``: dark areas have a low variance
    just by being dark, and show little) with almost no clipped (0 or 255) pixels (saturation would
    hide artifacts). On the held-out photographs: the sky of ``camera``."""
    best = (math.inf, "", 0, 0)
    for name, _, hr in pairs:
        y = rgb_to_y(hr)
        rgb = hr.permute(1, 2, 0).numpy()
        clipped = ((rgb <= 1 / 255) | (rgb >= 254 / 255)).any(axis=2).astype(np.float64)
        h, w = y.shape
        if h < size + 2 * margin or w < size + 2 * margin:
            continue

        def window_sums(a: np.ndarray) -> np.ndarray:
            c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]

        n = size * size
        mean = window_sums(y) / n
        variance = window_sums(y * y) / n - mean ** 2
        clipped_fraction = window_sums(clipped) / n
        tops = np.arange(margin, h - size - margin + 1)
        lefts = np.arange(margin, w - size - margin + 1)
        tops, lefts = tops[tops % scale == 0], lefts[lefts % scale == 0]
        v = variance[np.ix_(tops, lefts)]
        low, high = SMOOTH_MEAN_Y
        mid_tone = (mean[np.ix_(tops, lefts)] >= low) & (mean[np.ix_(tops, lefts)] <= high)
        v = np.where((clipped_fraction[np.ix_(tops, lefts)] > 0.01) | ~mid_tone, np.inf, v)
        i, j = np.unravel_index(np.argmin(v), v.shape)
        if v[i, j] < best[0]:
            best = (float(v[i, j]), name, int(tops[i]), int(lefts[j]))
    if not best[1]:
        raise ValueError(f"no held-out image has an unclipped mid-tone {size} x {size} window")
    return best[1], best[2], best[3]


def smooth_crop_figure(out_dir, path, arms: tuple[str, str] = ("repsr_batch_bn", "repsr"),
                       seed: int | None = None, size: int = 64) -> Path:
    """Plain BN (mini-batch statistics throughout) against switched BN, same seed, on the
    smoothest crop of the held-out images: HR, bicubic and each deployed model (nearest-neighbour
    enlarged), the same crops contrast-stretched, and the error in Y (x amplified)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    out_dir = Path(out_dir)
    have = [{int(p.parent.name.removeprefix("seed_")) for p in (out_dir / arm).glob(f"seed_*/{RESULT_FILE}")
             if (p.parent / "model.safetensors").is_file()} for arm in arms]
    common = sorted(set.intersection(*have))
    if seed is None:
        if not common:
            raise ValueError(f"no seed has finished runs of both {arms[0]} and {arms[1]} in {out_dir}")
        seed = common[0]
    elif seed not in common:
        raise ValueError(f"seed {seed} has not finished both {arms[0]} and {arms[1]} in {out_dir}")
    models = [PlainSR.load(run_dir(out_dir, arm, seed) / "model.safetensors") for arm in arms]
    scale = models[0].scale
    source = read_result(run_dir(out_dir, arms[0], seed) / RESULT_FILE)["config"].get("val_data", "embedded")
    pairs = validation_pairs(source, scale)
    size = size - size % scale
    name, top, left = find_smooth_crop(pairs, size, scale)
    _, lr, hr = next(p for p in pairs if p[0] == name)
    window = (slice(None), slice(top, top + size), slice(left, left + size))
    images = [("HR", hr), ("bicubic", bicubic_upscale(lr, scale))]
    images += [(f"{arm} (seed {seed})", upscale(model, lr)) for arm, model in zip(arms, models)]
    crops = [(label, image[window]) for label, image in images]
    hr_y = rgb_to_y(crops[0][1])

    fig = Figure(figsize=(3.0 * (len(crops) + 1), 9.2), layout="constrained")
    grid = fig.subplots(3, len(crops) + 1)
    for ax in grid.flat:
        ax.set_axis_off()
    context = grid[0, 0]
    context.imshow(hr.permute(1, 2, 0).numpy())
    context.add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="red", linewidth=1.5))
    context.set_title(f"{name}: crop x {left}, y {top}", fontsize="small")
    rgb_crops = [c.clamp(0, 1).permute(1, 2, 0).numpy() for _, c in crops]
    low, high = np.percentile(rgb_crops[0], 1), np.percentile(rgb_crops[0], 99)
    spread = max(high - low, 8 / 255)
    low, high = low - 0.5 * spread, high + 0.5 * spread  # room for what the models add
    errors = [np.abs(rgb_to_y(c) - hr_y) for _, c in crops]
    vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errors[1:]]), 99.5)), 1.0)
    for k, ((label, crop), rgb, error) in enumerate(zip(crops, rgb_crops, errors), start=1):
        psnr = "" if k == 1 else f"\nPSNR {psnr_ssim_y(crop, crops[0][1])[0]:.2f} dB (crop)"
        grid[0, k].imshow(rgb, interpolation="nearest")
        grid[0, k].set_title(label + psnr, fontsize="small")
        grid[1, k].imshow(np.clip((rgb - low) / (high - low), 0, 1), interpolation="nearest")
        grid[1, k].set_title("contrast stretched", fontsize="small")
        if k > 1:
            im = grid[2, k].imshow(error, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            grid[2, k].set_title(f"|Y error| (0 to {vmax:.1f} of 255)", fontsize="small")
    fig.colorbar(im, ax=grid[2, 1:].tolist(), shrink=0.8)
    grid[2, 0].text(0, 0.5, f"smoothest {size}x{size} window\nof the held-out images\n(lowest variance of Y\n"
                    "among mid-tone windows\nwithout clipped pixels)", fontsize="small", va="center")
    fig.suptitle(f"Smooth region, x{scale}: {arms[0]} vs {arms[1]}, deployed networks, seed {seed}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --- RESULTS.md ------------------------------------------------------------------------------------

_PLACEHOLDER = """## Reading

<!-- Written by a person once the grid is complete; `repsr experiment summarize` never changes
anything outside the generated section above. -->

**TO BE WRITTEN** (by a human, from the tables and figures above, once every arm has all its seeds):
which claims hold at this scale, by how much compared with the spread over seeds, and what
this small setup cannot tell.
"""


def render_results(out_dir=DEFAULT_OUT, results_md=DEFAULT_RESULTS, figures_dir=DEFAULT_FIGURES,
                   speed_size: tuple[int, int] | None = (180, 320),
                   log: Callable[[str], None] = print) -> dict:
    """Writes the tables, the deployed network's size and speed (timed on one ``speed_size`` LR
    frame unless None) and, with matplotlib, ``ranking.png`` and ``smooth_region.png`` in
    ``figures_dir``) into the generated section of ``results_md``, creating the file with a
    placeholder for the hand-written reading if it does not exist; text outside the markers is
    kept as it is. Returns {"table", "deployed", "markdown", "figures"}."""
    out_dir, results_md, figures_dir = Path(out_dir), Path(results_md), Path(figures_dir)
    results = load_results(out_dir)
    table = summarize(out_dir, results)
    deployed = deployed_network(out_dir, results, speed_size)
    figures: dict[str, Path] = {}
    notes = []
    if not table:
        notes.append("No finished runs yet: no figures.")
    elif not has_matplotlib():
        notes.append("Figures not drawn: matplotlib is not installed (`pip install -e \".[experiment]\"`).")
    else:
        figures["ranking"] = ranking_plot(table, figures_dir / "ranking.png")
        try:
            figures["smooth"] = smooth_crop_figure(out_dir, figures_dir / "smooth_region.png")
        except ValueError as e:
            notes.append(f"Smooth-region figure not drawn: {e}.")
    for kind, figure in figures.items():
        log(f"wrote {figure}")

    def link(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), results_md.resolve().parent)).as_posix()

    runs = len(results)
    expected = len(ARMS) * DEFAULT_SEEDS
    generated = [
        BEGIN_MARK,
        "",
        f"Generated from {runs} result file{'s' if runs != 1 else ''} in `{out_dir.as_posix()}` "
        f"(the full grid has {expected}: {len(ARMS)} arms x {DEFAULT_SEEDS} seeds).",
        "",
        format_tables(table),
    ]
    if deployed is not None:
        generated += [format_deployed(deployed)]
    if "ranking" in figures:
        generated += [f"![Arms ranked by PSNR and SSIM]({link(figures['ranking'])})", ""]
    if "smooth" in figures:
        generated += [f"![Smooth region: plain BN vs switched BN]({link(figures['smooth'])})", ""]
    generated += [*(f"_{n}_\n" for n in notes), END_MARK]
    section = "\n".join(generated)
    if results_md.is_file():
        text = results_md.read_text(encoding="utf-8")
        start, end = text.find(BEGIN_MARK), text.find(END_MARK)
        if start >= 0 and end > start:
            text = text[:start] + section + text[end + len(END_MARK):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = ("# RepSR's claims at a small scale: results\n\n"
                "What the grid is and how it was sized: [README.md](README.md).\n\n"
                f"{section}\n\n{_PLACEHOLDER}")
    results_md.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(results_md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log(f"wrote {results_md}")
    return {"table": table, "deployed": deployed, "markdown": text, "figures": figures}


# --- command line ------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def _grid_of(args) -> Grid:
    grid = get_grid(args.round)
    if getattr(args, "only", None):
        check_arms(args.only, grid)
    return grid


def cmd_run(args) -> int:
    grid = _grid_of(args)
    out = grid.out if args.out is None else args.out
    if args.dry_run:
        runs = plan(out, args.seeds, args.iterations, args.only, grid=grid)
        for arm, seed, config, status in runs:
            print(f"{status:8s} {arm:16s} seed {seed}  {config.output}")
        left = estimate_seconds(runs, grid, args.workers)
        print(f"{sum(s == 'done' for *_, s in runs)} of {len(runs)} runs done; about {left / 3600:.1f} h of "
              f"training left at the measured speeds with {args.workers} worker(s) (resumed runs counted whole)")
        return 0
    run_grid(out, args.seeds, args.iterations, args.only, threads=args.threads,
             keep_checkpoints=args.keep_checkpoints, max_minutes=args.max_minutes,
             progress=args.progress and args.workers == 1, workers=args.workers, grid=grid, log=_say)
    return 0


def cmd_summarize(args) -> int:
    grid = _grid_of(args)
    if grid.name == "round1":
        rendered = render_results(args.out or grid.out, args.results or grid.results, args.figures or grid.figures,
                                  speed_size=args.speed_size, log=_say)
    else:
        from .experiment_round2 import render_round2
        rendered = render_round2(args.out or grid.out, args.results or grid.results, args.figures or grid.figures,
                                 log=_say)
    if not rendered["table"]:
        print(f"no finished runs in {args.out or grid.out}")
    return 0


def cmd_measure(args) -> int:
    grid = _grid_of(args)
    measure_speed(args.only, args.iterations, args.warmup, threads=args.threads, grid=grid, log=_say)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run``, ``summarize`` and ``measure`` actions, each setting ``run`` to its function."""
    from .cli import image_size, positive_int  # here, not at the top: cli imports this module

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=summary, description=summary)
        p.add_argument("--round", choices=("1", "2"), default="1",
                       help="which grid: 1 (the first round, experiments/runs) or 2 (the second round, "
                            "experiments/round2/runs; see experiment_round2.py); default 1")
        return p

    arm_help = "only these arms (default: all of the round's; round 1: " + ", ".join(ARMS) + ")"
    p = action("run", "Run the grid of arms x seeds: finished runs are skipped, interrupted ones resumed from "
                      "their checkpoint, so the same command continues the grid.")
    p.add_argument("--out", help="folder of the runs (default: the round's, round 1: " + DEFAULT_OUT + ")")
    p.add_argument("--seeds", type=positive_int,
                   help=f"seeds 0 .. N-1 of every arm (default: the round's; round 1: {DEFAULT_SEEDS})")
    p.add_argument("--iterations", type=positive_int,
                   help=f"training steps per run (default: the round's, round 1: {DEFAULT_ITERATIONS}; "
                        "every run of one --out must agree)")
    p.add_argument("--only", nargs="+", metavar="ARM", help=arm_help)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="runs trained side by side in this many processes (default 1; on a 2-core machine "
                        "--workers 2 --threads 1 trains about twice as fast as one process)")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads per process (default: torch's with one worker, 1 with several)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="start no new run after M minutes (runs in progress finish)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep checkpoints/last.pt of finished runs (default: removed once result.json is written)")
    p.add_argument("--progress", action="store_true", help="a progress bar per run (one worker only)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, train nothing")
    p.set_defaults(run=cmd_run)

    p = action("summarize", "Tables of the finished runs into the generated section of RESULTS.md, and the "
                            "figures (matplotlib).")
    p.add_argument("--out", help="folder of the runs (default: the round's)")
    p.add_argument("--results", help=f"markdown file (default: {DEFAULT_RESULTS})")
    p.add_argument("--figures", help="folder of the PNG figures (default: the round's)")
    p.add_argument("--speed-size", type=image_size, default=(180, 320), metavar="HxW",
                   help="LR frame to time the deployed network on (default: 180x320, a 720p x4 output)")
    p.add_argument("--no-speed", dest="speed_size", action="store_const", const=None,
                   help="do not time the deployed network")
    p.set_defaults(run=cmd_summarize)

    p = action("measure", "Training speed (it/s) of each arm with the grid's setup, to size the grid.")
    p.add_argument("--only", nargs="+", metavar="ARM", help=arm_help)
    p.add_argument("--iterations", type=positive_int, default=30, help="timed steps per arm (default: 30)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default: 10)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's, one per core)")
    p.set_defaults(run=cmd_measure)


def main(argv: list[str] | None = None) -> int:
    """``python -m repsr_ext.experiment ACTION ...`` (the same as ``repsr experiment ACTION ...``)."""
    parser = argparse.ArgumentParser(prog="python -m repsr_ext.experiment", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
