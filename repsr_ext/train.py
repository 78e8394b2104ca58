"""The RepSR trainer: ``train(TrainConfig(...))`` from Python, ``python -m repsr_ext.train`` from the
shell, ``torchrun --nproc_per_node=N -m repsr_ext.train`` for several processes.

One run:

1. builds ``RepSRNet.preset(preset, scale, block=..., act=..., **block_options)``;
2. trains it with L1 loss and Adam for ``iterations`` steps on random patches
   (``data.make_train_dataset``) drawn from an endless, seeded stream (``data.InfiniteSampler``);
3. at ``bn_switch_at * iterations`` calls ``net.switch_bn_to_population()`` once: from then on BN
   normalizes with its frozen running statistics while its affine parameters keep learning
   (RepSR's modified BN; the paper switches "at the later training period", 0.8 is our default);
4. every ``val_every`` steps measures PSNR/SSIM (Y channel, border = scale) on whole held-out
   images against their bicubic LR, next to the bicubic-upscaling baseline;
5. every ``checkpoint_every`` steps and at the end writes ``<output>/checkpoints/last.pt``
   (atomically; loadable with ``torch.load(weights_only=True)``), and at the end the deployed
   network ``<output>/model.safetensors`` (``net.reparameterize().save``).

Resuming (``resume="last"`` or a checkpoint path) restores the weights, EMA, optimizer, schedule,
RNG states and the position in the sample stream, so a resumed run reaches bitwise the same weights
as an uninterrupted one on the CPU. Every sample is a pure function of (seed, position in the
stream), so this holds for any ``num_workers``.

Several processes (torchrun; ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment) train with
DistributedDataParallel, gloo on the CPU and nccl on GPUs. ``batch_size`` is the global batch,
split evenly between processes; each process draws its own shard of the same stream. BN stays
ordinary per-process BN (statistics of the local mini-batch, as DDP does by default, running
statistics broadcast from rank 0 every step), not SyncBatchNorm: the RepSR BN only needs
mini-batch statistics in the first phase and per-process batches of 8 or more are large enough,
while SyncBatchNorm would add a collective per BN layer to a network with dozens of them. Rank 0
alone validates, logs and writes files.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import difflib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .data import (InfiniteSampler, bicubic_upscale, make_train_dataset, quantize_8bit, rgb_to_luma,
                   upscale_rgb_with_y_model, validation_pairs)
from .formats import _atomic_write
from .metrics import psnr_ssim_y
from .nets import RepSRNet, parse_preset

CHECKPOINT_FORMAT = "repsr_ext.train_checkpoint"
CHECKPOINT_VERSION = 1
SCHEDULES = ("cosine", "multistep", "constant")
BRANCH_INITS = ("default", "zero")
# The precise-BN pass draws its own sample stream (seed, this offset), so that it changes nothing
# in the training stream: an arm with it sees the same training patches as one without.
PRECISE_BN_STREAM = 7_919
LOG_COLUMNS = ("iteration", "loss", "lr", "psnr", "ssim", "seconds")


def _option(default, help: str):
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Build it directly, from a dict (``from_dict``) or
    a YAML/TOML file (``from_file``); values are checked on construction."""

    # model
    preset: str = _option("M4C16", "network size M<blocks>C<channels>, e.g. M4C16")
    scale: int = _option(4, "upscaling factor")
    block: str = _option("repsr", "training block: repsr, plain, repvgg, acb, dbb, ecb")
    block_options: dict = _option({}, "options of the block, e.g. {expansion: 2, bn: both}")
    act: str = _option("prelu", "activation: prelu, relu, lrelu, identity")
    in_channels: int = _option(3, "3: an RGB network; 1: a Y network, trained on BT.601 luma (full range) "
                                  "and run on RGB images with Cb/Cr upscaled bicubically")
    branch_init: str = _option("default", "'zero': every non-identity branch starts switched off "
                                          "(its last BN gamma or conv set to 0); 'default': each layer's own")
    # data
    data: str = _option("embedded", "'embedded' (scikit-image photographs; 'embedded:fold0' a split) or a folder of HR images")
    data_lr: str = _option("", "folder of pre-made LR images paired with 'data' by file stem")
    val_data: str = _option("embedded", "'embedded' (the held-out photographs; 'embedded:fold1' a split), "
                                        "'deadleaves' or a folder of HR images")
    patch_size: int = _option(64, "HR patch side, a multiple of scale")
    batch_size: int = _option(16, "global batch size, split evenly over processes")
    augment: bool = _option(True, "random flips and 90-degree rotations")
    cache: bool = _option(False, "keep decoded folder images in memory (per worker)")
    num_workers: int = _option(0, "DataLoader worker processes (0: load in the training process)")
    # optimization
    iterations: int = _option(100_000, "training steps")
    lr: float = _option(5e-4, "initial learning rate")
    betas: tuple = _option((0.9, 0.99), "Adam betas")
    schedule: str = _option("cosine", "learning-rate schedule: cosine, multistep, constant")
    milestones: tuple = _option((0.5, 0.75), "multistep: fractions of iterations where lr *= gamma")
    gamma: float = _option(0.5, "multistep: lr factor at each milestone")
    min_lr: float = _option(1e-7, "cosine (and final_decay): final learning rate")
    final_decay: float = _option(0.0, "constant: fraction of iterations at the end over which lr decays "
                                      "(half cosine) to min_lr; 0: none")
    bn_switch_at: float = _option(0.8, "fraction of iterations after which BN uses population statistics (1: never)")
    bn_precise_batches: int = _option(0, "at the switch, recompute BN's population statistics as the exact "
                                         "average over this many batches of a separate sample stream (0: keep "
                                         "the running averages)")
    ema_decay: float = _option(0.0, "EMA of the weights (e.g. 0.999), used for validation and export; 0: off")
    amp: bool = _option(False, "mixed precision on GPUs (bf16, or fp16 with loss scaling)")
    # bookkeeping
    val_every: int = _option(5000, "validate every N steps and at the end (0: never)")
    checkpoint_every: int = _option(5000, "write checkpoints/last.pt every N steps (always at the end)")
    log_every: int = _option(100, "log loss and lr every N steps")
    seed: int = _option(0, "seed of the weights and of the sample stream")
    output: str = _option("runs/repsr", "output folder")
    resume: str = _option("", "continue from a checkpoint: 'last' (<output>/checkpoints/last.pt) or a path")
    device: str = _option("auto", "auto, cpu, cuda or cuda:N")
    progress: bool = _option(True, "show a progress bar")

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        def bad(key: str, problem: str):
            raise ValueError(f"config key {key!r}: {problem}, got {getattr(self, key)!r}")

        parse_preset(self.preset)
        for key in ("scale", "patch_size", "batch_size", "iterations"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        if self.patch_size % self.scale:
            bad("patch_size", f"must be a multiple of scale ({self.scale})")
        for key in ("num_workers", "val_every", "checkpoint_every", "log_every"):
            if getattr(self, key) < 0:
                bad(key, "must be 0 or more")
        if self.log_every == 0:
            bad("log_every", "must be at least 1")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if list(self.milestones) != sorted(self.milestones) or not all(0 < m < 1 for m in self.milestones):
            bad("milestones", "must be increasing fractions in (0, 1)")
        if not 0 < self.gamma <= 1:
            bad("gamma", "must be in (0, 1]")
        if not 0 <= self.min_lr <= self.lr:
            bad("min_lr", "must be in [0, lr]")
        if not 0 <= self.bn_switch_at <= 1:
            bad("bn_switch_at", "must be a fraction in [0, 1]")
        if self.in_channels not in (1, 3):
            bad("in_channels", "must be 1 (Y) or 3 (RGB)")
        if self.branch_init not in BRANCH_INITS:
            bad("branch_init", f"must be one of {', '.join(BRANCH_INITS)}")
        if not 0 <= self.final_decay < 1:
            bad("final_decay", "must be a fraction in [0, 1)")
        if self.final_decay and self.schedule != "constant":
            bad("final_decay", "goes with schedule 'constant' (cosine and multistep decay already)")
        if self.bn_precise_batches < 0:
            bad("bn_precise_batches", "must be 0 or more")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "must be in [0, 1)")
        if self.data.startswith("embedded") and self.data_lr:
            bad("data_lr", "needs 'data' to be the matching HR folder, not 'embedded'")
        if self.device != "auto" and not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if not self.output:
            bad("output", "must name a folder")

    def to_dict(self) -> dict:
        """Plain Python values (tuples as lists), for YAML/TOML files and checkpoints."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        """Builds a config from ``values``; an unknown key raises ValueError naming it."""
        check_keys(values, source)
        return cls(**values)

    @classmethod
    def from_file(cls, path, **overrides) -> "TrainConfig":
        """Reads a YAML (.yaml/.yml) or TOML (.toml) file of config keys; ``overrides`` win."""
        return cls.from_dict({**read_config_file(path), **overrides}, source=str(path))


def check_keys(values: dict, source: str) -> None:
    """ValueError naming the first key of ``values`` that is not a TrainConfig field."""
    known = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {key!r} in {source}{hint}; valid keys: {', '.join(known)}")


def _coerce(f: dataclasses.Field, value):
    """The value of field ``f`` in its type: YAML/TOML/CLI give ints for floats, lists for tuples,
    and PyYAML reads '1e5' as a string."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()

    def fail(expected: str):
        raise ValueError(f"config key {f.name!r}: expected {expected}, got {value!r}")

    def number(v, kind):
        if isinstance(v, bool):
            fail(kind.__name__)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                fail(kind.__name__)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(kind.__name__)
        if kind is int:
            if float(v) != int(v):
                fail("an integer")
            return int(v)
        return float(v)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if isinstance(default, (int, float)):
        return number(value, type(default))
    if isinstance(default, str):
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(default, tuple):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            fail("a list of numbers")
        return tuple(number(v, float) for v in value)
    if not isinstance(value, dict):
        fail("a mapping")
    return dict(value)


