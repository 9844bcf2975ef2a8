import pytest

from repro import config
from repro.artifacts import ReproError


def test_unknown_profile_is_a_user_error():
    with pytest.raises(ReproError, match="--profile 'nope' is unknown"):
        config.load("nope")


def test_override_converts_to_the_field_type():
    cfg = config.load("smoke", ["seeds.num_seeds=7", "train.lr=0.001", "clean.benchmarks=humaneval",
                                "export.keep_intermediate=true"])
    assert cfg.seeds.num_seeds == 7 and cfg.train.lr == 0.001
    assert cfg.clean.benchmarks == ["humaneval"] and cfg.export.keep_intermediate is True


@pytest.mark.parametrize("item", ["seeds.nope=1", "nosection.x=1", "seeds.num_seeds", "seeds.num_seeds=ten"])
def test_bad_override_is_a_user_error(item):
    with pytest.raises(ReproError, match="--set"):
        config.load("tiny", [item])
