"""The second round of the paper-claims grid: the first round's confounds removed.

What changed from round 1 (``experiment.ROUND1``), and why (the issue "Paper-claims experiment,
second round"):

- schedule: a constant learning rate, then a half-cosine decay over the last 10% (``final_decay``),
  the same for every arm; the BN switch points (0.5, 0.8) both lie inside the constant phase, so
  an arm trains as long after its switch as the fraction says;
- patches: LR 32 x 32 (HR 128) at batch 8 instead of LR 16 at batch 16, so that far fewer of the
  positions a BN sees lie within reach of the zero padding (``stats.padding_share`` states the
  shares);
- initialisation: ``branch_init="zero"`` for every arm (every non-identity branch starts switched
  off), so every arm starts from about the same loss (recorded per run: ``initial_loss``);
- like for like: RepVGG, ACB and DBB also with the modified (switched) BN; RepSR's BN placement
  (``expand`` / ``squeeze`` / ``both``); BN switched to population statistics from iteration 0
  (``repsr_affine``: BN's extra affine parameters without its normalisation); precise BN;
- a Y network (``in_channels=1``), as ECBSR and most efficient-SR papers train, run on RGB test
  images with bicubic chroma (``data.upscale_rgb_with_y_model``);
- data: 2-fold cross-validation over every photograph scikit-image ships (``data.FOLDS``): even
  seeds train on fold 0 and test on fold 1, odd seeds the other way round; plus the synthetic
  dead-leaves set; 6 seeds;
- artifacts measured: error statistics over every flat-region pixel of the test photographs,
  synthetic flat fields and gentle gradients with mild noise at five brightnesses, and every BN
  network evaluated the classic way too (training form, batch statistics of the one test image);
- every run keeps its unfolded training-form weights (``training.safetensors``) beside the
  deployed file.

Sizing: ``MS_PER_ITERATION`` (measured, two one-thread processes side by side on the project's
2-core VM; 771 ms for one iteration of every arm) x 4000 iterations x 6 seeds / 2 workers is
about 2.6 h of training, plus about 5 s of evaluation per run; see ``experiments/README.md``. Run it with ``repsr experiment run --round 2 --workers 2``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import (bicubic_degrade, bicubic_upscale, quantize_8bit, rgb_to_luma,
                   upscale_rgb_with_y_model, validation_pairs)
from .experiment import Grid
from .metrics import psnr_ssim_y
from .nets import PlainSR
from .train import TRAINING_WEIGHTS, TrainConfig, load_training_weights

ITERATIONS = 4_000
SEEDS = 6
BN_SWITCH = 0.8
PRECISE_BN_BATCHES = 250  # 2000 patches of HR 128: every training image many times over

BASE: dict = dict(
    preset="M4C16",
    scale=4,
    act="prelu",
    in_channels=1,
    branch_init="zero",
    patch_size=128,
    batch_size=8,
    augment=True,
    lr=5e-4,
    betas=(0.9, 0.99),
    schedule="constant",
    final_decay=0.1,
    min_lr=1e-7,
    ema_decay=0.0,
    num_workers=0,
    val_every=0,
    checkpoint_every=500,
    log_every=100,
    device="cpu",
)


def per_seed(seed: int) -> dict:
    """Two-fold cross-validation over the photographs: the seed's parity picks the training fold."""
    fold = seed % 2
    return {"data": f"embedded:fold{fold}", "val_data": f"embedded:fold{1 - fold}"}


def _repsr(bn: str = "both", switch: float = BN_SWITCH, **extra) -> dict:
    return dict(block="repsr", block_options={"expansion": 2, "bn": bn}, bn_switch_at=switch,
                bn_precise_batches=extra.pop("bn_precise_batches", 0), **extra)


def _other(block: str, switch: float = BN_SWITCH) -> dict:
    return dict(block=block, block_options={}, bn_switch_at=switch, bn_precise_batches=0)


ARMS: dict[str, dict] = {
    "plain": _other("plain", 1.0),
    "ecb": _other("ecb", 1.0),
    "repvgg": _other("repvgg"),
    "acb": _other("acb"),
    "dbb": _other("dbb"),
    "repsr": _repsr(),
    "repsr_switch0.5": _repsr(switch=0.5),
    "repsr_batch_bn": _repsr(switch=1.0),
    "repsr_no_bn": _repsr("none", 1.0),
    "repsr_affine": _repsr(switch=0.0),
    "repsr_precise": _repsr(bn_precise_batches=PRECISE_BN_BATCHES),
    "repsr_expand": _repsr("expand"),
    "repsr_squeeze": _repsr("squeeze"),
}

