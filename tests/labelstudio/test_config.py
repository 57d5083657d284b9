import pytest

from ls_backend.labelstudio.config import ConfigError, TaskError, parse_config

SINGLE = """<View><Text name="text" value="$review"/>
<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices></View>"""
MULTI = """<View><HyperText name="page" value="$html"/>
<Choices name="topics" toName="page" choice="multiple">
<Choice value="Sports"/><Choice value="Politics"/><Choice value="Tech"/></Choices></View>"""


def test_single_choice_config():
    config = parse_config(SINGLE)
    assert (config.from_name, config.to_name) == ("sentiment", "text")
    assert config.field.value_key == "review"
    assert config.space.labels == ("Positive", "Negative") and not config.space.multi_label
    assert config.text_of({"id": 1, "data": {"review": "fine"}}) == "fine"


def test_multiple_choice_hypertext_strips_tags():
    config = parse_config(MULTI)
    assert config.space.multi_label and config.space.size == 3
    assert config.text_of({"id": 1, "data": {"html": "<b>Goal</b> &amp; win"}}).split() == [
        "Goal",
        "&",
        "win",
    ]


@pytest.mark.parametrize(
    "xml",
    [
        "<View><Text name='t' value='$t'/></View>",
        "<View><Image name='i' value='$img'/><Choices name='c' toName='i'><Choice value='a'/>"
        "<Choice value='b'/></Choices></View>",
        "not xml at all <",
    ],
)
def test_configs_without_choices_or_labels_on_text_are_rejected(xml):
    with pytest.raises(ConfigError):
        parse_config(xml)


def test_task_without_the_text_field_names_the_field():
    config = parse_config(SINGLE)
    with pytest.raises(TaskError, match="review"):
        config.text_of({"id": 7, "data": {"text": "wrong key"}})


def test_labels_of_reads_only_our_tag():
    config = parse_config(SINGLE)
    result = [
        {"from_name": "sentiment", "type": "choices", "value": {"choices": ["Negative"]}},
        {"from_name": "other", "type": "choices", "value": {"choices": ["Positive"]}},
    ]
    assert config.labels_of(result) == ["Negative"]
    assert config.labels_of(result[1:]) is None  # nothing for our tag: not a label


def test_multi_label_with_no_choice_is_a_label_none_applies():
    assert parse_config(MULTI).labels_of([]) == []


TASK_LEVEL = (
    '<Choices name="sentiment" toName="text"><Choice value="Pos"/><Choice value="Neg"/></Choices>'
)


def test_a_per_region_choices_listed_first_is_not_taken_for_the_tasks_one():
    xml = (
        '<View><Labels name="span" toName="text"><Label value="Person"/></Labels>'
        '<Text name="text" value="$text"/>'
        '<Choices name="kind" toName="text" perRegion="true">'
        '<Choice value="Real"/><Choice value="Fictional"/></Choices>'
        f"{TASK_LEVEL}</View>"
    )
    config = parse_config(xml)  # the task-level Choices first, then the Labels beside it
    assert [p.from_name for p in config.parts] == ["sentiment", "span"]
    assert config.parts[0].space.labels == ("Pos", "Neg")


def test_a_config_whose_only_choices_is_per_region_says_so():
    xml = (
        '<View><Text name="text" value="$text"/><Choices name="kind" toName="text" '
        'perRegion="true"><Choice value="A"/><Choice value="B"/></Choices></View>'
    )
    with pytest.raises(ConfigError, match="per region"):
        parse_config(xml)


def test_a_text_with_a_fixed_value_is_no_task_field():
    """Label Studio shows value="plain" as the text "plain" on every task; the SDK's value_name
    would make it the field 'lain'."""
    fixed = f'<View><Text name="text" value="plain"/>{TASK_LEVEL}</View>'
    with pytest.raises(ConfigError, match="fixed text 'plain'"):
        parse_config(fixed)
    both = (
        '<View><Text name="intro" value="Read the review:"/><Text name="text" value="$review"/>'
        '<Choices name="sentiment" toName="intro,text"><Choice value="Pos"/><Choice value="Neg"/>'
        "</Choices></View>"
    )
    assert parse_config(both).field.value_key == "review"


def test_a_text_loaded_from_a_url_is_refused_by_name():
    xml = f'<View><Text name="text" value="$url" valueType="url"/>{TASK_LEVEL}</View>'
    with pytest.raises(ConfigError, match="valueType=url"):
        parse_config(xml)