def read_config_file(path) -> dict:
    """The mapping in a YAML or TOML config file, keys checked against TrainConfig."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
        values = {} if values is None else values
    elif suffix == ".toml":
        with open(path, "rb") as f:
            values = tomllib.load(f)
    else:
        raise ValueError(f"config file {path}: unknown format {suffix!r}; use .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of config keys, got {type(values).__name__}")
    check_keys(values, str(path))
    return values


# Settings that do not change what is computed, so a resumed run may set them differently.
_RESUME_MAY_CHANGE = frozenset(
    {"output", "resume", "num_workers", "device", "val_every", "val_data", "checkpoint_every",
     "log_every", "progress", "cache"}
)


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Learning rate at ``iteration`` as a fraction of ``config.lr``."""
    progress = iteration / config.iterations
    if config.schedule == "cosine":
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "multistep":
        return config.gamma ** sum(progress >= m for m in config.milestones)
    decay_start = 1 - config.final_decay
    if config.final_decay and progress > decay_start:
        floor = config.min_lr / config.lr
        t = (progress - decay_start) / config.final_decay
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_network(config: TrainConfig) -> RepSRNet:
    """The training-form network of ``config``, initialised (``branch_init``) from torch's
    current random state."""
    net = RepSRNet.preset(config.preset, config.scale, block=config.block, act=config.act,
                          in_channels=config.in_channels, out_channels=config.in_channels, **config.block_options)
    if config.branch_init == "zero":
        net.zero_init_branches()
    return net