DESCRIPTIONS: dict[str, str] = {
    "plain": "plain 3x3 conv (the deployed form)",
    "ecb": "ECB block (no BN)",
    "repvgg": "RepVGG block, modified BN (switch 0.8)",
    "acb": "ACB block, modified BN (switch 0.8)",
    "dbb": "DBB block, modified BN (switch 0.8)",
    "repsr": "RepSR block, BN both, switch at 0.8 (the method)",
    "repsr_switch0.5": "RepSR, BN switched at 0.5",
    "repsr_batch_bn": "RepSR, BN batch stats throughout (plain BN)",
    "repsr_no_bn": "RepSR without BN",
    "repsr_affine": "RepSR, BN on population stats from iteration 0 (affine only)",
    "repsr_precise": f"RepSR, switch 0.8, precise BN ({PRECISE_BN_BATCHES} batches)",
    "repsr_expand": "RepSR, BN after the expand conv only, switch 0.8",
    "repsr_squeeze": "RepSR, BN after the squeeze conv only, switch 0.8",
}

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("1: BN helps once the mismatch is removed", "repsr", "repsr_no_bn"),
    ("1: BN helps once the mismatch is removed", "repsr_switch0.5", "repsr_no_bn"),
    ("1: normalisation, not BN's extra parameters", "repsr", "repsr_affine"),
    ("1: BN's extra parameters alone", "repsr_affine", "repsr_no_bn"),
    ("2: plain BN (mismatch kept)", "repsr_batch_bn", "repsr_no_bn"),
    ("2: the switch fixes plain BN", "repsr", "repsr_batch_bn"),
    ("2: switch point", "repsr", "repsr_switch0.5"),
    ("2: precise population statistics", "repsr_precise", "repsr"),
    ("BN placement", "repsr", "repsr_expand"),
    ("BN placement", "repsr", "repsr_squeeze"),
    ("3: RepSR vs other blocks", "repsr", "plain"),
    ("3: RepSR vs other blocks", "repsr", "ecb"),
    ("3: RepSR vs other blocks", "repsr", "repvgg"),
    ("3: RepSR vs other blocks", "repsr", "acb"),
    ("3: RepSR vs other blocks", "repsr", "dbb"),
)

# ms per training iteration of each arm with BASE: the median over the first 3-4 seeds of the grid
# itself (two one-thread processes side by side on the project's 2-core VM, torch 2.13 CPU, at
# times beside other work); only for the time estimate of what is left.
MS_PER_ITERATION: dict[str, float] = {
    "plain": 20.8, "ecb": 75.6, "repvgg": 31.2, "acb": 40.5, "dbb": 80.7, "repsr": 68.0,
    "repsr_switch0.5": 69.2, "repsr_batch_bn": 72.9, "repsr_no_bn": 53.9, "repsr_affine": 62.3,
    "repsr_precise": 72.0, "repsr_expand": 64.7, "repsr_squeeze": 59.4,
}

# --- evaluation ------------------------------------------------------------------------------------

FLAT_WINDOW = 9           # HR pixels: the window of the local standard deviation
FLAT_STD = 1.5            # grey levels (full-range luma of the HR image): at most this is "flat"
CLIP_MARGIN = 2           # grey levels: windows touching 0..2 or 253..255 are not flat (clipped)
ERROR_THRESHOLD = 3.0     # grey levels: the share of flat pixels whose |error| is larger
HIST_STEP, HIST_MAX = 0.25, 32.0  # the |error| histogram, pooled over images for percentiles
FIELD_LEVELS = (32, 80, 128, 176, 224)
FIELD_HR_SIZE = 256
FIELD_NOISE = 1.0         # grey levels: Gaussian noise on the HR field before degradation
GRADIENT_SPAN = 32.0      # grey levels across the field's width: a gentle ramp


def error_histogram(errors: np.ndarray) -> list[int]:
    """Counts of |error| (grey levels) in bins of ``HIST_STEP`` up to ``HIST_MAX``, then one
    overflow bin."""
    bins = int(HIST_MAX / HIST_STEP)
    index = np.minimum((np.abs(errors) / HIST_STEP).astype(np.int64), bins)
    return np.bincount(index.ravel(), minlength=bins + 1).tolist()


