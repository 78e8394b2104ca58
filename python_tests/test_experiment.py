"""The experiment runner on a tiny grid (M1C4, x4, 16 px patches, batch 2, a few iterations): result
files, skipping finished runs, resuming an interrupted one bitwise exactly, the summary table with
mean/std over seeds, RESULTS.md regeneration that keeps the hand-written part, the figures, and
the `repsr experiment` command. The real grid (experiments/README.md) is never started here."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repsr_ext import cli, experiment
from repsr_ext.experiment import ARMS, BASE
from repsr_ext.data import validation_pairs
from repsr_ext.metrics import rgb_to_y
from repsr_ext.nets import RepSRNet
from repsr_ext.train import Trainer, load_checkpoint

TINY = dict(preset="M1C4", patch_size=16, batch_size=2, checkpoint_every=1, log_every=1)
TINY_ARMS = ["repsr", "repsr_batch_bn"]  # the pair the smooth-region figure compares
ITERATIONS = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads (see test_train.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 arms x 2 seeds, run once for the module: (out_dir, results)."""
    out = tmp_path_factory.mktemp("grid") / "runs"
    lines = []
    results = experiment.run_grid(out, seeds=2, iterations=ITERATIONS, only=TINY_ARMS, overrides=TINY,
                                  threads=1, log=lines.append)  # restores the thread count after
    assert any("4 to run" in line for line in lines)
    return out, results


def test_arms_share_the_deployed_network_and_setup():
    """Only the block, its options and the BN switch differ between arms; the deployed network
    (M4C16 x4) is the same size in each."""
    assert set(ARMS) >= {"plain", "repvgg", "acb", "dbb", "ecb", "repsr", "repsr_switch0.5",
                         "repsr_batch_bn", "repsr_no_bn"}
    sizes = set()
    for name, arm in ARMS.items():
        assert set(arm) == {"block", "block_options", "bn_switch_at"}, name
        config = experiment.run_config("unused", name, 0)
        for key, value in BASE.items():
            assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), (name, key)
        net = RepSRNet.preset(config.preset, config.scale, block=config.block, act=config.act, **config.block_options)
        sizes.add(sum(p.numel() for p in net.eval().reparameterize().parameters()))
    assert sizes == {16_768}
    assert ARMS["repsr"]["bn_switch_at"] < 1 and ARMS["repsr_switch0.5"]["bn_switch_at"] == 0.5
    assert ARMS["repsr_batch_bn"]["bn_switch_at"] == 1.0 and ARMS["repsr_no_bn"]["block_options"]["bn"] == "none"
    with pytest.raises(ValueError, match="overrides may not set"):
        experiment.run_config("unused", "repsr", 0, overrides={"bn_switch_at": 0.3})
    with pytest.raises(ValueError, match="unknown arm"):
        experiment.run_grid("unused", 1, 3, only=["nope"])


def test_grid_writes_result_files(grid):
    out, results = grid
    assert sorted((r["arm"], r["seed"]) for r in results) == sorted((a, s) for a in TINY_ARMS for s in (0, 1))
    for result in results:
        folder = Path(out) / result["arm"] / f"seed_{result['seed']}"
        on_disk = json.loads((folder / "result.json").read_text())
        assert on_disk == json.loads(json.dumps(result))
        assert (folder / "model.safetensors").is_file()
        assert not (folder / "checkpoints" / "last.pt").exists()  # removed once finished
        config = result["config"]
        assert config["preset"] == "M1C4" and config["scale"] == 4 and config["iterations"] == ITERATIONS
        assert config["block"] == "repsr" and config["seed"] == result["seed"]
        assert config["bn_switch_at"] == ARMS[result["arm"]]["bn_switch_at"]
        assert [i["image"] for i in result["images"]] == ["astronaut", "coffee", "chelsea", "camera"]
        for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            assert result[key] == pytest.approx(sum(i[key] for i in result["images"]) / 4)
        assert 20 < result["bicubic_psnr"] < 40 and 0 < result["ssim"] <= 1
        assert result["seconds_per_iteration"] > 0 and result["iterations"] == ITERATIONS
        assert result["deployed_params"] == results[0]["deployed_params"]  # same deployed size in every arm
        assert result["training_params"] > result["deployed_params"]
        assert result["resumed_at"] == []