TRAINING_WEIGHTS = "training.safetensors"


def save_training_weights(net: RepSRNet, path) -> None:
    """The unfolded training-form weights (BN statistics and phase included, no optimizer state),
    so that a run can be re-examined or fine-tuned in its training form; atomic."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def load_training_weights(config: TrainConfig, path) -> RepSRNet:
    """The training-form network of ``config`` with the weights of ``save_training_weights``."""
    from .formats import _read_safetensors

    tensors, _ = _read_safetensors(Path(path))  # DeployedFileError (a ValueError) names a corrupt file
    net = build_network(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path} does not hold the weights of this config's network: "
                         f"{str(e).splitlines()[0]}") from None
    return net


# --- distributed setup ----------------------------------------------------------------------------


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this trainer initialized the process group and destroys it


def _init_distributed(wants_cuda: bool) -> _Distributed:
    if dist.is_available() and dist.is_initialized():
        return _Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return _Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if wants_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if wants_cuda else "gloo")
    return _Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def _resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but torch sees no CUDA GPU")
    return device


# --- RNG state in a form torch.load(weights_only=True) accepts --------------------------------------


def _rng_state(device: torch.device) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(log_dir))


# --- the trainer ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run produced. Metrics are from the last validation (None without validation, and
    on ranks other than 0); ``loss`` is the mean L1 loss over the last logging interval."""

    output: str
    model_path: str | None
    checkpoint_path: str
    iteration: int
    loss: float | None
    psnr: float | None
    ssim: float | None
    bicubic_psnr: float | None
    bicubic_ssim: float | None
    seconds: float
    iterations_per_second: float