def histogram_percentile(counts, q: float) -> float:
    """The ``q``-th percentile (0..100) of the values behind ``error_histogram`` counts, linear
    within a bin (values in the overflow bin count as ``HIST_MAX``)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    target = q / 100 * total
    cumulative = np.cumsum(counts)
    k = int(np.searchsorted(cumulative, target, side="left"))
    if k >= len(counts) - 1:
        return HIST_MAX
    before = cumulative[k] - counts[k]
    fraction = (target - before) / counts[k] if counts[k] else 0.0
    return float((k + fraction) * HIST_STEP)


def luma_255(rgb: torch.Tensor) -> np.ndarray:
    """[3, H, W] RGB in [0, 1] -> H x W full-range BT.601 luma on 0..255 (float64)."""
    return rgb_to_luma(rgb.double()).squeeze(0).numpy() * 255.0


def flat_mask(hr_luma: np.ndarray, border: int) -> np.ndarray:
    """Pixels whose ``FLAT_WINDOW`` x ``FLAT_WINDOW`` HR neighbourhood has a standard deviation of
    at most ``FLAT_STD`` grey levels, no value within ``CLIP_MARGIN`` of 0 or 255 (clipped areas
    look flat but hide errors) and at least ``border`` from the image edge."""
    y = torch.from_numpy(hr_luma)[None, None]
    k, r = FLAT_WINDOW, FLAT_WINDOW // 2
    mean = F.avg_pool2d(y, k, stride=1)
    variance = (F.avg_pool2d(y * y, k, stride=1) - mean * mean).clamp_min(0)
    low = -F.max_pool2d(-y, k, stride=1)
    high = F.max_pool2d(y, k, stride=1)
    ok = (variance.sqrt() <= FLAT_STD) & (low > CLIP_MARGIN) & (high < 255 - CLIP_MARGIN)
    mask = np.zeros(hr_luma.shape, bool)
    mask[r:r + ok.shape[-2], r:r + ok.shape[-1]] = ok[0, 0].numpy()
    if border:
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = False, False, False, False
    return mask


def error_stats(errors: np.ndarray) -> dict:
    """n, mean |error|, its 99.9th percentile, the share above ``ERROR_THRESHOLD`` and the
    histogram (grey levels)."""
    errors = np.abs(errors.ravel())
    if errors.size == 0:
        return dict(n=0, mean=None, p999=None, share_above=None, histogram=error_histogram(errors))
    return dict(n=int(errors.size), mean=float(errors.mean()), p999=float(np.percentile(errors, 99.9)),
                share_above=float((errors > ERROR_THRESHOLD).mean()), histogram=error_histogram(errors))


def pooled_error_stats(parts: list[dict]) -> dict:
    """``error_stats`` of the union of the pixels behind ``parts`` (from their n, means and
    histograms; the 99.9th percentile to within a histogram bin)."""
    parts = [p for p in parts if p["n"]]
    n = sum(p["n"] for p in parts)
    if not n:
        return dict(n=0, mean=None, p999=None, share_above=None)
    counts = np.sum([p["histogram"] for p in parts], axis=0)
    above = sum(p["share_above"] * p["n"] for p in parts)
    return dict(n=n, mean=sum(p["mean"] * p["n"] for p in parts) / n, p999=histogram_percentile(counts, 99.9),
                share_above=above / n)


def synthetic_fields() -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, LR RGB [3, h, w], clean HR luma H x W): grey flat fields and horizontal ramps of
    ``GRADIENT_SPAN`` grey levels at ``FIELD_LEVELS``, each with Gaussian noise of ``FIELD_NOISE``
    grey levels added to the HR image, rounded to 8 bit, then degraded as the photographs are.
    Fixed noise (seeded by the field), so that every run sees the same fields."""
    fields = []
    size = FIELD_HR_SIZE
    ramp = np.linspace(-GRADIENT_SPAN / 2, GRADIENT_SPAN / 2, size)
    for k, level in enumerate(FIELD_LEVELS):
        for kind, clean in (("flat", np.full((size, size), float(level))),
                            ("gradient", np.broadcast_to(level + ramp, (size, size)).copy())):
            noise = np.random.default_rng([k, kind == "gradient", 31_337]).normal(0.0, FIELD_NOISE, (size, size))
            noisy = np.clip(np.round(clean + noise), 0, 255) / 255.0
            hr = torch.from_numpy(noisy).float()[None].expand(3, -1, -1).contiguous()
            fields.append((f"{kind}_{level}", hr, clean))
    return fields


