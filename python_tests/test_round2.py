"""The second round of the paper-claims grid: its training options (Y networks, zero-init
branches, final decay, precise BN, training-form weights), its data (folds, dead leaves), its
evaluation (flat regions, fields), its statistics (checked on synthetic data with a known answer)
and the runner (a tiny grid in two worker processes, resumed)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repsr_ext import data, experiment, stats, train
from repsr_ext import experiment_round2 as r2
from repsr_ext.nets import RepSRNet

from helpers import randomize_

TINY = dict(preset="M1C4", patch_size=32, batch_size=2, checkpoint_every=2, log_every=1)


# --- data ------------------------------------------------------------------------------------------


def test_folds_partition_every_photograph():
    fold0, fold1 = map(set, data.FOLDS)
    assert not fold0 & fold1
    assert fold0 | fold1 == set(data.EMBEDDED_NAMES)
    names = [n for n, _ in data.validation_images("embedded:fold1")]
    assert names == list(data.FOLDS[1])
    with pytest.raises(ValueError, match="unknown embedded split 'fold2'"):
        data.validation_images("embedded:fold2")


def test_dead_leaves_deterministic_and_image_like():
    a, b = data.dead_leaves_image(64, seed=3), data.dead_leaves_image(64, seed=3)
    c = data.dead_leaves_image(64, seed=4)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Occluding discs: large areas of one colour (most horizontal neighbours equal), many colours.
    same = np.all(a[:, 1:] == a[:, :-1], axis=2).mean()
    assert 0.5 < same < 0.99
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20


def test_y_model_on_rgb_matches_bicubic_when_the_model_is_bicubic():
    # Y is a linear mix of R, G, B, and so is the way back: a "model" that upscales Y bicubically
    # must give the bicubic upscaling of every channel (no clamping needed: a mid-range image).
    torch.manual_seed(0)
    rgb = 0.25 + 0.5 * torch.rand(2, 3, 12, 10)

    def bicubic(t):
        return F.interpolate(t, scale_factor=3, mode="bicubic", align_corners=False)

    out = data.upscale_rgb_with_y_model(bicubic, rgb, 3)
    expected = bicubic(rgb).clamp(0, 1)
    assert out.shape == (2, 3, 36, 30)
    assert torch.allclose(out, expected, atol=2e-6)
    luma = data.rgb_to_luma(rgb)
    assert torch.allclose(luma[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2], atol=1e-6)


# --- training options ------------------------------------------------------------------------------


def test_final_decay_schedule():
    config = train.TrainConfig(schedule="constant", final_decay=0.2, lr=1e-3, min_lr=1e-5, iterations=100,
                               device="cpu")
    floor = 1e-5 / 1e-3
    assert train.lr_factor(config, 0) == 1.0 and train.lr_factor(config, 80) == 1.0
    assert train.lr_factor(config, 90) == pytest.approx(floor + (1 - floor) * 0.5)
    assert train.lr_factor(config, 100) == pytest.approx(floor)
    factors = [train.lr_factor(config, i) for i in range(80, 101)]
    assert all(x >= y for x, y in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="final_decay"):
        train.TrainConfig(schedule="cosine", final_decay=0.1)


@pytest.mark.parametrize("block", ["plain", "repvgg", "acb", "dbb", "ecb", "repsr"])
def test_zero_init_starts_every_block_type_near_the_upsampled_input(block):
    torch.manual_seed(1)
    x = torch.rand(4, 1, 16, 16)
    nearest = F.interpolate(x, scale_factor=2, mode="nearest")
    deviation = {}
    for init in ("default", "zero"):
        torch.manual_seed(2)
        config = train.TrainConfig(preset="M2C8", scale=2, block=block, in_channels=1, branch_init=init, device="cpu")
        net = train.build_network(config).train()
        with torch.no_grad():
            deviation[init] = float((net(x) - nearest).abs().mean())
    # Zero-init: the network starts as (almost) its nearest-upsampled input, the same for every
    # block type; the default init does not.
    assert deviation["zero"] < 0.02 * float(x.mean())
    assert deviation["zero"] < deviation["default"] / 5


def test_zero_init_network_still_fuses_exactly():
    torch.manual_seed(3)
    config = train.TrainConfig(preset="M2C8", scale=2, block="repsr", block_options={"expansion": 2, "bn": "both"},
                               in_channels=1, branch_init="zero", device="cpu")
    net = train.build_network(config).double()
    # A few training-mode steps give the BNs statistics and move the switched-off scales.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(3):
        x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
        loss = (net(x) - F.interpolate(x, scale_factor=2, mode="bicubic")).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    x = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    plain = net.reparameterize()
    with torch.no_grad():
        assert torch.allclose(plain.double()(x), net(x), atol=1e-10)


def _precise_reference(trainer: train.Trainer) -> list[torch.Tensor]:
    """The running means precise BN must produce: the average of each BN's batch means over the
    precise stream's batches, the weights as they were (hooks on a copy of the network)."""
    import copy

    net = copy.deepcopy(trainer.net).train()
    bns = net.batchnorms()
    sums = [torch.zeros(bn.num_features, dtype=torch.float64) for bn in bns]

    def hook(k):
        def add_batch_mean(module, inputs, output):
            sums[k].add_(inputs[0].double().mean((0, 2, 3)))  # returns None: the output is kept
        return add_batch_mean

    hooks = [bn.register_forward_hook(hook(k)) for k, bn in enumerate(bns)]
    sampler = data.InfiniteSampler(len(trainer.train_set), trainer.config.seed * train.PRECISE_BN_STREAM + 1)
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_size=trainer.local_batch, sampler=sampler,
                                         generator=torch.Generator())
    batches = trainer.config.bn_precise_batches
    with torch.no_grad():
        for _, (lr, _hr) in zip(range(batches), loader):
            net(data.rgb_to_luma(lr))
    for h in hooks:
        h.remove()
    return [s / batches for s in sums]


