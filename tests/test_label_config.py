"""Parsing labeling configs: the shipped default, other names, subsets, and invalid configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model.label_config import LabelConfigError, default_label_config_xml, parse_label_config

DEFAULT_CLASSES = (
    "Adult content", "Weapons", "Violence", "Minecraft", "Anime/Cartoon",
    "Face", "Money/Riches", "Focus Shape", "Text", "None",
)


def test_default_config_names_and_order():
    config = parse_label_config(default_label_config_xml())
    assert config.image_name == "image"
    assert config.image_key == "image"
    assert config.choices_name == "choice"
    assert config.choices == DEFAULT_CLASSES
    assert config.multiple


def test_other_names_and_subset():
    config = parse_label_config(
        '<View><Header value="Tag it"/><Image name="thumb" value="$url"/>'
        '<Choices name="tags" toName="thumb" choice="multiple">'
        '<Choice value="Face"/><Choice value="Text"/></Choices></View>'
    )
    assert (config.image_name, config.image_key, config.choices_name) == ("thumb", "url", "tags")
    assert config.choices == ("Face", "Text")


def test_alias_is_the_stored_value():
    config = parse_label_config(
        '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
        '<Choice value="Has a face" alias="Face"/></Choices></View>'
    )
    assert config.choices == ("Face",)


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        ('<View><Image name="i" value="$image"/></View>', "no <Choices>"),
        (
            '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
            '<Choices name="c" toName="a"><Choice value="X"/></Choices></View>',
            "exactly one <Image>",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="other">'
            '<Choice value="X"/></Choices></View>',
            "toName='i'",
        ),
        ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"></Choices></View>', "no <Choice>"),
        ('<View><Image name="i" value="image"/><Choices name="c" toName="i"><Choice value="X"/></Choices></View>',
         "must name a task data key"),
        ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="X"/>'
         '<Choice value="X"/></Choices></View>', "appears twice"),
    ],
    ids=["empty", "bad-xml", "no-choices", "two-images", "choices-bound-to-nothing", "no-choice-values",
         "image-value-not-variable", "duplicate-choice"],
)
def test_invalid_configs_rejected(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_cli_prints_default_config():
    output = subprocess.run(
        [sys.executable, "-m", "thumbnail_ml", "label-config"], check=True, capture_output=True, text=True
    ).stdout
    assert parse_label_config(output).choices == DEFAULT_CLASSES