def _run_y(net: torch.nn.Module):
    def run(y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(y.float())
    return run


def _upscale(net: torch.nn.Module, lr: torch.Tensor, scale: int, in_channels: int) -> torch.Tensor:
    """The network on one LR RGB image [3, h, w] -> the 8-bit-rounded RGB output [3, H, W]."""
    if in_channels == 1:
        return quantize_8bit(upscale_rgb_with_y_model(_run_y(net), lr[None], scale)[0])
    return quantize_8bit(_run_y(net)(lr[None])[0])


def batch_statistics_network(net: torch.nn.Module) -> torch.nn.Module | None:
    """The training-form ``net`` as plain BN is classically run at test time: every BN normalising
    with the batch statistics of what it is given (here one image), its running statistics left
    as they are; None where the network has no BN."""
    bns = net.batchnorms() if hasattr(net, "batchnorms") else []
    if not bns:
        return None
    for bn in bns:
        bn._population = False  # this copy only: the phase buffer is not touched
        bn.momentum = 0.0       # batch statistics used, running statistics kept
    return net.train()


def evaluate_round2(plain: PlainSR, config: TrainConfig, output: Path) -> dict:
    """Round 2's evaluation of a finished run (deployed network ``plain``, training-form weights
    in ``output / TRAINING_WEIGHTS``):

    - ``images``: per test photograph (the other fold), PSNR/SSIM on Y (border = scale) of the
      deployed network and of bicubic, and ``flat``: ``error_stats`` of |Y error| (full-range grey
      levels) over its flat-region pixels (``flat_mask``);
    - ``flat``: those pooled over every test photograph;
    - ``deadleaves``: PSNR/SSIM per synthetic dead-leaves image, and bicubic's;
    - ``fields``: per synthetic flat field and gradient, ``error_stats`` of the network's and of
      bicubic's |Y error| against the clean field (border of 2 x scale left out);
    - ``batch_stat_images``: for networks with BN, PSNR/SSIM per test photograph of the training
      form with BN on the image's own batch statistics (plain BN as classically deployed)."""
    scale, channels = plain.scale, plain.in_channels
    plain = plain.eval()
    images = []
    pairs = validation_pairs(config.val_data, scale)
    for name, lr, hr in pairs:
        sr = _upscale(plain, lr, scale, channels)
        psnr, ssim = psnr_ssim_y(sr, hr, crop_border=scale)
        bicubic = bicubic_upscale(lr, scale)
        bicubic_psnr, bicubic_ssim = psnr_ssim_y(bicubic, hr, crop_border=scale)
        hr_luma = luma_255(hr)
        mask = flat_mask(hr_luma, border=scale)
        flat = error_stats((luma_255(sr) - hr_luma)[mask])
        flat_bicubic = error_stats((luma_255(bicubic) - hr_luma)[mask])
        images.append(dict(image=name, psnr=psnr, ssim=ssim, bicubic_psnr=bicubic_psnr, bicubic_ssim=bicubic_ssim,
                           flat=flat, flat_bicubic=flat_bicubic))
    dead_leaves = []
    for name, lr, hr in validation_pairs("deadleaves", scale):
        psnr, ssim = psnr_ssim_y(_upscale(plain, lr, scale, channels), hr, crop_border=scale)
        bicubic_psnr, bicubic_ssim = psnr_ssim_y(bicubic_upscale(lr, scale), hr, crop_border=scale)
        dead_leaves.append(dict(image=name, psnr=psnr, ssim=ssim, bicubic_psnr=bicubic_psnr, bicubic_ssim=bicubic_ssim))
    fields = []
    border = 2 * scale
    for name, hr, clean in synthetic_fields():
        lr = bicubic_degrade(hr, scale)
        inner = (slice(border, -border), slice(border, -border))
        error = (luma_255(_upscale(plain, lr, scale, channels)) - clean)[inner]
        bicubic_error = (luma_255(bicubic_upscale(lr, scale)) - clean)[inner]
        fields.append(dict(field=name, **{k: v for k, v in error_stats(error).items() if k != "histogram"},
                           max=float(np.abs(error).max()), signed_mean=float(error.mean()),
                           bicubic={k: v for k, v in error_stats(bicubic_error).items() if k != "histogram"}))
    result = dict(images=images, flat=pooled_error_stats([row["flat"] for row in images]),
                  flat_bicubic=pooled_error_stats([row["flat_bicubic"] for row in images]),
                  deadleaves=dead_leaves,
                  deadleaves_psnr=float(np.mean([r["psnr"] for r in dead_leaves])),
                  deadleaves_ssim=float(np.mean([r["ssim"] for r in dead_leaves])),
                  fields=fields)
    weights = Path(output) / TRAINING_WEIGHTS
    if weights.is_file():
        classic = batch_statistics_network(load_training_weights(config, weights))
        if classic is not None:
            rows = []
            for name, lr, hr in pairs:
                with torch.no_grad():
                    sr = _upscale(classic, lr, scale, config.in_channels)
                psnr, ssim = psnr_ssim_y(sr, hr, crop_border=scale)
                rows.append(dict(image=name, psnr=psnr, ssim=ssim))
            result["batch_stat_images"] = rows
            result["batch_stat_psnr"] = float(np.mean([r["psnr"] for r in rows]))
    return result


ROUND2 = Grid(
    name="round2", base=BASE, arms=ARMS, descriptions=DESCRIPTIONS, comparisons=COMPARISONS,
    out="experiments/round2/runs", results="experiments/RESULTS.md", figures="experiments/round2/figures",
    seeds=SEEDS, iterations=ITERATIONS, ms_per_iteration=MS_PER_ITERATION, per_seed=per_seed,
    evaluate=evaluate_round2,
)


# --- summary -----------------------------------------------------------------------------------------


def _fold(result: dict) -> str:
    return result["config"].get("val_data", "")


def comparison_cells(results: list[dict], a: str, b: str, rows: str = "images", key: str = "psnr") -> list:
    """The paired (seed, image) differences A minus B of ``key`` in each result's ``rows``."""
    from .stats import Cell

    by = {(r["arm"], r["seed"]): r for r in results}
    cells = []
    for (arm, seed), ra in sorted(by.items()):
        rb = by.get((b, seed))
        if arm != a or rb is None or rows not in ra or rows not in rb:
            continue
        values_b = {row["image"]: row[key] for row in rb[rows]}
        fold = _fold(ra) if rows == "images" else "all"
        cells += [Cell(seed, row["image"], fold, row[key] - values_b[row["image"]])
                  for row in ra[rows] if row["image"] in values_b]
    return cells


def compare_round2(results: list[dict], comparisons=COMPARISONS, samples: int = 10_000) -> list[dict]:
    """Every comparison with results for both arms: on the test photographs (PSNR, and SSIM's
    mean) and on dead leaves (PSNR): the mean difference over seeds x images, its two-way bootstrap
    95% interval, the sign-flip p over seeds, Holm-adjusted over the table's photograph PSNR
    comparisons, and the verdict."""
    from .stats import compare_cells, holm, verdict

    out = []
    for claim, a, b in comparisons:
        photos = compare_cells(comparison_cells(results, a, b), samples)
        if not photos:
            continue
        ssim = compare_cells(comparison_cells(results, a, b, key="ssim"), samples)
        leaves = compare_cells(comparison_cells(results, a, b, "deadleaves"), samples)
        out.append(dict(claim=claim, a=a, b=b, photos=photos, ssim=ssim, deadleaves=leaves))
    for row, p in zip(out, holm([row["photos"]["p"] for row in out])):
        row["p_holm"] = p
        row["verdict"] = verdict(row["photos"]["ci_family"])
    return out


def summarize_round2(results: list[dict]) -> list[dict]:
    """One row per arm (grid order): seeds, mean and std over seeds of photograph PSNR/SSIM, dead-
    leaves PSNR, batch-statistics PSNR (BN arms), pooled flat-region error statistics (all its
    runs' flat pixels), the synthetic fields' worst mean |error| and 99.9th percentile, the initial
    loss and the median ms per iteration."""
    from .experiment import _mean_std

    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    table = []
    for arm in [a for a in ARMS if a in by_arm] + sorted(set(by_arm) - set(ARMS)):
        runs = sorted(by_arm[arm], key=lambda r: r["seed"])
        row = dict(arm=arm, description=DESCRIPTIONS.get(arm, runs[0].get("description", "")), runs=len(runs),
                   seeds=[r["seed"] for r in runs], iterations=sorted({r["iterations"] for r in runs}),
                   scale=runs[0]["config"]["scale"])
        for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "deadleaves_psnr", "initial_loss", "final_loss"):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values) if values else (None, None)
        classic = [r["batch_stat_psnr"] for r in runs if "batch_stat_psnr" in r]
        row["batch_stat_psnr_mean"], row["batch_stat_psnr_std"] = _mean_std(classic) if classic else (None, None)
        row["flat"] = pooled_error_stats([image["flat"] for r in runs for image in r["images"]])
        row["flat_bicubic"] = pooled_error_stats([image["flat_bicubic"] for r in runs for image in r["images"]])
        fields = [f for r in runs for f in r["fields"]]
        row["field_mean_worst"] = max(float(np.mean([f["mean"] for f in fields if f["field"] == name]))
                                      for name in {f["field"] for f in fields})
        row["field_p999_worst"] = max(f["p999"] for f in fields)
        row["field_bicubic_mean"] = float(np.mean([f["bicubic"]["mean"] for f in fields]))
        row["seconds_per_iteration"] = float(np.median([r["seconds_per_iteration"] for r in runs]))
        row["training_params"] = sorted({r["training_params"] for r in runs})
        row["deployed_params"] = sorted({r["deployed_params"] for r in runs})
        row["bicubic_psnr"], row["bicubic_ssim"] = row["bicubic_psnr_mean"], row["bicubic_ssim_mean"]
        row["psnr_by_seed"] = {r["seed"]: r["psnr"] for r in runs}
        row["ssim_by_seed"] = {r["seed"]: r["ssim"] for r in runs}
        table.append(row)
    return table


