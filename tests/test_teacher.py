"""Teacher loading: name forms, kwargs, factories, checkpoints, fingerprints, errors."""
from __future__ import annotations

import textwrap
import uuid

import pytest
import torch
from torch import nn

from lana.cli.app import main
from lana.config import load_config
from lana.errors import CheckpointError, ConfigError, UnknownModelError
from lana.teacher.load import build_model, load_teacher, teacher_fingerprint

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, num_classes=10, in_chans=3, width=8):
            super().__init__()
            self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    def tiny(**kwargs):
        return Tiny(**kwargs)

    NOT_CALLABLE = 3

    def returns_int():
        return 3
    """
)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A throw-away module holding a tiny model factory; yields its import name."""
    name = f"lana_test_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name


def _tiny(factory_module, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(f"{factory_module}:tiny", kwargs)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- name forms and kwargs -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, module_prefix",
    [
        ("timm:resnet18", "timm."),
        ("torchvision:resnet18", "torchvision."),
        ("resnet18", "timm."),  # bare names try timm first
        ("mobilenet_v2", "torchvision."),  # ... then torchvision
        ("timm:resnet18.a1_in1k", "timm."),  # a pretrained tag builds the architecture only
    ],
)
def test_name_forms(name, module_prefix):
    model = load_teacher(name, "random", kwargs={"num_classes": 5})
    assert type(model).__module__.startswith(module_prefix)
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18", "torchvision:mobilenet_v2"])
def test_kwargs_in_chans_and_num_classes(name):
    model = load_teacher(name, "random", kwargs={"num_classes": 10, "in_chans": 1})
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_torchvision_in_chans_unchanged_is_noop():
    model = load_teacher("torchvision:resnet18", "random", kwargs={"in_chans": 3, "num_classes": 4})
    assert model.conv1.in_channels == 3


def test_bad_kwargs_is_config_error():
    with pytest.raises(ConfigError) as exc:
        load_teacher("torchvision:resnet18", "random", kwargs={"no_such_option": 1})
    assert "no_such_option" in _one_line(exc)


# --- package.module:factory ------------------------------------------------------------


def test_factory(factory_module):
    model = load_teacher(f"{factory_module}:tiny", "random", kwargs={"num_classes": 3, "in_chans": 1})
    assert not model.training
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    # a class is a factory too
    assert isinstance(load_teacher(f"{factory_module}:Tiny", "random"), nn.Module)


def test_factory_imported_from_working_directory(tmp_path, monkeypatch):
    name = f"lana_test_cwd_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_teacher(f"{name}:tiny", "random"), nn.Module)


@pytest.mark.parametrize(
    "attr, error, words",
    [
        ("no_such_factory", UnknownModelError, "no attribute"),
        ("NOT_CALLABLE", UnknownModelError, "not callable"),
        ("returns_int", UnknownModelError, "expected an nn.Module"),
    ],
)
def test_factory_errors(factory_module, attr, error, words):
    with pytest.raises(error) as exc:
        load_teacher(f"{factory_module}:{attr}", "random")
    assert words in _one_line(exc)


def test_factory_missing_module():
    with pytest.raises(UnknownModelError) as exc:
        load_teacher("no_such_package_xyz.models:build", "random")
    assert "no_such_package_xyz.models" in _one_line(exc)


def test_factory_bad_kwargs(factory_module):
    with pytest.raises(ConfigError) as exc:
        load_teacher(f"{factory_module}:tiny", "random", kwargs={"depth": 3})
    assert "teacher.kwargs" in _one_line(exc)


# --- unknown names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, suggestion",
    [("resnet181", "resnet18"), ("timm:resnt18", "resnet18"), ("torchvision:mobilenet_v22", "mobilenet_v2")],
)
def test_unknown_name_suggests_close_ones(name, suggestion):
    with pytest.raises(UnknownModelError) as exc:
        load_teacher(name, "random")
    message = _one_line(exc)
    assert "unknown" in message and suggestion in message


# --- checkpoints -----------------------------------------------------------------------


def test_no_checkpoint_is_refused_not_a_silent_random_teacher(factory_module):
    """A teacher without trained weights would make the whole run meaningless: one line, and how to fix it."""
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny")
    message = _one_line(exc)
    assert "has no checkpoint" in message and "teacher.checkpoint: random" in message