def test_precise_bn_is_the_exact_average_of_batch_statistics(tmp_path):
    config = train.TrainConfig(**{**TINY, "checkpoint_every": 0}, block="repsr",
                               block_options={"expansion": 2, "bn": "both"}, in_channels=1, branch_init="zero",
                               data="embedded:fold0", val_data="embedded:fold1", bn_switch_at=0.5,
                               bn_precise_batches=3, iterations=4, val_every=0, output=str(tmp_path / "run"),
                               device="cpu", progress=False)
    trainer = train.Trainer(config)
    try:
        trainer.run(until=2)  # the switch happens at iteration 2, before step 3
        expected = _precise_reference(trainer)
        trainer._switch_bn()
        for bn, mean in zip(trainer.net.batchnorms(), expected):
            assert bn.uses_population_stats
            assert torch.allclose(bn.running_mean.double(), mean, atol=1e-6)
    finally:
        trainer.close()


def test_training_weights_round_trip_and_corrupt_file(tmp_path):
    config = train.TrainConfig(preset="M2C8", scale=2, block="dbb", in_channels=1, device="cpu")
    net = randomize_(train.build_network(config), seed=5)
    net.batchnorms()[0].switch_to_population()
    path = tmp_path / train.TRAINING_WEIGHTS
    train.save_training_weights(net, path)
    back = train.load_training_weights(config, path).eval()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), net.eval()(x))
    assert back.batchnorms()[0].uses_population_stats and not back.batchnorms()[1].uses_population_stats
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(path.name)):
        train.load_training_weights(config, path)
    other = train.TrainConfig(preset="M2C8", scale=2, block="acb", in_channels=1, device="cpu")
    train.save_training_weights(net, path)
    with pytest.raises(ValueError, match="does not hold the weights"):
        train.load_training_weights(other, path)


# --- evaluation helpers ------------------------------------------------------------------------------


def test_flat_mask_finds_flat_unclipped_interior():
    rng = np.random.default_rng(0)
    image = np.full((40, 60), 120.0) + rng.normal(0, 0.3, (40, 60))
    image[:, 30:] = rng.uniform(0, 255, (40, 30))  # textured right half
    image[:10, :20] = 0.0                          # a clipped (black) corner
    mask = r2.flat_mask(image, border=4)
    assert mask[20, 15] and not mask[20, 45] and not mask[5, 5] and not mask[2, 25]
    assert not mask[:, 26:].any()  # every 9 x 9 window reaching the texture is not flat
    assert mask[15:36, 9:26].all()


def test_histogram_percentile_matches_numpy_within_a_bin():
    errors = np.abs(np.random.default_rng(1).normal(0, 2.0, 100_000))
    counts = r2.error_histogram(errors)
    for q in (50, 99, 99.9):
        assert abs(r2.histogram_percentile(counts, q) - np.percentile(errors, q)) <= r2.HIST_STEP
    parts = [r2.error_stats(errors[:30_000]), r2.error_stats(errors[30_000:])]
    pooled = r2.pooled_error_stats(parts)
    whole = r2.error_stats(errors)
    assert pooled["n"] == whole["n"]
    assert pooled["mean"] == pytest.approx(whole["mean"])
    assert pooled["share_above"] == pytest.approx(whole["share_above"])
    assert abs(pooled["p999"] - whole["p999"]) <= r2.HIST_STEP


# --- statistics, on data with a known answer ----------------------------------------------------------


def test_sign_flip_test_exact_values():
    assert stats.sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert stats.sign_flip_test([0.1] * 6) == pytest.approx(2 / 64)
    # brute force on a mixed sample
    values = np.array([0.3, -0.1, 0.25, 0.05])
    flips = [abs(np.mean(np.array(s) * values)) >= abs(values.mean()) - 1e-12
             for s in itertools.product((1, -1), repeat=4)]
    assert stats.sign_flip_test(values) == pytest.approx(np.mean(flips))


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_seed_t_interval_matches_the_formula():
    values = [0.1, 0.3, 0.2, 0.5, 0.4]
    low, high = stats.seed_t_interval(values, 0.95)
    half = 2.776445105 * np.std(values, ddof=1) / math.sqrt(5)  # t(4) 97.5% quantile
    assert (low, high) == pytest.approx((0.3 - half, 0.3 + half))