def test_rerun_skips_finished_runs(grid, monkeypatch):
    out, results = grid
    mtimes = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment, "run_one", no_training)
    lines = []
    again = experiment.run_grid(out, seeds=2, iterations=ITERATIONS, only=TINY_ARMS, overrides=TINY, log=lines.append)
    def canonical(runs):
        return sorted(json.dumps(r, sort_keys=True) for r in runs)

    assert canonical(again) == canonical(results)
    assert sum("skipped" in line for line in lines) == 4
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == mtimes
    # A finished run made with other settings is not silently taken for this grid's.
    with pytest.raises(ValueError, match="other settings"):
        experiment.run_grid(out, seeds=1, iterations=ITERATIONS + 1, only=TINY_ARMS, overrides=TINY, log=lines.append)


def test_interrupted_run_resumes_exactly(tmp_path):
    """Killed after step 2 of 4 (the BN switch is at step 3): the grid resumes it from its checkpoint
    and ends with the same deployed weights as an uninterrupted run."""
    iterations = 4
    config = experiment.run_config(tmp_path / "a", "repsr", 0, iterations, TINY)
    trainer = Trainer(config)
    try:
        trainer.run(until=2)
    finally:
        trainer.close()
    checkpoint = Path(config.output) / "checkpoints" / "last.pt"
    assert load_checkpoint(checkpoint)["iteration"] == 2 and not (Path(config.output) / "result.json").exists()
    assert [status for *_, status in experiment.plan(tmp_path / "a", [0], iterations, ["repsr"], TINY)] == ["partial"]

    lines = []
    (resumed,) = experiment.run_grid(tmp_path / "a", [0], iterations, ["repsr"], overrides=TINY, log=lines.append)
    assert resumed["resumed_at"] == [2] and resumed["iterations"] == iterations
    assert any("resuming at iteration 2" in line for line in lines)
    (straight,) = experiment.run_grid(tmp_path / "b", [0], iterations, ["repsr"], overrides=TINY, log=lines.append)
    a = load_file(Path(tmp_path / "a" / "repsr" / "seed_0" / "model.safetensors"))
    b = load_file(Path(tmp_path / "b" / "repsr" / "seed_0" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["psnr"] == straight["psnr"] and resumed["images"] == straight["images"]


def test_summarize_mean_and_std(grid):
    out, results = grid
    table = experiment.summarize(out)
    assert [row["arm"] for row in table] == TINY_ARMS  # grid order
    for row in table:
        mine = [r for r in results if r["arm"] == row["arm"]]
        psnrs = torch.tensor([r["psnr"] for r in mine], dtype=torch.float64)
        assert row["runs"] == 2 and row["seeds"] == [0, 1]
        assert row["psnr_mean"] == pytest.approx(psnrs.mean().item())
        assert row["psnr_std"] == pytest.approx(psnrs.std().item())  # sample std, ddof = 1
        assert row["ssim_std"] is not None and row["seconds_per_iteration"] > 0
        assert row["deployed_params"] == [results[0]["deployed_params"]]
        assert set(row["image_psnr"]) == {"astronaut", "coffee", "chelsea", "camera"}
    (comparison,) = experiment.compare(table)
    assert (comparison["a"], comparison["b"], comparison["seeds"]) == ("repsr", "repsr_batch_bn", 2)
    markdown = experiment.format_tables(table)
    assert "`repsr_batch_bn`" in markdown and "±" in markdown and "in every arm" in markdown


def test_results_md_keeps_the_reading(grid, tmp_path):
    out, _ = grid
    results_md, figures = tmp_path / "RESULTS.md", tmp_path / "figures"
    rendered = experiment.render_results(out, results_md, figures, log=lambda _: None)
    text = results_md.read_text()
    assert experiment.BEGIN_MARK in text and experiment.END_MARK in text and "TO BE WRITTEN" in text
    assert text.index(experiment.END_MARK) < text.index("## Reading")
    assert "`repsr`" in text and rendered["table"]
    # A person writes the reading; summarizing again changes only the generated section.
    human = text.replace("**TO BE WRITTEN**", "At this scale the switch helps by a hair.")
    human = "Intro kept.\n\n" + human
    results_md.write_text(human)
    experiment.render_results(out, results_md, figures, log=lambda _: None)
    again = results_md.read_text()
    assert again.startswith("Intro kept.") and "At this scale the switch helps by a hair." in again
    assert again.count(experiment.BEGIN_MARK) == 1


def test_figures(grid, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    out, _ = grid
    rendered = experiment.render_results(out, tmp_path / "RESULTS.md", tmp_path / "figures", log=lambda _: None)
    assert set(rendered["figures"]) == {"ranking", "smooth"}
    for path in rendered["figures"].values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    text = (tmp_path / "RESULTS.md").read_text()
    assert "(figures/ranking.png)" in text and "(figures/smooth_region.png)" in text


def test_smooth_crop_is_flat():
    pairs = validation_pairs("embedded", 4)
    name, top, left = experiment.find_smooth_crop(pairs, 64, 4)
    hr = next(h for n, _, h in pairs if n == name)
    crop = hr[:, top:top + 64, left:left + 64]
    assert top % 4 == 0 and left % 4 == 0 and crop.shape[1:] == (64, 64)
    assert crop.std() < 0.5 * hr.std()
    low, high = experiment.SMOOTH_MEAN_Y
    assert low <= rgb_to_y(crop).mean() <= high  # a mid-tone area (the sky of 'camera'), not a black coat


def test_cli(grid, tmp_path, capsys):
    out, _ = grid
    assert cli.main(["experiment", "run", "--out", str(out), "--seeds", "2", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "done     repsr " in listing and "todo     plain " in listing and "4 of 18 runs done" in listing
    results_md = tmp_path / "R.md"
    assert cli.main(["experiment", "summarize", "--out", str(out), "--results", str(results_md),
                     "--figures", str(tmp_path / "fig")]) == 0
    assert "`repsr_batch_bn`" in results_md.read_text()
    assert cli.main(["experiment", "run", "--only", "nope"]) == 1
    assert "unknown arm 'nope'; arms of round1" in capsys.readouterr().err
    assert cli.main(["experiment", "run", "--round", "2", "--only", "repsr_affine", "--dry-run",
                     "--out", str(tmp_path / "r2")]) == 0
    assert "todo     repsr_affine" in capsys.readouterr().out
    assert cli.main(["experiment", "--help"]) == 0
    assert "summarize" in capsys.readouterr().out


def test_killed_between_training_and_result(tmp_path):
    """Trained to the end but no result.json yet (killed while evaluating): the grid finishes it
    from the final checkpoint without training again."""
    config = experiment.run_config(tmp_path, "repsr_no_bn", 0, 2, TINY)
    trainer = Trainer(config)
    try:
        trainer.run()
    finally:
        trainer.close()
    (result,) = experiment.run_grid(tmp_path, [0], 2, ["repsr_no_bn"], overrides=TINY, log=lambda _: None)
    assert result["resumed_at"] == [2] and result["iterations"] == 2


def test_summary_without_matplotlib(grid, tmp_path, monkeypatch):
    out, _ = grid
    monkeypatch.setattr(experiment, "has_matplotlib", lambda: False)
    rendered = experiment.render_results(out, tmp_path / "RESULTS.md", tmp_path / "figures", log=lambda _: None)
    assert rendered["figures"] == {} and not (tmp_path / "figures").exists()
    assert "matplotlib is not installed" in (tmp_path / "RESULTS.md").read_text()
    empty = experiment.render_results(tmp_path / "none", tmp_path / "EMPTY.md", tmp_path / "figures",
                                      log=lambda _: None)
    assert empty["table"] == [] and "No finished runs yet" in (tmp_path / "EMPTY.md").read_text()


def test_deployed_network_is_shared_and_timed(grid, tmp_path):
    """The summary's deployed-network line: parameters and multiply-adds read from the files (checked
    against the tensors themselves), one architecture across runs, and a time for each engine."""
    out, results = grid
    facts = experiment.deployed_network(out, results, lr_size=(12, 20), repeats=1)
    tensors = load_file(Path(out) / "repsr" / "seed_0" / "model.safetensors")
    conv_weights = [t for t in tensors.values() if t.dim() == 4]
    assert facts["files"] == len(results) and facts["params"] == results[0]["deployed_params"]
    assert facts["macs_per_lr_pixel"] == sum(w.numel() for w in conv_weights)
    assert facts["fused_seconds"] > 0 and facts["eager_seconds"] > 0
    line = experiment.format_deployed(facts)
    assert f"{facts['params']:,} parameters" in line and "12x20 -> 48x80" in line
    assert "ms" not in experiment.format_deployed(experiment.deployed_network(out, results, lr_size=None))

    # A run whose deployed network has another shape makes the grid not like-for-like: said loudly.
    odd = tmp_path / "odd"
    for r in results:
        folder = experiment.run_dir(odd, r["arm"], r["seed"])
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(
            (experiment.run_dir(out, r["arm"], r["seed"]) / "model.safetensors").read_bytes())
    other = RepSRNet.preset("M1C8", 4).eval().reparameterize()
    other.save(experiment.run_dir(odd, "repsr", 0) / "model.safetensors")
    with pytest.raises(ValueError, match="differ between runs"):
        experiment.deployed_network(odd, results, lr_size=None)
