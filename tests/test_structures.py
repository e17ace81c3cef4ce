"""The structures registry (data/structures.py): the names a model may segment and their checks."""

import pytest

from raysegment.data.structures import DEFAULT_STRUCTURES, LUNGS, STRUCTURES, check_structures


def test_registry():
    assert list(STRUCTURES) == ["lungs", "heart", "clavicles"]
    assert DEFAULT_STRUCTURES == (LUNGS,) == ("lungs",)  # a checkpoint without a structures list
    assert STRUCTURES["lungs"].parts == ("right_lung", "left_lung")
    assert STRUCTURES["clavicles"].parts == ("right_clavicle", "left_clavicle")
    assert {s.name: s.keep_largest for s in STRUCTURES.values()} == {"lungs": 2, "heart": 1, "clavicles": 2}
    for name, s in STRUCTURES.items():
        assert s.name == name and s.label and s.snomed[0].isdigit() and s.snomed[1]


@pytest.mark.parametrize("names", [["lungs"], ("heart", "lungs"), ["lungs", "heart", "clavicles"]])
def test_valid_lists_come_back_as_tuples_in_order(names):
    assert check_structures(names) == tuple(names)
    assert check_structures(iter(names)) == tuple(names)  # any iterable


def test_unknown_name_is_named_with_the_known_ones():
    expected = r"^structures: unknown structure 'ribs'; known: lungs, heart, clavicles$"
    with pytest.raises(ValueError, match=expected):
        check_structures(["lungs", "ribs"])
    # Names are exact: no case folding, no singular/plural guessing.
    for wrong in ("Lungs", "lung", "clavicle", "left_lung"):
        with pytest.raises(ValueError, match=f"unknown structure '{wrong}'"):
            check_structures([wrong])


def test_empty_list():
    expected = r"^structures: must name at least one structure \(lungs, heart, clavicles\)$"
    with pytest.raises(ValueError, match=expected):
        check_structures([])


def test_repeated_name():
    expected = r"^structures: a structure is listed twice: \['lungs', 'heart', 'lungs'\]$"
    with pytest.raises(ValueError, match=expected):
        check_structures(["lungs", "heart", "lungs"])


def test_what_names_the_setting():
    # Callers say which setting was wrong, e.g. a config key or a checkpoint field.
    with pytest.raises(ValueError, match=r"^model\.structures: unknown structure 'liver'"):
        check_structures(["liver"], what="model.structures")


def test_a_plain_string_is_not_a_list_of_names():
    # "heart" as a string iterates as 'h', 'e', ...: rejected, not silently read as a list of letters.
    with pytest.raises(ValueError, match=r"unknown structure 'h'"):
        check_structures("heart")