def _num(value, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(mean, std, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def format_round2(table: list[dict], comparisons: list[dict]) -> str:
    """The round-2 summary as markdown."""
    from .experiment import _markdown_table
    from .stats import EQUIVALENCE_DB, family_level, padding_share

    if not table:
        return "_No finished runs yet._\n"
    seeds_total = sorted({s for row in table for s in row["seeds"]})
    deployed = sorted({p for row in table for p in row["deployed_params"]})
    ranked = sorted(table, key=lambda r: -r["psnr_mean"])
    parts = [
        f"Runs: {sum(r['runs'] for r in table)} of {len(ARMS) * SEEDS} ({len(table)} arms; seeds "
        f"{', '.join(map(str, seeds_total))}). Y networks (M4C16, x{table[0]['scale']}, PReLU, "
        f"{', '.join(f'{p:,}' for p in deployed)} deployed parameters in every arm), "
        f"{', '.join(map(str, sorted({i for r in table for i in r['iterations']})))} iterations, constant lr 5e-4 "
        "with a half-cosine decay over the last 10%, zero-init branches, LR patches 32 x 32 at batch 8, "
        "2-fold cross-validation over the 19 scikit-image photographs (even seeds train on fold 0 and test on "
        "fold 1, odd seeds the reverse). PSNR/SSIM on Y (border = scale) of the deployed network, "
        "mean ± sample std over seeds.",
        "",
        f"Share of BN positions within reach of the zero padding (6 BN depths of the M4C16 stack): "
        f"{100 * padding_share(16, 6):.0f}% with round 1's LR 16 x 16 patches, "
        f"{100 * padding_share(32, 6):.0f}% with round 2's LR 32 x 32.",
        "",
        _markdown_table(
            ["rank", "arm", "what", "seeds", "PSNR photos", "SSIM photos", "PSNR dead leaves",
             "PSNR, BN on the image's batch stats", "initial loss", "ms / it"],
            [[str(i + 1), f"`{r['arm']}`", r["description"], str(r["runs"]), _pm(r["psnr_mean"], r["psnr_std"], 3),
              _pm(r["ssim_mean"], r["ssim_std"], 4), _pm(r["deadleaves_psnr_mean"], r["deadleaves_psnr_std"], 3),
              _pm(r["batch_stat_psnr_mean"], r["batch_stat_psnr_std"], 3), _num(r["initial_loss_mean"], 4),
              f"{1000 * r['seconds_per_iteration']:.1f}"] for i, r in enumerate(ranked)]),
        "",
        # bicubic depends only on the test fold: take it from the arm with the most runs (a complete
        # arm has as many seeds on each fold)
        f"Bicubic: {max(ranked, key=lambda r: r['runs'])['bicubic_psnr_mean']:.3f} dB on the photographs "
        "(mean over the seeds' test folds).",
    ]
    if len({tuple(r["seeds"]) for r in table}) > 1:
        parts += ["", "**Arms have different seeds so far** (the folds differ by about 2 dB in PSNR): rank the "
                      "arms by the paired comparisons below, not by these means."]
    if comparisons:
        parts += [
            "",
            "Paired comparisons, A minus B, over seeds x test images (each seed's runs of A and B share their "
            "sample stream and initial random state). Interval: two-way bootstrap 95% (seeds and images "
            "resampled within each fold, 10,000 resamples); family interval: the union of that bootstrap "
            "interval and a t interval over the seeds' mean differences (the bootstrap alone is too narrow with "
            f"few seeds), both at the Bonferroni level 1 − 0.05/{len(COMPARISONS)} = "
            f"{100 * family_level(len(COMPARISONS)):.2f}% for the table's {len(COMPARISONS)} comparisons. Verdict, from the family interval: *supported* (above 0), "
            f"*reversed* (below 0), *no difference* (inside ±{EQUIVALENCE_DB} dB), else *undecided*. "
            "p: exact sign-flip test over the seeds' mean differences, reported beside it (it counts seeds "
            "only; its floor with n seeds is 2/2^n, 1/32 for 6), Holm: adjusted over the table.",
            "",
            _markdown_table(
                ["claim", "A", "B", "seeds x images", "Δ PSNR photos (dB)", "95% interval", "family interval",
                 "A better (seeds)", "p", "Holm p", "verdict", "Δ SSIM", "Δ PSNR dead leaves (95%)"],
                [[c["claim"], f"`{c['a']}`", f"`{c['b']}`", f"{c['photos']['seeds']} x {c['photos']['images']}",
                  _num(c["photos"]["mean"], 3, True),
                  f"[{c['photos']['ci'][0]:+.3f}, {c['photos']['ci'][1]:+.3f}]",
                  f"[{c['photos']['ci_family'][0]:+.3f}, {c['photos']['ci_family'][1]:+.3f}]",
                  f"{c['photos']['a_better']} of {c['photos']['seeds']}", f"{c['photos']['p']:.3f}",
                  f"{c['p_holm']:.3f}", f"**{c['verdict']}**", _num(c["ssim"]["mean"], 4, True),
                  (f"{c['deadleaves']['mean']:+.3f} [{c['deadleaves']['ci'][0]:+.3f}, {c['deadleaves']['ci'][1]:+.3f}]"
                   if c["deadleaves"] else "–")]
                 for c in comparisons]),
        ]
    parts += [
        "",
        f"Artifacts. Flat regions: every test-photograph pixel whose {FLAT_WINDOW} x {FLAT_WINDOW} HR neighbourhood "
        f"has a luma standard deviation of at most {FLAT_STD} grey levels and no value within {CLIP_MARGIN} of "
        "0 or 255 (pooled over every run of the arm); |error| of the output's luma in grey levels (0..255). "
        f"Synthetic fields: flat fields and ramps of {GRADIENT_SPAN:g} grey levels at brightness "
        f"{', '.join(map(str, FIELD_LEVELS))}, HR noise σ = {FIELD_NOISE:g}, error against the clean field; "
        "worst field's mean |error| (mean over runs) and the largest 99.9th percentile of any field and run.",
        "",
        _markdown_table(
            ["arm", "flat pixels", "flat mean |err|", "flat 99.9th pct", f"flat share > {ERROR_THRESHOLD:g}",
             "fields: worst mean |err|", "fields: worst 99.9th pct"],
            [[f"`{r['arm']}`", f"{r['flat']['n']:,}", _num(r["flat"]["mean"], 3), _num(r["flat"]["p999"], 2),
              _num(None if r["flat"]["share_above"] is None else 100 * r["flat"]["share_above"], 3) + "%",
              _num(r["field_mean_worst"], 3), _num(r["field_p999_worst"], 2)] for r in table]
            + [["bicubic", f"{table[0]['flat_bicubic']['n']:,}", _num(table[0]["flat_bicubic"]["mean"], 3),
                _num(table[0]["flat_bicubic"]["p999"], 2),
                _num(None if table[0]["flat_bicubic"]["share_above"] is None
                     else 100 * table[0]["flat_bicubic"]["share_above"], 3) + "%",
                _num(table[0]["field_bicubic_mean"], 3) + " (mean)", "–"]]),
    ]
    return "\n".join(parts) + "\n"


def _save(fig, path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def comparison_plot(comparisons: list[dict], path) -> Path:
    """Each comparison's mean PSNR difference on the photographs with its 95% interval (and each
    seed's mean difference as a dot), and the same on dead leaves."""
    from matplotlib.figure import Figure

    rows = comparisons[::-1]
    fig = Figure(figsize=(12, 0.42 * len(rows) + 1.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    for ax, key, title in ((axes[0], "photos", "test photographs"), (axes[1], "deadleaves", "dead leaves")):
        for i, c in enumerate(rows):
            stats = c[key]
            if not stats:
                continue
            colour = ({"supported": "tab:green", "reversed": "tab:red"}.get(c["verdict"], "tab:gray")
                      if key == "photos" else "tab:blue")
            ax.plot(stats["ci"], [i, i], color=colour, linewidth=2)
            ax.scatter([stats["mean"]], [i], color=colour, zorder=3)
            ax.scatter(list(stats["seed_means"].values()), [i] * stats["seeds"], marker="x", s=14, color="black",
                       alpha=0.5, zorder=2)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"Δ PSNR (dB), A minus B, {title}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{c['a']} − {c['b']}" for c in rows])
    fig.suptitle("Round 2: paired differences, mean and two-way bootstrap 95% interval\n(colour: the verdict "
                 "on the photographs, from the family-level interval; x: each seed's mean)", fontsize="medium")
    return _save(fig, path, 110)


def find_largest_difference(model_a: PlainSR, model_b: PlainSR, pairs, size: int, scale: int,
                            flat_share: float | None = None):
    """(image name, top, left, mean |A - B| luma) of the ``size`` x ``size`` HR window, on a grid of
    ``scale`` pixels, where the two networks' outputs differ most (mean absolute luma difference);
    with ``flat_share``, only among windows of which at least that share is flat (``flat_mask``):
    where artifacts of plain BN would show. None where no window qualifies."""
    best = (-1.0, "", 0, 0)
    for name, lr, hr in pairs:
        diff = np.abs(luma_255(_upscale(model_a, lr, scale, model_a.in_channels))
                      - luma_255(_upscale(model_b, lr, scale, model_b.in_channels)))
        pooled = F.avg_pool2d(torch.from_numpy(diff)[None, None], size, stride=scale)[0, 0].numpy()
        if flat_share is not None:
            flat = flat_mask(luma_255(hr), border=scale).astype(np.float64)
            share = F.avg_pool2d(torch.from_numpy(flat)[None, None], size, stride=scale)[0, 0].numpy()
            pooled = np.where(share >= flat_share, pooled, -1.0)
        i, j = np.unravel_index(np.argmax(pooled), pooled.shape)
        if pooled[i, j] > best[0]:
            best = (float(pooled[i, j]), name, int(i * scale), int(j * scale))
    return None if best[0] < 0 else (best[1], best[2], best[3], best[0])


def difference_figure(out_dir, path, pairs_of_arms=(("repsr", "repsr_batch_bn"), ("repsr", "repsr_no_bn")),
                      size: int = 48, flat_share: float = 0.9) -> Path:
    """For each pair of arms (first common seed), the test-image windows where the two deployed
    networks differ most, anywhere and among mostly flat windows (``flat_share``): HR, bicubic,
    A, B (nearest-neighbour enlarged), their |luma error|, and |A - B| on its own scale."""
    from matplotlib.figure import Figure

    from .experiment import RESULT_FILE, read_result, run_dir

    out_dir = Path(out_dir)
    panels = []
    for a, b in pairs_of_arms:
        seeds = sorted({int(p.parent.name.removeprefix("seed_")) for p in (out_dir / a).glob(f"seed_*/{RESULT_FILE}")}
                       & {int(p.parent.name.removeprefix("seed_")) for p in (out_dir / b).glob(f"seed_*/{RESULT_FILE}")})
        if not seeds:
            continue
        seed = seeds[0]
        models = [PlainSR.load(run_dir(out_dir, arm, seed) / "model.safetensors").eval() for arm in (a, b)]
        scale = models[0].scale
        source = read_result(run_dir(out_dir, a, seed) / RESULT_FILE)["config"]["val_data"]
        pairs = validation_pairs(source, scale)
        side = size - size % scale
        for where, share in (("anywhere", None), (f"flat windows (>= {flat_share:.0%} flat)", flat_share)):
            found = find_largest_difference(*models, pairs, side, scale, share)
            if found is None:
                continue
            name, top, left, mean_diff = found
            _, lr, hr = next(p for p in pairs if p[0] == name)
            panels.append((a, b, seed, where, name, top, left, mean_diff, lr, hr, models, scale, side))
    if not panels:
        raise ValueError(f"no seed has finished runs of both arms of any pair in {out_dir}")
    fig = Figure(figsize=(18, 3.3 * len(panels)), layout="constrained")
    grid = np.atleast_2d(fig.subplots(len(panels), 7))
    for row, (a, b, seed, where, name, top, left, mean_diff, lr, hr, models, scale, side) in zip(grid, panels):
        window = (slice(None), slice(top, top + side), slice(left, left + side))
        outputs = [("HR", hr), ("bicubic", bicubic_upscale(lr, scale))]
        outputs += [(f"{arm} (seed {seed})", _upscale(m, lr, scale, m.in_channels)) for arm, m in zip((a, b), models)]
        crops = [(label, image[window]) for label, image in outputs]
        hr_luma = luma_255(crops[0][1])
        for ax in row:
            ax.set_axis_off()
        for ax, (label, crop) in zip(row[:4], crops):
            ax.imshow(crop.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            extra = "" if label == "HR" else f"\nPSNR {psnr_ssim_y(crop, crops[0][1])[0]:.2f} dB (crop)"
            title = f"{where}: {name}\nx {left}, y {top}" if label == "HR" else label + extra
            ax.set_title(title, fontsize="small")
        errors = [np.abs(luma_255(c) - hr_luma) for _, c in crops[2:]]
        difference = np.abs(luma_255(crops[2][1]) - luma_255(crops[3][1]))
        vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)), 1.0)
        for ax, image in ((row[4], errors[0]), (row[5], errors[1])):
            im = ax.imshow(image, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        row[4].set_title(f"|error| {a}\n0 to {vmax:.1f} grey levels", fontsize="small")
        row[5].set_title(f"|error| {b}\n0 to {vmax:.1f} grey levels", fontsize="small")
        fig.colorbar(im, ax=row[4:6].tolist(), shrink=0.8)
        dmax = max(float(np.percentile(difference, 99.5)), 0.5)
        im = row[6].imshow(difference, cmap="viridis", vmin=0, vmax=dmax, interpolation="nearest")
        row[6].set_title(f"|{a} − {b}|, mean {mean_diff:.2f}\n0 to {dmax:.1f} grey levels", fontsize="small")
        fig.colorbar(im, ax=row[6], shrink=0.8)
    fig.suptitle("Where two arms differ most (test photographs, deployed networks: the window of largest mean "
                 "|A − B| luma, anywhere and among mostly flat windows)")
    return _save(fig, path, 100)


BEGIN_MARK = "<!-- BEGIN GENERATED ROUND 2: `repsr experiment summarize --round 2` rewrites everything up to END GENERATED ROUND 2 -->"
END_MARK = "<!-- END GENERATED ROUND 2 -->"


def render_round2(out_dir=None, results_md=None, figures_dir=None, log=print) -> dict:
    """Writes round 2's tables and figures into its generated section of ``results_md`` (added at
    the end of the file if missing; everything else is kept). Returns {"table", "comparisons",
    "markdown", "figures"}."""
    import os

    from .experiment import _atomic_write, has_matplotlib, load_results, ranking_plot

    out_dir = Path(out_dir or ROUND2.out)
    results_md = Path(results_md or ROUND2.results)
    figures_dir = Path(figures_dir or ROUND2.figures)
    results = [r for r in load_results(out_dir) if r.get("round") == ROUND2.name]
    table = summarize_round2(results)
    comparisons = compare_round2(results)
    figures, notes = {}, []
    if table and has_matplotlib():
        figures["ranking"] = ranking_plot(table, figures_dir / "ranking.png")
        if comparisons:
            figures["comparisons"] = comparison_plot(comparisons, figures_dir / "comparisons.png")
        try:
            figures["difference"] = difference_figure(out_dir, figures_dir / "largest_difference.png")
        except ValueError as e:
            notes.append(f"Difference figure not drawn: {e}.")
    elif table:
        notes.append("Figures not drawn: matplotlib is not installed (`pip install -e \".[experiment]\"`).")
    for figure in figures.values():
        log(f"wrote {figure}")

    def link(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), results_md.resolve().parent)).as_posix()

    titles = {"ranking": "Round 2: arms ranked by PSNR and SSIM", "comparisons": "Round 2: paired differences",
              "difference": "Round 2: where two arms differ most"}
    section = "\n".join([BEGIN_MARK, "", f"Generated from {len(results)} result files in `{out_dir.as_posix()}`.", "",
                         format_round2(table, comparisons),
                         *(f"![{titles[k]}]({link(v)})\n" for k, v in figures.items()),
                         *(f"_{n}_\n" for n in notes), END_MARK])
    text = results_md.read_text(encoding="utf-8") if results_md.is_file() else "# RepSR's claims at a small scale: results\n"
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(END_MARK):]
    else:
        text = text.rstrip("\n") + "\n\n## Second round\n\n" + section + "\n"
    results_md.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(results_md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log(f"wrote {results_md}")
    return {"table": table, "comparisons": comparisons, "markdown": text, "figures": figures}