def _synthetic_cells(effect: float, rng, seeds=6, images=(10, 9), seed_sd=0.05, image_sd=0.1, noise=0.02):
    cells = []
    for s in range(seeds):
        fold = s % 2
        seed_effect = rng.normal(0, seed_sd)
        for i in range(images[fold]):
            image_effect = rng.normal(0, image_sd)
            cells.append(stats.Cell(s, f"f{fold}_{i}", fold, effect + seed_effect + image_effect + rng.normal(0, noise)))
    return cells


def test_two_way_bootstrap_covers_a_known_effect_and_null():
    rng = np.random.default_rng(7)
    covered, supported_null, supported_effect = 0, 0, 0
    trials = 40
    for _ in range(trials):
        null = stats.compare_cells(_synthetic_cells(0.0, rng), samples=2000, family=15)
        effect = stats.compare_cells(_synthetic_cells(0.4, rng), samples=2000, family=15)
        low, high = null["ci"]
        covered += low <= 0 <= high
        supported_null += stats.verdict(null["ci_family"]) == "supported"
        supported_effect += stats.verdict(effect["ci_family"]) == "supported"
    # The 95% interval covers the true (zero) mean most of the time despite the image and seed
    # effects; at the family level a null effect is (almost) never called supported, a large one is.
    assert covered >= 0.8 * trials
    assert supported_null <= 1
    assert supported_effect >= 0.9 * trials


def test_bootstrap_interval_tracks_the_seed_spread():
    # The same image effects, more seed spread: the two-way interval widens (a bootstrap over
    # cells alone would not see the seeds).
    rng = np.random.default_rng(3)
    narrow = stats.compare_cells(_synthetic_cells(0.1, rng, seed_sd=0.0), samples=2000)
    rng = np.random.default_rng(3)
    wide = stats.compare_cells(_synthetic_cells(0.1, rng, seed_sd=0.3), samples=2000)
    assert (wide["ci"][1] - wide["ci"][0]) > 1.5 * (narrow["ci"][1] - narrow["ci"][0])


def test_padding_share_by_brute_force():
    for patch, depth in ((16, 6), (32, 6), (10, 3)):
        shares = []
        for k in range(1, depth + 1):
            i = np.arange(patch)
            near = (i < k) | (i > patch - 1 - k)
            shares.append((near[:, None] | near[None, :]).mean())
        assert stats.padding_share(patch, depth) == pytest.approx(np.mean(shares))


# --- the runner --------------------------------------------------------------------------------------


def test_tiny_round2_grid_in_two_workers_resumes_and_summarizes(tmp_path):
    out = tmp_path / "runs"
    arms = ["plain", "repsr"]
    results = experiment.run_grid(out, seeds=2, iterations=4, only=arms, overrides=TINY, workers=2, grid="2",
                                  log=lambda _: None)
    assert sorted((r["arm"], r["seed"]) for r in results) == sorted((a, s) for a in arms for s in (0, 1))
    for r in results:
        assert r["round"] == "round2" and r["config"]["in_channels"] == 1
        assert r["config"]["data"] == f"embedded:fold{r['seed'] % 2}"
        assert {i["image"] for i in r["images"]} == set(data.FOLDS[1 - r["seed"] % 2])
        assert len(r["deadleaves"]) == len(data.DEAD_LEAVES_SEEDS)
        assert len(r["fields"]) == 2 * len(r2.FIELD_LEVELS)
        assert r["flat"]["n"] == sum(i["flat"]["n"] for i in r["images"]) > 0
        assert ("batch_stat_images" in r) == (r["arm"] != "plain")
        assert 0 < r["initial_loss"] < 0.2
        assert (out / r["arm"] / f"seed_{r['seed']}" / train.TRAINING_WEIGHTS).is_file()
    # Zero-init: every arm starts from about the same loss.
    losses = [r["initial_loss"] for r in results if r["seed"] == 0]
    assert max(losses) < 1.3 * min(losses)
    # Resume: a removed result is made again from the kept checkpoint; the others are skipped.
    target = out / "repsr" / "seed_1"
    again = experiment.run_grid(out, seeds=2, iterations=4, only=arms, overrides=TINY, workers=1, grid="2",
                                log=lambda _: None)
    assert [r["finished"] for r in again] == [r["finished"] for r in results]
    (target / "result.json").unlink()
    lines = []
    redone = experiment.run_grid(out, seeds=2, iterations=4, only=arms, overrides=TINY, grid="2",
                                 keep_checkpoints=True, log=lines.append)
    assert len(redone) == len(results) and any("repsr seed 1: training" in line for line in lines)
    rendered = r2.render_round2(out, tmp_path / "R.md", tmp_path / "fig", log=lambda _: None)
    text = (tmp_path / "R.md").read_text()
    assert r2.BEGIN_MARK in text and "`repsr`" in text and "family interval" in text
    assert [(c["a"], c["b"]) for c in rendered["comparisons"]] == [("repsr", "plain")]
    assert rendered["comparisons"][0]["photos"]["seeds"] == 2