class Trainer:
    """One training run. ``Trainer(config).run()`` trains to ``config.iterations``; ``run(until=k)``
    stops after step k (for inspection), and a later ``run()`` continues. ``close()`` releases the
    process group and the TensorBoard writer."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        device = _resolve_device(config)
        self.dist = _init_distributed(device.type == "cuda")
        try:
            self._setup(device)
        except BaseException:
            self.close()
            raise

    def _setup(self, device: torch.device) -> None:
        config = self.config
        if device.type == "cuda" and self.dist.world_size > 1 and config.device in ("auto", "cuda"):
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.is_main = self.dist.rank == 0
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the {self.dist.world_size} processes"
            )
        self.local_batch = config.batch_size // self.dist.world_size
        self.output = Path(config.output)
        self.checkpoint_path = self.output / "checkpoints" / "last.pt"
        self.model_path = self.output / "model.safetensors"
        self.log_path = self.output / "log.csv"

        self.amp_dtype = None
        if config.amp and device.type != "cuda":
            warnings.warn("amp=True needs a CUDA device; training on the CPU in float32", stacklevel=3)
        elif config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Loss scaling is only needed for float16, whose range is too small for small gradients.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.net = build_network(config).to(device)
        self.ema = None
        if config.ema_decay > 0:
            self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(config, it))
        self.switch_iteration = round(config.bn_switch_at * config.iterations)
        self.iteration = 0
        self.samples_seen = 0  # global position in the sample stream (all processes together)
        self.elapsed = 0.0
        self.last_loss: float | None = None
        self.metrics: dict[str, float] = {}

        resume_from = self._resume_path()
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        elif self.checkpoint_path.exists():
            raise FileExistsError(
                f"{self.checkpoint_path} exists: resume that run (--resume) or choose another --output"
            )
        self.model = self.net
        if self.dist.world_size > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=device_ids)

        self.train_set = make_train_dataset(
            config.data, config.scale, config.patch_size, config.data_lr, config.augment, config.cache
        )
        self.val_set = []
        self.tensorboard = None
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            self.checkpoint_path.parent.mkdir(exist_ok=True)
            self._write_config()
            self._start_log(resumed=resume_from is not None)
            if config.val_every:
                self._prepare_validation()
            self.tensorboard = _tensorboard_writer(self.output / "tensorboard")

    # --- state ------------------------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        if not self.config.resume:
            return None
        path = self.checkpoint_path if self.config.resume == "last" else Path(self.config.resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        return path

    def state_dict(self) -> dict:
        """The checkpoint: tensors and plain Python values only (weights_only-loadable)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.device),
            # Each sample is a function of (seed, position), so this is the sampler's whole state.
            "sampler": {"seed": self.config.seed, "position": self.samples_seen},
        }

    def save_checkpoint(self) -> None:
        _atomic_write(self.checkpoint_path, lambda tmp: torch.save(self.state_dict(), tmp))

    def _load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path)
        differing = [
            f"{key} (checkpoint {value!r}, now {self.config.to_dict().get(key)!r})"
            for key, value in state["config"].items()
            if key not in _RESUME_MAY_CHANGE and self.config.to_dict().get(key) != value
        ]
        if differing:
            raise ValueError(
                f"cannot resume from {path}: the run's settings differ ({'; '.join(differing)}); "
                "a resumed run must keep them to continue the same schedule and data"
            )
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.samples_seen = state["sampler"]["position"]
        self.elapsed = state["elapsed"]

    # --- files ------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        import yaml

        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        _atomic_write(self.output / "config.yaml", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _start_log(self, resumed: bool) -> None:
        rows = []
        if resumed and self.log_path.exists():
            # Rows past the checkpoint belong to the interrupted run and will be written again.
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= self.iteration]
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def _log(self, row: dict) -> None:
        row = {"iteration": self.iteration, "seconds": f"{self.elapsed:.1f}", **row}
        with open(self.log_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_COLUMNS).writerow(row)
        if self.tensorboard is not None:
            for key in ("loss", "lr", "psnr", "ssim"):
                if key in row:
                    self.tensorboard.add_scalar(f"train/{key}" if key in ("loss", "lr") else f"val/{key}",
                                                float(row[key]), self.iteration)

    # --- validation -------------------------------------------------------------------------------
    def _prepare_validation(self) -> None:
        """LR inputs and the bicubic baseline, computed once."""
        scale = self.config.scale
        self.val_set = validation_pairs(self.config.val_data, scale)
        baseline = [psnr_ssim_y(bicubic_upscale(lr, scale), hr, crop_border=scale) for _, lr, hr in self.val_set]
        self.metrics["bicubic_psnr"] = float(np.mean([p for p, _ in baseline]))
        self.metrics["bicubic_ssim"] = float(np.mean([s for _, s in baseline]))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean PSNR/SSIM (Y, border = scale) of the model (the EMA if on) in eval mode over the
        validation images, the output rounded to 8 bit as a saved PNG would be."""
        model = self.ema if self.ema is not None else self.net
        was_training = model.training
        model.eval()
        scores = []
        for _, lr, hr in self.val_set:
            if self.config.in_channels == 1:  # as a Y model is used on RGB images
                sr = upscale_rgb_with_y_model(lambda y: model(y.to(self.device)), lr[None], self.config.scale)[0]
            else:
                sr = model(lr[None].to(self.device)).float()[0].cpu()
            scores.append(psnr_ssim_y(quantize_8bit(sr), hr, crop_border=self.config.scale))
        model.train(was_training)
        self.metrics["psnr"] = float(np.mean([p for p, _ in scores]))
        self.metrics["ssim"] = float(np.mean([s for _, s in scores]))
        return {"psnr": self.metrics["psnr"], "ssim": self.metrics["ssim"]}

    # --- training ---------------------------------------------------------------------------------
    def _make_loader(self) -> DataLoader:
        sampler = InfiniteSampler(
            len(self.train_set), self.config.seed, self.dist.rank, self.dist.world_size,
            start=self.samples_seen // self.dist.world_size,
        )
        return DataLoader(
            self.train_set,
            batch_size=self.local_batch,
            sampler=sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _say(self, message: str) -> None:
        """A line on rank 0 that does not break the progress bar."""
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(message)

    def _switch_bn(self) -> None:
        if self.config.bn_precise_batches:
            self._precise_bn()
        self.net.switch_bn_to_population()
        if self.ema is not None:
            self.ema.switch_bn_to_population()

    @torch.no_grad()
    def _precise_bn(self) -> None:
        """Precise BN: replaces every BN's running statistics by the exact average of its batch
        statistics over ``bn_precise_batches`` batches of a separate sample stream, the weights as
        they are now (torch's cumulative average: momentum None). Under DDP each process averages
        its own shard and rank 0's statistics are broadcast, as for the running statistics."""
        bns = self.net.batchnorms()
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        sampler = InfiniteSampler(len(self.train_set), self.config.seed * PRECISE_BN_STREAM + 1,
                                  self.dist.rank, self.dist.world_size)
        loader = DataLoader(self.train_set, batch_size=self.local_batch, sampler=sampler,
                            num_workers=self.config.num_workers, generator=torch.Generator())
        was_training = self.net.training
        self.net.train()
        try:
            for _, (lr, _hr) in zip(range(self.config.bn_precise_batches), loader):
                lr = lr.to(self.device)
                self.net(rgb_to_luma(lr) if self.config.in_channels == 1 else lr)
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
            self.net.train(was_training)

    def _step(self, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        lr = lr.to(self.device, non_blocking=True)
        hr = hr.to(self.device, non_blocking=True)
        if self.config.in_channels == 1:  # a Y network: trained on the luma of the RGB patches
            lr, hr = rgb_to_luma(lr), rgb_to_luma(hr)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            sr = self.model(lr)
        loss = F.l1_loss(sr.float(), hr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        for averaged, current in zip(self.ema.parameters(), self.net.parameters()):
            averaged.lerp_(current, 1 - self.config.ema_decay)
        # BN statistics and the BN phase are taken as they are, not averaged.
        for averaged, current in zip(self.ema.buffers(), self.net.buffers()):
            averaged.copy_(current)

    def _mean_over_processes(self, value: torch.Tensor) -> float:
        if self.dist.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.dist.world_size
        return float(value)

    def run(self, until: int | None = None) -> TrainResult:
        """Trains from the current iteration to ``until`` (default: ``config.iterations``); at
        ``config.iterations`` writes the final checkpoint and the deployed model."""
        from tqdm import tqdm  # imported here, like yaml: importing this module needs neither

        config = self.config
        until = config.iterations if until is None else min(until, config.iterations)
        start_iteration, start_time = self.iteration, time.perf_counter()
        elapsed_before = self.elapsed
        bar = tqdm(
            total=config.iterations, initial=self.iteration, unit="it", dynamic_ncols=True,
            disable=not (self.is_main and config.progress),
        )
        if self.metrics.get("bicubic_psnr") is not None and self.iteration == 0:
            self._say(f"bicubic baseline: PSNR {self.metrics['bicubic_psnr']:.3f} dB, "
                      f"SSIM {self.metrics['bicubic_ssim']:.4f}")
        batches = iter(self._make_loader())
        self.model.train()
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        try:
            while self.iteration < until:
                if self.iteration >= self.switch_iteration and self.net.bn_phase == "batch":
                    self._switch_bn()
                    self._say(f"iteration {self.iteration}: BN now uses population statistics")
                lr, hr = next(batches)
                loss_sum += self._step(lr, hr)
                loss_count += 1
                self.iteration += 1
                self.samples_seen += config.batch_size
                self.elapsed = elapsed_before + time.perf_counter() - start_time
                bar.update(1)
                row = {}
                if self.iteration % config.log_every == 0 or self.iteration == until:
                    self.last_loss = self._mean_over_processes(loss_sum / loss_count)
                    loss_sum.zero_()
                    loss_count = 0
                    current_lr = self.optimizer.param_groups[0]["lr"]
                    row.update(loss=f"{self.last_loss:.6f}", lr=f"{current_lr:.4g}")
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{current_lr:.2e}")
                validate_now = config.val_every and (
                    self.iteration % config.val_every == 0 or self.iteration == config.iterations
                )
                if self.is_main and validate_now:
                    metrics = self.validate()
                    row.update(psnr=f"{metrics['psnr']:.4f}", ssim=f"{metrics['ssim']:.6f}")
                    self._say(f"iteration {self.iteration}: PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}")
                if self.is_main and row:
                    self._log(row)
                if self.is_main and config.checkpoint_every and self.iteration % config.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.iteration == config.iterations:
                self._finish()
        finally:
            bar.close()
            del batches  # stops DataLoader workers
        seconds = time.perf_counter() - start_time
        return TrainResult(
            output=str(self.output),
            model_path=str(self.model_path) if self.iteration == config.iterations else None,
            checkpoint_path=str(self.checkpoint_path),
            iteration=self.iteration,
            loss=self.last_loss,
            psnr=self.metrics.get("psnr"),
            ssim=self.metrics.get("ssim"),
            bicubic_psnr=self.metrics.get("bicubic_psnr"),
            bicubic_ssim=self.metrics.get("bicubic_ssim"),
            seconds=seconds,
            iterations_per_second=(self.iteration - start_iteration) / seconds if seconds > 0 else 0.0,
        )

    def _finish(self) -> None:
        if self.is_main:
            if not (self.config.checkpoint_every and self.iteration % self.config.checkpoint_every == 0):
                self.save_checkpoint()
            final = self.ema if self.ema is not None else self.net
            save_training_weights(final, self.output / TRAINING_WEIGHTS)
            final.reparameterize().save(self.model_path)
        if self.dist.world_size > 1:
            # Every process returns only once the files exist.
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        if getattr(self, "tensorboard", None) is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.dist.owns_group = False


def load_checkpoint(path) -> dict[str, Any]:
    """Reads a training checkpoint with ``torch.load(weights_only=True)`` and checks its format."""
    from .formats import torch_load_failure

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects: all "not a checkpoint"
        raise ValueError(f"{path} is not a repsr_ext training checkpoint ({torch_load_failure(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a repsr_ext training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    return state


def train(config: TrainConfig | dict) -> TrainResult:
    """Runs (or resumes) a training run to the end; see the module docstring."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()


# --- command line ---------------------------------------------------------------------------------


def _mapping(text: str) -> dict:
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML/JSON mapping such as '{{expansion: 4}}', got {text!r}")
    return value


PROG = "python -m repsr_ext.train"  # `repsr train` passes its own name


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """``--config FILE`` plus one flag per TrainConfig field (``--patch-size`` or ``--patch_size``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a RepSR super-resolution network and export the deployed model.",
    )
    parser.add_argument("--config", help="YAML (.yaml/.yml) or TOML (.toml) file of config keys; flags override it")
    for f in fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        options: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata['help']} (default: {default!r})",
        }
        if f.name == "resume":
            options.update(nargs="?", const="last", metavar="CHECKPOINT")
        elif isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            options.update(type=float, nargs=len(default) if f.name == "betas" else "+")
        elif isinstance(default, dict):
            options["type"] = _mapping
        else:
            options["type"] = type(default)
        parser.add_argument(*names, **options)
    return parser


def config_from_args(argv: list[str] | None = None, prog: str = PROG) -> TrainConfig:
    """Defaults, then the ``--config`` file, then flags. With ``--resume`` the checkpoint's own
    settings replace the defaults, so ``--output DIR --resume`` alone continues a run."""
    args = vars(build_parser(prog).parse_args(argv))
    config_file = args.pop("config", None)
    values = {**(read_config_file(config_file) if config_file else {}), **args}
    if values.get("resume"):
        output = Path(values.get("output", TrainConfig.output))
        path = output / "checkpoints" / "last.pt" if values["resume"] == "last" else Path(values["resume"])
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        values = {**load_checkpoint(path)["config"], **values}
    return TrainConfig.from_dict(values, source=config_file or "command line")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Command-line entry; ``prog`` names the command in usage and error lines (``repsr train``)."""
    try:
        config = config_from_args(argv, prog)
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    try:
        result = trainer.run()
    finally:
        trainer.close()
    if trainer.is_main:
        summary = f"finished {result.iteration} iterations in {result.seconds:.0f} s " \
                  f"({result.iterations_per_second:.2f} it/s); model: {result.model_path}"
        if result.psnr is not None:
            summary += (f"\nvalidation PSNR {result.psnr:.3f} dB, SSIM {result.ssim:.4f} "
                        f"(bicubic {result.bicubic_psnr:.3f} dB, {result.bicubic_ssim:.4f})")
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