def test_random_checkpoint_is_an_explicit_untrained_teacher(factory_module):
    torch.manual_seed(0)
    first = load_teacher(f"{factory_module}:tiny", "random")
    torch.manual_seed(0)
    assert teacher_fingerprint(load_teacher(f"{factory_module}:tiny", "random")) == teacher_fingerprint(first)
    assert not first.training


def test_random_checkpoint_is_not_a_path_in_config_files(tmp_path):
    """A config file's relative paths are rebased; the word ``random`` is not one of them."""
    (tmp_path / "run.yaml").write_text("teacher:\n  checkpoint: random\n")
    (tmp_path / "random").write_text("")  # even with a file of that name beside the config
    assert load_config(tmp_path / "run.yaml").teacher.checkpoint == "random"


def test_cli_without_checkpoint_refuses_and_writes_nothing(tmp_path, capsys):
    """`lana distill` with the default config (no teacher.checkpoint): one line, exit 2, no run folder."""
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--run", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("lana: error: teacher") and "\n" not in err
    assert not (tmp_path / "new").exists()



def test_checkpoint_round_trip(factory_module, tmp_path):
    source = _tiny(factory_module, seed=1)
    path = tmp_path / "teacher.pt"
    torch.save(source.state_dict(), path)
    loaded = load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert teacher_fingerprint(loaded) == teacher_fingerprint(source)
    assert teacher_fingerprint(_tiny(factory_module, seed=2)) != teacher_fingerprint(source)


def test_checkpoint_round_trip_timm(tmp_path):
    torch.manual_seed(0)
    source = load_teacher("timm:resnet10t", "random", kwargs={"num_classes": 10})
    path = tmp_path / "resnet10t.pt"
    torch.save(source.state_dict(), path)
    loaded = load_teacher("timm:resnet10t", checkpoint=str(path), kwargs={"num_classes": 10})
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_wrapped(factory_module, tmp_path, key):
    source = _tiny(factory_module, seed=1)
    path = tmp_path / "wrapped.pt"
    torch.save({key: source.state_dict(), "epoch": 7, "arch": "tiny"}, path)
    loaded = load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert teacher_fingerprint(loaded) == teacher_fingerprint(source)


def test_checkpoint_ddp_prefix(factory_module, tmp_path):
    source = _tiny(factory_module, seed=1)
    path = tmp_path / "ddp.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, path)
    loaded = load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert teacher_fingerprint(loaded) == teacher_fingerprint(source)


def test_checkpoint_missing_file(factory_module, tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=tmp_path / "nope.pt")
    assert "not found" in _one_line(exc)


def test_checkpoint_corrupt(factory_module, tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert "cannot read" in _one_line(exc)


def test_checkpoint_truncated(factory_module, tmp_path):
    path = tmp_path / "truncated.pt"
    torch.save(_tiny(factory_module).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_teacher(f"{factory_module}:tiny", checkpoint=path)


def test_checkpoint_whole_pickled_model_refused(factory_module, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(_tiny(factory_module), path)  # a whole module: needs code to unpickle
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert "state_dict()" in _one_line(exc)


def test_checkpoint_without_state_dict(factory_module, tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=path)
    assert "expected a state_dict" in _one_line(exc)


def test_checkpoint_shape_mismatch(factory_module, tmp_path):
    path = tmp_path / "ten_classes.pt"
    torch.save(_tiny(factory_module, num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=path, kwargs={"num_classes": 4})
    message = _one_line(exc)
    assert "does not fit" in message and "fc.weight [10, 8] vs [4, 8]" in message


def test_checkpoint_missing_and_unexpected_keys(factory_module, tmp_path):
    state = _tiny(factory_module).state_dict()
    state["extra.weight"] = state.pop("conv.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc:
        load_teacher(f"{factory_module}:tiny", checkpoint=path)
    message = _one_line(exc)
    assert "1 missing (conv.weight)" in message and "1 unexpected (extra.weight)" in message


# --- fingerprint -----------------------------------------------------------------------


def test_fingerprint_deterministic_and_sensitive(factory_module):
    a, b = _tiny(factory_module, seed=3), _tiny(factory_module, seed=3)
    fa = teacher_fingerprint(a)
    assert len(fa) == 64 and fa == teacher_fingerprint(b) == teacher_fingerprint(a)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert teacher_fingerprint(b) != fa
    # dtypes count, and dtypes numpy cannot hold (bfloat16) still hash
    assert teacher_fingerprint(_tiny(factory_module, seed=3).to(torch.bfloat16)) != fa
