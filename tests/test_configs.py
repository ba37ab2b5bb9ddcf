"""Every shipped config loads, resolves, validates and builds its model (no training); the
parametrised Conv-n config and its aliases agree; every field is documented; invalid values
fail with one clear line."""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from mpt_jax import cli, config_fields, config_utils, train
from mpt_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) != "common.py")  # the presets, not a config
INPUT_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "mnist": (28, 28, 1),
                "imagenet2012": (224, 224, 3)}
HEADLINE = ["cifar10_conv2", "cifar10_conv4", "cifar10_conv6", "cifar10_conv8",
            "cifar10_conv2_binact", "cifar10_conv4_binact", "cifar10_conv6_binact",
            "cifar10_conv8_binact", "cifar10_vgg_small", "cifar10_wide_vgg_small_binact",
            "cifar10_resnet18", "imagenet_wrn50", "imagenet_wrn34_binact", "default", "smoke"]


def load(path):
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_configs_exist():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    assert set(HEADLINE) <= names, sorted(set(HEADLINE) - names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_loads_validates_and_builds(path):
    module = load(path)
    name = os.path.basename(path)[:-3]
    assert f"--config=configs/{name}.py" in module.__doc__  # the exact command
    if name.startswith(("cifar10_vgg", "cifar10_wide", "cifar10_resnet18", "imagenet")):
        assert re.search(r"\d+\.\d+ %", module.__doc__), "headline configs state the paper number"
    config = config_utils.resolve(module.get_config())
    config_utils.validate(config, device_count=8)
    num_classes = config_utils.num_classes_hint(config)
    model = train.create_model(config, num_classes)
    shape = INPUT_SHAPES[config.dataset]
    out = jax.eval_shape(lambda: model.init_with_output(
        {"params": jax.random.PRNGKey(0)}, jnp.zeros((2, *shape)), train=False)[0])
    assert out.shape == (2, num_classes)


# Each file of the Conv-n family and the parameters of configs/cifar10_conv.py it stands for.
CONV_ALIASES = {f"cifar10_conv{n}{suffix}": f"depth={n}{param}"
                for n in (2, 4, 6, 8) for suffix, param in (("", ""), ("_binact", ",binact"))}
CONV_ALIASES["cifar10_conv8_wide"] = "depth=8,scale_fan=none"


@pytest.mark.parametrize("name", sorted(CONV_ALIASES))
def test_conv_alias_is_its_parametrised_config(name):
    family = load(os.path.join(ROOT, "configs", "cifar10_conv.py"))
    alias = load(os.path.join(ROOT, "configs", f"{name}.py"))
    arg = CONV_ALIASES[name]
    assert alias.get_config().to_dict() == family.get_config(arg).to_dict()
    assert f"--config=configs/cifar10_conv.py:{arg}" in alias.__doc__  # both commands named


def test_conv_parameters():
    family = load(os.path.join(ROOT, "configs", "cifar10_conv.py"))
    c = family.get_config("depth=6, binact ,width=1.5")
    assert (c.model, c.optimizer, c.learning_rate, c.weight_decay) == ("conv6_binact", "adam",
                                                                        0.1, 1e-4)
    assert (c.model_options.width_mult, c.scale_fan, c.keep_fraction) == (1.5, "reference", 0.5)
    c = family.get_config("depth=2")
    assert (c.model, c.optimizer, c.momentum, c.model_options.width_mult) == ("conv2", "sgd",
                                                                               0.9, 1.0)
    assert family.get_config().model == "conv4"  # the default depth
    assert family.get_config("depth=8,scale_fan=kept").scale_fan == "kept"
    for bad in ("depth=5", "depth", "binact=1", "width=0", "width=x", "wdith=2", "scale_fan="):
        with pytest.raises(ValueError, match=re.escape(repr(bad.strip()))):
            family.get_config(bad)


def test_parametrised_config_on_the_command_line(tmp_path, monkeypatch, capsys):
    from mpt_jax import main

    monkeypatch.chdir(ROOT)  # configs/*.py import configs/common.py from the repository root
    assert main.run(["m", "--config=configs/cifar10_conv.py:depth=6,binact", "--help"]) == 0
    out = capsys.readouterr().out
    assert "  --config.model='conv6_binact'\n" in out and "  --config.optimizer='adam'\n" in out
    assert main.run(["m", "--config=configs/cifar10_conv.py:depth=3",
                     f"--workdir={tmp_path}/w"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot load the config of --config=configs/cifar10_conv.py:depth=3: "
                   "cannot use 'depth=3'; the parameters are depth=2|4|6|8, binact, "
                   "width=<multiplier>, scale_fan=<none|reference|kept>"), err
    assert not os.path.exists(tmp_path / "w")
    # Members of the family get their own default workdir.
    assert cli.default_workdir("configs/cifar10_conv.py:depth=4,binact") == os.path.join(
        "runs", "cifar10_conv_depth-4_binact")
    assert cli.default_workdir("configs/cifar10_conv4.py") == os.path.join("runs", "cifar10_conv4")


def test_cifar_configs_use_shared_archive_without_tensorflow():
    for path in CONFIGS:
        if os.path.basename(path).startswith("cifar10_"):
            c = load(path).get_config()
            assert c.data_dir == "../shared/data/cifar10_train_jpeg.tar.gz"
            assert c.input_pipeline == "in_memory"


def test_paper_values_of_imagenet_mpt11():
    c = config_utils.resolve(load(os.path.join(ROOT, "configs", "imagenet_wrn34_binact.py")).get_config())
    assert (c.optimizer, c.learning_rate, c.schedule, c.warmup_epochs, c.num_epochs) == \
        ("adam", 2.56e-4, "cosine", 5, 250)
    assert (c.keep_fraction, c.label_smoothing, c.batch_size) == (0.4, 0.1, 256)


def test_baseline_and_plus_bn_selection():
    path = os.path.join(ROOT, "configs", "cifar10_conv4.py")
    c = load(path).get_config()
    c.mode = "dense"
    dense = config_utils.resolve(c)
    assert (dense.optimizer, dense.learning_rate) == ("sgd", 0.01)  # the reference's dense-baseline recipe
    # A field given on the command line wins over the baseline preset.
    c2 = load(path).get_config()
    c2.mode, c2.learning_rate = "dense", 0.05
    assert config_utils.resolve(c2, overridden={"learning_rate"}).learning_rate == 0.05
    w = load(os.path.join(ROOT, "configs", "cifar10_wide_vgg_small_binact.py")).get_config()
    w.learn_batchnorm = True
    w = config_utils.resolve(w)
    assert w.bn_affine and w.learning_rate == 2e-4  # "+BN": affine BN, affine file's Adam 2e-4
    assert config_utils.resolve(w).learning_rate == 2e-4  # resolving twice changes nothing


# The defaults before the field table existed.
DEFAULTS = dict(
    adam_weight_decay=False, augment=True,
    baseline_hparams={'binary_trained': {}, 'dense': {}, 'edgepopup': {}}, batch_size=128,
    bn_affine=False, checkpoint_every_epochs=1, checkpoint_every_steps=0,
    compilation_cache=True, data_dir='', dataset='digits',
    eval_batch_size=128, fan_mode='fan_in', grad_clip=0.0, holdout_per_class=500,
    input_pipeline='auto', keep_fraction=0.5, label_smoothing=0.0, learn_batchnorm=False,
    learn_batchnorm_hparams={}, learning_rate=0.1, log_every_steps=50, mask_impl='auto',
    mask_method='radix_many', max_train_steps=-1, mode='biprop', model='mlp',
    model_options={}, momentum=0.9, nesterov=False, num_epochs=100, optimizer='sgd',
    precision='auto', progress_bar=True, prune_ramp_epochs=10, prune_rate=None,
    pruning='layerwise', restart=False, accept_schedule_change=False,
    scale_fan='none', schedule='cosine',
    schedule_granularity='epoch', seed=0, stop_if_not_learning=False, tune_batchnorm=False,
    warmup_epochs=0, weight_decay=0.0001, weight_init='kaiming_normal',
    # Added with member programs: unset data_seed follows seed; no members, one run.
    data_seed=None, members={'keep_fraction': (), 'seed': ()})


def test_base_config_is_the_field_table():
    c = config_utils.base_config().to_dict()
    assert os.path.basename(c.pop("cache_dir")) == "mpt_jax"
    assert c == DEFAULTS
    assert {type(v) for k, v in c.items() if k not in ("prune_rate", "data_seed")} == {
        bool, int, float, str, dict}
    assert all(type(c[k]) is type(v) for k, v in DEFAULTS.items())  # 0.0 stays a float
    assert sorted(f.name for f in config_fields.FIELDS) == sorted(config_utils.base_config().keys())
    for f in config_fields.FIELDS:
        assert f.help and "\n" not in f.help and len(f.help) < 330, f.name
    c = config_utils.base_config()
    c.prune_rate = 0.3  # a placeholder field takes its type's values
    with pytest.raises(TypeError):
        c.num_epochs = "many"


@pytest.mark.parametrize("field,value,message", [
    ("holdout_per_class", -1, "holdout_per_class must be an integer >= 0; got -1"),
    ("max_train_steps", 0, "max_train_steps must be -1 (no limit) or an integer > 0; got 0"),
    ("mask_impl", "fast", "unknown mask_impl 'fast'; valid values: auto, per_layer, batched"),
    ("momentum", 1.0, "momentum must be in [0, 1); got 1.0"),
    ("input_pipeline", "tf", "unknown input_pipeline 'tf'; valid values: auto, in_memory, tfds"),
    ("seed", -1, "seed must be an integer >= 0; got -1"),
    ("seed", 2**31, "seed must be an integer >= 0 and <= 2147483647; got 2147483648"),
    ("batch_size", 2**17, "batch_size must be an integer > 0 and <= 65536; got 131072"),
])
def test_validation_reads_the_table(field, value, message):
    c = config_utils.base_config()
    c[field] = value
    with pytest.raises(ConfigError) as info:
        config_utils.validate(c, device_count=1)
    assert str(info.value) == f"{message} (set --config.{field}=...)"
    plain = ml_collections.ConfigDict(dict(config_utils.base_config().to_dict(), seed="0"))
    with pytest.raises(ConfigError, match=r"^seed must be an integer; got '0'"):
        config_utils.validate(plain, device_count=1)


def test_prune_rate_alias():
    c = config_utils.base_config()
    c.prune_rate = 0.2
    assert config_utils.resolve(c).keep_fraction == 0.2
    c.keep_fraction = 0.3
    with pytest.raises(ConfigError, match="prune_rate"):
        config_utils.resolve(c, overridden={"keep_fraction", "prune_rate"})


@pytest.mark.parametrize("field,value,pattern", [
    ("model", "resnet9000", r"unknown model 'resnet9000'; valid models: .*conv4"),
    ("dataset", "svhn", r"unknown dataset 'svhn'; valid values: .*cifar10"),
    ("optimizer", "rmsprop", r"unknown optimizer 'rmsprop'; valid values: sgd, adam"),
    ("mode", "ternary", r"unknown mode 'ternary'; valid values: biprop"),
    ("schedule", "step", r"unknown schedule 'step'"),
    ("keep_fraction", 0.0, r"keep_fraction must be in \(0, 1\].*got 0.0"),
    ("keep_fraction", 1.5, r"keep_fraction must be in \(0, 1\].*got 1.5"),
    ("num_epochs", 0, r"num_epochs must be an integer > 0; got 0"),
    ("batch_size", -8, r"batch_size must be an integer > 0; got -8"),
    ("batch_size", 12, r"batch_size=12 is not divisible by the 8 devices"),
    ("eval_batch_size", 0, r"eval_batch_size must be an integer > 0"),
    ("warmup_epochs", 10, r"warmup_epochs=10 must be smaller than num_epochs=10"),
    ("learning_rate", -0.1, r"learning_rate must be in"),
])
def test_invalid_values_fail_with_one_line(field, value, pattern):
    c = config_utils.base_config()
    c.num_epochs = 10
    c[field] = value
    with pytest.raises(ConfigError, match=pattern) as info:
        config_utils.validate(config_utils.resolve(c), device_count=8)
    assert "\n" not in str(info.value)
    assert field in str(info.value)


def test_unknown_model_option_fails_clearly():
    c = config_utils.base_config()
    c.model_options.depth = 3
    with pytest.raises(ConfigError, match=r"unknown option.*'depth'.*valid options: .*hidden"):
        config_utils.validate(c, device_count=1)


def test_command_line_errors_are_one_line_exit_2(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for args, pattern in [
        (["--config.no_such_field=1"], r"^error: unknown config field 'no_such_field' \(python "
                                       r"-m mpt_jax.main --config=configs/smoke.py --help"),
        (["--config.lerning_rate=0.1"], r"^error: unknown config field 'lerning_rate'; did you "
                                        r"mean 'learning_rate'\? \(python -m mpt_jax.main "
                                        r"--config=configs/smoke.py --help lists the fields\)$"),
        (["--config.keep_fraction=1.5"], r"^error: keep_fraction must be in \(0, 1\]"),
        (["--config=configs/missing.py"], r"^error: cannot load the config file"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "mpt_jax.main", "--config=configs/smoke.py",
             f"--workdir={tmp_path}/w", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not os.path.exists(tmp_path / "w" / "checkpoints")  # failed before any work


@pytest.mark.end_to_end  # five runs of main, end to end
def test_main_run_twice_in_one_process(tmp_path, monkeypatch, capsys):
    """``main.run(argv)`` from Python (a notebook): each call uses its own argv, never the
    previous call's --workdir or --config.* overrides (absl's flags are process-wide)."""
    import json

    import jax

    from mpt_jax import main

    monkeypatch.chdir(tmp_path)
    smoke = os.path.join(ROOT, "configs", "smoke.py")
    cache_dir = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)

    def run(*args, config=smoke):
        # compilation_cache=False: run() leaves the process-wide cache option alone.
        head = ["m", f"--config={config}"] if config else ["m"]
        return main.run([*head, *args, "--config.compilation_cache=False"])

    def result(workdir):
        with open(os.path.join(workdir, "result.json")) as f:
            return json.load(f)

    assert run("--workdir=a", "--config.num_epochs=1") == 0
    assert capsys.readouterr().out.rstrip().endswith("; 1 epoch / 22 steps")
    assert run("--config.max_train_steps=3") == 0
    assert run("--workdir=b", "--config.num_epochs=1", "--config.seed=4") == 0
    assert run("--workdir=c", "--config.bogus=1") == 2
    assert "unknown config field 'bogus' (python -m mpt_jax.main" in capsys.readouterr().err
    a, default, b = result("a"), result(os.path.join("runs", "smoke")), result("b")
    assert (a["epochs_completed"], a["global_step"], a["seed"]) == (1, 22, 0)
    assert (default["global_step"], default["seed"]) == (3, 0)  # no --workdir: the default
    assert (b["epochs_completed"], b["seed"]) == (1, 4)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "runs"]
    assert jax.config.jax_compilation_cache_dir == cache_dir
    # Without --config: the embedded default, each time with only this call's overrides.
    assert run("--workdir=d", "--config.num_epochs=1", "--config.max_train_steps=2",
               config=None) == 0
    assert main.FLAGS.config.num_epochs == 1 and main.FLAGS.config.model == "mlp"
    assert run("--workdir=e", "--config.max_train_steps=2", config=None) == 0
    assert main.FLAGS.config.num_epochs == 10 and result("e")["global_step"] == 2
    # The ticket command in the same process (its own flags, its own --config).
    from mpt_jax import ticket

    assert ticket.main(["ticket", "export", "--workdir=a", "--out=a.mptk"]) == 0
    assert ticket.main(["ticket", "evaluate", "--ticket=a.mptk", f"--config={smoke}",
                        "--config.eval_batch_size=32"]) == 0
    assert f"run recorded {a['final_top1']:.2f}%" in capsys.readouterr().out


def test_help_lists_flags_and_config_fields(tmp_path, monkeypatch, capsys):
    """``--help`` prints the flags and every field of the given config with its value, and
    trains nothing."""
    from mpt_jax import main

    monkeypatch.chdir(tmp_path)
    smoke = os.path.join(ROOT, "configs", "smoke.py")
    assert main.run(["m", f"--config={smoke}", "--config.keep_fraction=0.25", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m mpt_jax.main")
    for line in ("  --workdir: ", "  --config.keep_fraction=0.25\n", "  --config.num_epochs=2\n",
                 "  --config.model='mlp'\n", "  --config.model_options.hidden=(32,)\n"):
        assert line in out
    # Every field's value line is followed by one line that says what the field means.
    lines = out.splitlines()
    for field in config_fields.FIELDS:
        first = next(i for i, line in enumerate(lines)
                     if line.startswith((f"  --config.{field.name}=", f"  --config.{field.name}.")))
        after = next(line for line in lines[first:] if not line.startswith("  --config."))
        assert after.strip() and after.startswith("      "), (field.name, after)
        assert after.strip().startswith(field.help[:40]), (field.name, after)
    assert "[an integer > 0]" in out and "[sgd | adam]" in out
    assert main.run(["m", "-h"]) == 0
    assert "  --config.num_epochs=10\n" in capsys.readouterr().out  # configs/default.py
    assert os.listdir(tmp_path) == []


def test_help_of_a_real_config_explains_every_field_in_plain_words():
    """``python -m mpt_jax.main --config=configs/cifar10_resnet18.py --help``: every field has
    a one-line meaning, and the fields a new user cannot guess say what they do in words
    (what BatchNorm's scale and shift are for; that the mask settings change speed only)."""
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.main",
                           "--config=configs/cifar10_resnet18.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    meaning = {}
    for i, line in enumerate(lines):
        match = re.match(r"  --config\.(\w+)[=.]", line)
        if match and match.group(1) not in meaning:
            after = next(t for t in lines[i:] if not t.startswith("  --config."))
            meaning[match.group(1)] = after.strip()
    assert sorted(meaning) == sorted(f.name for f in config_fields.FIELDS)
    for name, text in meaning.items():
        assert len(text.split()) >= 3 and text != "not a field of mpt_jax", (name, text)
    for name in ("bn_affine", "learn_batchnorm", "tune_batchnorm"):
        assert "scale and a shift" in meaning[name] or "scale and shift" in meaning[name]
    assert "after it normalises" in meaning["bn_affine"]
    assert "while the scores learn" in meaning["learn_batchnorm"]
    assert "stay as they are" in meaning["tune_batchnorm"]
    for name in ("mask_impl", "mask_method"):
        assert meaning[name].startswith("speed only, same results"), meaning[name]
    assert "top-scoring weights" in meaning["mask_method"]


def test_help_into_a_closed_pipe_is_not_an_error(run_into_closed_pipe):
    """``main --help | head -1``: the reader may go before the help is written. Here it is
    gone before the run starts: status 0 and no BrokenPipeError traceback."""
    proc = run_into_closed_pipe("-m", "mpt_jax.main", "--help")
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr
