"""The trainer on tiny problems: loss goes down, the BN switch happens once at the configured step and
freezes the running statistics, resuming is bitwise exact (across the switch, with EMA, with data
workers), config files and flags, the files a run writes, and 2 processes under torchrun/gloo."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repsr_ext.nets import PlainSR
from repsr_ext.train import (
    TrainConfig,
    Trainer,
    build_network,
    config_from_args,
    load_checkpoint,
    lr_factor,
    main,
    read_config_file,
    train,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and with another process busy on the second
    core every 2-thread op waits for it (measured: 250 it/s on 1 thread, 2 it/s on 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    values = dict(
        preset="M1C4", scale=2, patch_size=16, batch_size=4, iterations=8, lr=2e-3,
        val_every=0, checkpoint_every=0, log_every=1, num_workers=0, progress=False,
        output=str(tmp_path / name),
    )
    return TrainConfig(**{**values, **overrides})


def read_log(output) -> list[dict]:
    with open(Path(output) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_to(config: TrainConfig, until: int | None = None) -> Trainer:
    trainer = Trainer(config)
    try:
        trainer.run(until)
    finally:
        trainer.close()
    return trainer


def test_loss_decreases(tmp_path):
    config = tiny(tmp_path, iterations=100, log_every=10, bn_switch_at=1.0)
    result = train(config)
    losses = [float(r["loss"]) for r in read_log(config.output)]
    assert len(losses) == 10
    assert losses[-1] < 0.6 * losses[0], losses
    assert result.iteration == 100 and result.loss == pytest.approx(losses[-1], abs=1e-6)


def test_bn_switch_once_at_the_configured_iteration(tmp_path):
    trainer = Trainer(tiny(tmp_path, iterations=10, bn_switch_at=0.5))
    try:
        bn = trainer.net.batchnorms()[0]
        trainer.run(until=4)
        before = bn.running_mean.clone()
        trainer.run(until=5)
        assert trainer.net.bn_phase == "batch"
        assert not torch.equal(bn.running_mean, before)  # batch phase: the statistics move
        frozen = [(b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone())
                  for b in trainer.net.batchnorms()]
        affine = bn.weight.detach().clone()
        trainer.run(until=8)
        assert trainer.net.bn_phase == "population"
        for b, (mean, var, count) in zip(trainer.net.batchnorms(), frozen):
            assert torch.equal(b.running_mean, mean) and torch.equal(b.running_var, var)
            assert torch.equal(b.num_batches_tracked, count)
        assert not torch.equal(bn.weight, affine)  # the affine parameters still learn
    finally:
        trainer.close()


@pytest.mark.parametrize("interrupt_at, workers", [(3, 0), (6, 1)])
def test_resume_is_bitwise_exact(tmp_path, interrupt_at, workers):
    """The switch is at step 4: one interruption before it, one after (with a data worker)."""
    options = dict(iterations=8, bn_switch_at=0.5, ema_decay=0.9, schedule="multistep", milestones=(0.5,))
    reference = tiny(tmp_path, "straight", **options)
    train(reference)

    interrupted = tiny(tmp_path, "interrupted", checkpoint_every=interrupt_at, **options)
    run_to(interrupted, until=interrupt_at + 1)  # killed one step after the checkpoint
    assert load_checkpoint(Path(interrupted.output) / "checkpoints" / "last.pt")["iteration"] == interrupt_at
    resumed = tiny(tmp_path, "interrupted", resume="last", num_workers=workers, **options)
    result = train(resumed)
    assert result.iteration == 8

    final_a = load_checkpoint(Path(reference.output) / "checkpoints" / "last.pt")
    final_b = load_checkpoint(Path(resumed.output) / "checkpoints" / "last.pt")
    for part in ("model", "ema"):
        assert final_a[part].keys() == final_b[part].keys()
        for key in final_a[part]:
            assert torch.equal(final_a[part][key], final_b[part][key]), (part, key)
    deployed_a = load_file(Path(reference.output) / "model.safetensors")
    deployed_b = load_file(Path(resumed.output) / "model.safetensors")
    assert all(torch.equal(deployed_a[k], deployed_b[k]) for k in deployed_a)
    # The log keeps one row per step: rows after the checkpoint were rewritten, not duplicated.
    assert [int(r["iteration"]) for r in read_log(resumed.output)] == list(range(1, 9))


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_to_overwrite(tmp_path):
    config = tiny(tmp_path, iterations=2)
    train(config)
    with pytest.raises(ValueError, match="iterations"):
        Trainer(tiny(tmp_path, iterations=4, resume="last"))
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(tiny(tmp_path, iterations=2))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Trainer(tiny(tmp_path, "elsewhere", resume="last"))


def test_amp_without_gpu_warns_and_trains_in_float32(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: amp is used there")
    with pytest.warns(UserWarning, match="amp=True needs a CUDA device"):
        trainer = Trainer(tiny(tmp_path, amp=True))
    trainer.close()
    assert trainer.amp_dtype is None


def test_outputs_and_validation(tmp_path):
    config = tiny(tmp_path, iterations=6, val_every=3, checkpoint_every=3, bn_switch_at=0.5)
    result = train(config)
    out = Path(config.output)
    assert (out / "config.yaml").is_file()
    rows = read_log(out)
    assert list(rows[0]) == ["iteration", "loss", "lr", "psnr", "ssim", "seconds"]
    assert [r["psnr"] != "" for r in rows] == [False, False, True, False, False, True]
    assert 20 < result.bicubic_psnr < 40 and 0.5 < result.bicubic_ssim < 1
    assert result.psnr == pytest.approx(float(rows[-1]["psnr"]), abs=1e-4)

    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # no custom classes inside
    assert state["iteration"] == 6 and state["config"]["iterations"] == 6
    assert state["sampler"] == {"seed": 0, "position": 6 * 4}

    # The deployed file is the trained network, merged: equal to it in eval mode.
    net = build_network(config)
    net.load_state_dict(state["model"])
    assert net.bn_phase == "population"
    plain = PlainSR.load(out / "model.safetensors")
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(plain(x), net.eval()(x), atol=1e-5)


def test_config_files_flags_and_unknown_keys(tmp_path):
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("preset: M2C8\niterations: 1e3\nblock_options: {expansion: 3}\nbetas: [0.8, 0.9]\n")
    toml_file = tmp_path / "cfg.toml"
    toml_file.write_text(
        'preset = "M2C8"\nschedule = "multistep"\nmilestones = [0.25, 0.5]\n[block_options]\nbn = "expand"\n'
    )

    config = TrainConfig.from_file(yaml_file)
    assert config.iterations == 1000 and config.block_options == {"expansion": 3} and config.betas == (0.8, 0.9)
    assert TrainConfig.from_file(toml_file).milestones == (0.25, 0.5)
    assert read_config_file(toml_file)["block_options"] == {"bn": "expand"}

    config = config_from_args(["--config", str(yaml_file), "--iterations", "2000", "--block", "dbb",
                               "--block-options", "{}", "--no-augment", "--patch_size", "32"])
    assert (config.iterations, config.block, config.block_options, config.augment, config.patch_size) == \
        (2000, "dbb", {}, False, 32)
    assert config.preset == "M2C8"  # from the file

    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: M2C8\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rate' in .*bad.yaml"):
        TrainConfig.from_file(bad)
    bad.write_text("batch_sise: 8\n")
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        TrainConfig.from_file(bad)
    with pytest.raises(ValueError, match="'patch_size': must be a multiple of scale"):
        TrainConfig(patch_size=30, scale=4)
    with pytest.raises(ValueError, match="'iterations': expected int"):
        TrainConfig(iterations="many")
    assert main(["--config", str(bad)]) == 2


def test_resume_from_the_command_line_takes_the_checkpoint_settings(tmp_path):
    config = tiny(tmp_path, iterations=3, checkpoint_every=2)
    run_to(config, until=2)
    resumed = config_from_args(["--output", config.output, "--resume"])
    assert resumed.iterations == 3 and resumed.preset == "M1C4" and resumed.resume == "last"


def test_lr_schedules():
    cosine = TrainConfig(iterations=100, lr=1e-3, min_lr=1e-5)
    assert lr_factor(cosine, 0) == pytest.approx(1)
    assert lr_factor(cosine, 50) == pytest.approx((1 + 0.01) / 2)
    assert lr_factor(cosine, 100) == pytest.approx(0.01)
    steps = TrainConfig(iterations=100, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(steps, i) for i in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_two_processes_with_torchrun(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "repsr_ext.train", "--preset", "M1C4", "--scale", "2", "--patch-size", "16",
        "--batch-size", "4", "--iterations", "4", "--bn-switch-at", "0.5", "--val-every", "4",
        "--log-every", "2", "--no-progress", "--output", str(out),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished 4 iterations" in done.stdout
    assert done.stdout.count("finished") == 1  # rank 0 alone reports
    plain = PlainSR.load(out / "model.safetensors")
    assert plain.scale == 2
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and state["sampler"]["position"] == 16
    assert [r["iteration"] for r in read_log(out)] == ["2", "4"]
