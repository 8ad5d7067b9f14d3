"""Parse a Label Studio labeling config into the names the model needs.

The model only understands one shape of config: exactly one ``Image`` and exactly one
``Choices`` bound to it (``toName``). Everything else in the config (headers, other controls
on other objects) is ignored. Names and choice values are always read from the config, so a
project that calls its control ``tags`` or offers a subset of the classes still works.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources

DEFAULT_CONFIG_RESOURCE = "thumbnails.xml"


class LabelConfigError(ValueError):
    """A labeling config that the model cannot work with; the message gives the reason and the fix."""


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config that predictions and training depend on.

    Attributes:
        image_name: ``name`` of the ``Image`` tag, used as ``to_name`` in results.
        image_key: key of the task's ``data`` that contains the image URL (``$image`` -> ``image``).
        choices_name: ``name`` of the ``Choices`` tag, used as ``from_name`` in results.
        choices: the choice values in config order.
        multiple: whether several choices may be selected (``choice="multiple"``).
    """

    image_name: str
    image_key: str
    choices_name: str
    choices: tuple[str, ...]
    multiple: bool


def parse_label_config(xml_text: str) -> LabelConfig:
    """Parse a labeling config and check that it has one Image and one Choices bound to it.

    Raises:
        LabelConfigError: the XML does not parse, or the Image/Choices pair is missing,
            duplicated, or not bound together.
    """
    if not isinstance(xml_text, str) or not xml_text.strip():
        raise LabelConfigError("label config is empty: pass the project's XML labeling config")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as error:
        raise LabelConfigError(f"label config is not valid XML ({error})") from error

    images = [tag for tag in root.iter() if tag.tag == "Image"]
    if len(images) != 1:
        raise LabelConfigError(
            f"label config must contain exactly one <Image> tag, found {len(images)}"
        )
    image = images[0]
    image_name = image.get("name")
    image_value = image.get("value", "")
    if not image_name:
        raise LabelConfigError("the <Image> tag has no name attribute")
    if not image_value.startswith("$") or len(image_value) < 2:
        raise LabelConfigError(
            f"the <Image> tag's value must name a task data key such as $image, got {image_value!r}"
        )

    all_choices = [tag for tag in root.iter() if tag.tag == "Choices"]
    bound = [tag for tag in all_choices if tag.get("toName") == image_name]
    if not all_choices:
        raise LabelConfigError("label config has no <Choices> tag: add one bound to the image")
    if len(bound) != 1:
        names = ", ".join(repr(tag.get("toName")) for tag in all_choices)
        raise LabelConfigError(
            f"label config must contain exactly one <Choices> with toName={image_name!r}, "
            f"found {len(bound)} (toName of the Choices tags: {names})"
        )
    choices_tag = bound[0]
    choices_name = choices_tag.get("name")
    if not choices_name:
        raise LabelConfigError("the <Choices> tag has no name attribute")

    values: list[str] = []
    for choice in choices_tag.iter("Choice"):
        # Label Studio uses ``alias`` as the stored value when it is set, else ``value``.
        value = choice.get("alias") or choice.get("value")
        if not value:
            raise LabelConfigError(f"a <Choice> in {choices_name!r} has no value attribute")
        if value in values:
            raise LabelConfigError(f"choice {value!r} appears twice in {choices_name!r}")
        values.append(value)
    if not values:
        raise LabelConfigError(f"the <Choices> tag {choices_name!r} has no <Choice> values")

    return LabelConfig(
        image_name=image_name,
        image_key=image_value[1:],
        choices_name=choices_name,
        choices=tuple(values),
        multiple=choices_tag.get("choice", "single") == "multiple",
    )


def default_label_config_xml() -> str:
    """Return the XML of the labeling config shipped with the project (the ten thumbnail classes)."""
    return resources.files("model.label_configs").joinpath(DEFAULT_CONFIG_RESOURCE).read_text("utf-8")


def load_label_config(path: str | None = None) -> tuple[LabelConfig, str]:
    """Read and parse a labeling config file, or the shipped default when ``path`` is None.

    Returns:
        The parsed config and its XML text.
    """
    if path is None:
        xml_text = default_label_config_xml()
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                xml_text = handle.read()
        except OSError as error:
            raise LabelConfigError(f"cannot read label config {path!r}: {error.strerror}") from error
    return parse_label_config(xml_text), xml_text
