"""One parser for written patch schedules, used by the converter's and the training commands' `--patch-nums`."""

import pytest

from var_hf.patch_schedules import PATCH_NUMS_256, PATCH_NUMS_512, parse_int_list, parse_patch_nums


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2,4", [1, 2, 4]),
        ("1_2_3_4_5_6_8_10_13_16", list(PATCH_NUMS_256)),  # the reference's spelling
        ("1 2 4", [1, 2, 4]),
        (["1,2", "4"], [1, 2, 4]),  # several command-line words
        ([1, 2, 4], [1, 2, 4]),
        ("256", list(PATCH_NUMS_256)),
        ("512", list(PATCH_NUMS_512)),
    ],
)
def test_written_forms(text, expected):
    assert parse_patch_nums(text) == expected


@pytest.mark.parametrize("bad", ["a,b", "1,2.5", "1;2", [1, 2.0], [True, 2]])
def test_non_integers_are_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match="--patch-nums"):
        parse_patch_nums(bad, "--patch-nums")


def test_int_lists_take_no_schedule_names():
    assert parse_int_list("256") == [256]  # only patch schedules have names
    with pytest.raises(ValueError, match="--channel_multipliers"):
        parse_int_list("1,x", "--channel_multipliers")


def test_training_arguments_read_a_schedule_as_the_converter_does():
    from var_hf.training.arguments import VQVAEModelArguments

    for text in ("1_2_4", "1,2,4", "512"):
        assert VQVAEModelArguments(patch_nums=text).patch_nums == parse_patch_nums(text)
    with pytest.raises(ValueError, match="--patch-nums"):
        VQVAEModelArguments(patch_nums="1,two")
