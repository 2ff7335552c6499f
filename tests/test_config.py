"""The one typed config: flat and nested forms, validation by type, range and registry, CLI flags from it."""

import pytest

from gradleak.config import OPTIONS, SECTION_OF, AttackConfig, choices_of, flatten, validate
from gradleak.errors import ConfigError


def test_flat_and_nested_forms_are_one_config():
    flat = AttackConfig.of(batch_size=8, iterations=50, knows_labels=True, seed=3)
    nested = AttackConfig.from_dict({"data": {"batch_size": 8}, "inversion": {"iterations": 50},
                                     "threat": {"knows_labels": True}, "run": {"seed": 3}})
    assert flat == nested
    assert flat.data.batch_size == 8 and flat.inversion.iterations == 50 and flat.run.seed == 3
    assert AttackConfig.from_dict(flat.to_dict()) == flat == AttackConfig.from_dict(flat.nested())
    assert flat.with_options(seed=4).run.seed == 4 and flat.run.seed == 3


@pytest.mark.parametrize("data, message", [
    ({"knows_labels": "no"}, "option knows_labels must be true/false, got 'no'"),
    ({"iterations": "50"}, "option iterations must be an integer or null"),
    ({"batch_size": True}, "option batch_size must be an integer, got True"),
    ({"restarts": 1.5}, "option restarts must be an integer, got 1.5"),
    ({"tv": -1}, "option tv must be at least 0, got -1"),
    ({"local_lr": 0}, "option local_lr must be greater than 0, got 0"),
    ({"guidance": "oracel"}, "unknown guidance 'oracel'; choose one of: none, oracle, search"),
    ({"model": "vgg"}, "unknown model 'vgg'"),
    ({"iteratoins": 5}, "did you mean iterations?"),
    ({"data": {"iterations": 5}}, "belong to section inversion, not data"),
    ({"iterations": 5, "inversion": {"iterations": 6}}, "option(s) given twice: iterations"),
    ({"inversion": 5}, "section inversion must be a mapping"),
])
def test_bad_values_are_one_line_errors_naming_the_option(data, message):
    with pytest.raises(ConfigError) as info:
        AttackConfig.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_ints_are_accepted_where_numbers_are_expected():
    assert AttackConfig.of(tv=0, local_lr=1).inversion.tv == 0
    assert flatten({"batch-size": 2}) == {"batch_size": 2}  # dashes as on the command line


def test_choices_come_from_the_registries():
    from gradleak.attacks.labels import LABEL_STRATEGIES
    from gradleak.data import DATASETS
    from gradleak.semantic.labellers import LABELLERS

    assert choices_of(OPTIONS["labels"]) == LABEL_STRATEGIES.names() + ["auto"]
    assert choices_of(OPTIONS["dataset"]) == DATASETS.names()
    assert choices_of(OPTIONS["labeler"]) == LABELLERS.names()
    LABEL_STRATEGIES.add("my-strategy", lambda obs, aux=None: None)
    try:
        assert validate(AttackConfig.of(labels="my-strategy")).recovery.labels == "my-strategy"
    finally:
        del LABEL_STRATEGIES._items["my-strategy"]


def test_every_option_has_help_and_a_flag_in_the_attack_command(capsys):
    from gradleak.cli import main

    main(["attack", "--help"])
    text = capsys.readouterr().out
    for name, f in OPTIONS.items():
        assert f.metadata["help"], name
        assert "--" + name.replace("_", "-") in text, name
    assert len(set(SECTION_OF.values())) == 8
