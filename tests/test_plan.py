"""Plans: the default-mapping table (docs/plans.md), the grammar, validation and target names."""

from __future__ import annotations

import dataclasses

import pytest

from ettcli.arch import parse_arch
from ettcli.errors import EttError, EttWarning
from ettcli.plan import PRESETS, Plan, build_plan, make_plan, preset_help, presets_for, resolve_target

TABLE = [
    ("cifar_resnet_20", "cifar_resnet_32", "interpolate", "0:0;1:1,2;2:3,4"),
    ("cifar_resnet_20", "cifar_resnet_32", "append", "0:0;1:1,3;2:2,4"),
    ("cifar_resnet_32", "cifar_resnet_56", "interpolate", "0:0;1:1,2;2:3,4;3:5,6;4:7,8"),
    ("cifar_resnet_32", "cifar_resnet_56", "append", "0:0;1:1,5;2:2,6;3:3,7;4:4,8"),
    ("cifar_resnet_20", "cifar_resnet_44", "interpolate", "0:0;1:1,2,3;2:4,5,6"),
    ("cifar_resnet_14", "cifar_resnet_56", "interpolate", "0:0;1:1,2,3,4,5,6,7,8"),
    ("cifar_resnet_56", "cifar_resnet_32", "interleave", "0:0;1:1;3:2;5:3;7:4"),
    ("cifar_resnet_32", "cifar_resnet_20", "interleave", "0:0;1:1;3:2"),
    ("imagenet_resnet_18", "imagenet_resnet_34", "interpolate", "0:0;1:1,2|0:0;1:1,2,3|0:0;1:1,2,3,4,5|0:0;1:1,2"),
    (
        "imagenet_resnet_26",
        "imagenet_resnet_34",
        "interpolate",
        "0:0;1:1,2|0:0;1:1,2;2:3|0:0;1:1,2;2:3,4;3:5|0:0;1:1;2:2",
    ),
    ("imagenet_resnet_34", "imagenet_resnet_26", "tail", "0:0;1:1|0:0;1:1;2:2|0:0;1:1;2:2;3:3|0:0;1:1;2:2"),
    ("cifar_vgg_16", "cifar_vgg_19", "interpolate", "0:0;1:1|0:0;1:1|0:0;1:1,2;2:3|0:0;1:1,2;2:3|0:0;1:1,2;2:3"),
    ("cifar_vgg_19", "cifar_vgg_16", "tail", "0:0;1:1|0:0;1:1|0:0;1:1;2:2|0:0;1:1;2:2|0:0;1:1;2:2"),
]


@pytest.mark.parametrize("src,dst,preset,expected", TABLE, ids=[f"{r[0]}->{r[1]}:{r[2]}" for r in TABLE])
def test_default_table(src, dst, preset, expected):
    source, target = parse_arch(src), parse_arch(dst)
    plan = build_plan(source, target, preset)
    assert plan.mapping == expected
    assert str(plan) == expected
    assert Plan.parse(expected, source, target) == plan
    verb = PRESETS[preset].verb
    option = {"order": preset} if verb == "stretch" else {"drop": preset}
    assert make_plan(source, dst, **option).mapping == expected


def test_make_plan_defaults_follow_direction():
    r20, r56 = parse_arch("cifar_resnet_20"), parse_arch("cifar_resnet_56")
    assert make_plan(r20, "resnet-32").mapping == "0:0;1:1,2;2:3,4"  # deeper: interpolate
    assert make_plan(r56, "resnet-32").mapping == "0:0;1:1;3:2;5:3;7:4"  # shallower: interleave
    with pytest.warns(EttWarning, match="source's own depth"):
        assert make_plan(r20, "resnet-20").fill == ((0, 1, 2),) * 3  # same depth: identity, with a warning


def test_worked_example_of_the_docstring():
    src = parse_arch("cifar_resnet_20")
    dst = parse_arch("resnet-32", like=src)
    plan = build_plan(src, dst, "interpolate")
    assert plan.fill[0] == (0, 1, 1, 2, 2)
    assert plan.replicated(0) == [1, 2] and plan.dropped(0) == []
    assert plan.targets(1, 2) == (3, 4)
    back = build_plan(dst, src, "interleave")
    assert back.mapping == "0:0;1:1;3:2" and back.dropped(2) == [2, 4]


@pytest.mark.parametrize(
    "text,src,dst",
    [
        ("0:0;1:1,2;2:3,4", "cifar_resnet_20", "cifar_resnet_32"),
        ("0:0;2:1,2;1:3,4", "cifar_resnet_20", "cifar_resnet_32"),  # reordered units
        ("0:0;1:1|0:0;1:1,2;2:3|0:0;2:1;1:2", "cifar_resnet_20", "cifar_resnet_s2-4-3"),
        ("0:0;1:1,2;2:3,4|0:0;1:1,2;2:3,4|0:0;1:4;2:1,2,3", "cifar_resnet_20", "cifar_resnet_32"),
        ("0:0;1:1|0:0;2:1|0:0;3:1|0:0;1:1", "imagenet_resnet_s2-3-4-2", "imagenet_resnet_18"),
    ],
)
def test_grammar_round_trip(text, src, dst):
    source, target = parse_arch(src), parse_arch(dst)
    plan = Plan.parse(text, source, target)
    again = Plan.parse(str(plan), source, target)
    assert again == plan
    assert str(again) == str(plan)


def test_mapping_without_bar_applies_to_every_stage():
    src, dst = parse_arch("cifar_resnet_20"), parse_arch("cifar_resnet_32")
    short = Plan.parse("0:0;1:1,3;2:2,4", src, dst)
    long = Plan.parse("|".join(["0:0;1:1,3;2:2,4"] * 3), src, dst)
    assert short == long and short.fill == ((0, 1, 2, 1, 2),) * 3
    assert str(long) == "0:0;1:1,3;2:2,4"  # printed back in the short form
    mixed = Plan.parse("0:0;1:1,3;2:2,4|0:0;1:1,2;2:3,4|0:0;1:1,3;2:2,4", src, dst)
    assert "|" in str(mixed) and Plan.parse(str(mixed), src, dst) == mixed


def test_whitespace_is_tolerated():
    src, dst = parse_arch("cifar_resnet_20"), parse_arch("cifar_resnet_32")
    assert Plan.parse(" 0:0; 1:1,2 ;2:3, 4 ", src, dst).mapping == "0:0;1:1,2;2:3,4"


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("m", range(1, 15))
def test_presets_invert_each_other(n, m):
    if m < n:
        return
    src = parse_arch(f"cifar_resnet_s{n + 1}-{n + 1}-{n + 1}")
    dst = src.with_stages((m + 1,) * 3)
    up = build_plan(src, dst, "interpolate")
    assert up.fill[0] == tuple(sorted(up.fill[0]))  # consecutive copies
    counts = [up.fill[0].count(i) for i in range(1, n + 1)]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    down = build_plan(dst, src, "interleave")
    assert tuple(up.fill[0][j] for j in down.fill[0]) == tuple(range(n + 1))
    app = build_plan(src, dst, "append")
    assert sorted(app.fill[0]) == sorted(up.fill[0])
    tail = build_plan(dst, src, "tail")
    assert tuple(app.fill[0][j] for j in tail.fill[0]) == tuple(range(n + 1))
    head = build_plan(dst, src, "head")
    assert head.fill[0] == (0, *range(m - n + 1, m + 1))


R20, R32 = parse_arch("cifar_resnet_20"), parse_arch("cifar_resnet_32")
BAD = [
    # (mapping, src, dst, fragments the message must contain)
    ("0:0;1:1;2:3,4", R20, R32, ["stage 1", "position 2", "filled by no block"]),
    ("0:0;1:1,2;2:2,3,4", R20, R32, ["stage 1", "'2:2,3,4'", "position 2 is filled twice"]),
    ("0:0,1;1:2;2:3,4", R20, R32, ["stage 1", "'0:0,1'", "block 0", "position 0 and only there"]),
    ("0:1;1:0,2;2:3,4", R20, R32, ["stage 1", "'0:1'", "position 0 and only there"]),
    ("1:1,2;2:3,4;0:0,0", R20, R32, ["stage 1", "'0:0,0'", "filled twice"]),
    ("1:0,1,2;2:3,4", R20, R32, ["stage 1", "'1:0,1,2'", "position 0 and only there"]),
    ("0:0;1:1,2;2:3,5", R20, R32, ["stage 1", "'2:3,5'", "position 5 is out of range", "0..4"]),
    ("0:0;1:1,2;3:3,4", R20, R32, ["stage 1", "'3:3,4'", "block 3 is out of range", "0..2"]),
    ("0:0;1:1,2;2:3,4|0:0;1:1,2;2:3,4", R20, R32, ["2 stage mappings", "3 stages"]),
    ("0:0;1:1,2;2:3,4||0:0;1:1,2;2:3,4", R20, R32, ["stage 2", "empty"]),
    ("0:0;1:1-2;2:3,4", R20, R32, ["stage 1", "'1:1-2'", "malformed"]),
    ("0:0;;1:1,2;2:3,4", R20, R32, ["stage 1", "''", "malformed"]),
    ("0=0;1:1,2;2:3,4", R20, R32, ["stage 1", "'0=0'", "malformed"]),
    ("0:0;1:1,2;2:3,4;1:3", R20, R32, ["stage 1", "'1:3'", "listed twice"]),
    ("1:1,2;2:3,4;", R20, R32, ["stage 1", "malformed"]),
    ("1:1,2,3,4", R20, R32, ["stage 1", "block 0 is not mapped"]),
    ("", R20, R32, ["empty"]),
    (
        "0:0;1:1,2",
        parse_arch("imagenet_resnet_18"),
        parse_arch("imagenet_resnet_34"),
        ["no '|'", "every stage", "4 stage mappings"],
    ),
    (
        "0:0;1:1|0:0;1:1|0:0;1:1|0:0;1:1,2",
        parse_arch("imagenet_resnet_18"),
        parse_arch("imagenet_resnet_34"),
        ["stage 1", "position 2 is filled by no block"],
    ),
]


@pytest.mark.parametrize("text,src,dst,fragments", BAD, ids=[b[0] or "empty" for b in BAD])
def test_bad_mappings_name_stage_token_and_rule(text, src, dst, fragments):
    with pytest.raises(EttError) as info:
        Plan.parse(text, src, dst)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)
    assert "\n" not in msg


def test_shape_mismatch_is_refused():
    src = parse_arch("cifar_resnet_20")
    wide = dataclasses.replace(parse_arch("cifar_resnet_32"), width=32)
    with pytest.raises(EttError, match=r"stage 1, token '0:0': shape mismatch: 'conv1.weight' of block 0"):
        Plan.parse("0:0;1:1,2;2:3,4", src, wide)
    # position 0 of a later stage downsamples and has a shortcut: a normal block cannot fill it
    r = parse_arch("cifar_resnet_20")
    with pytest.raises(EttError, match="position 0 and only there"):
        Plan(r, r, ((0, 1, 2), (1, 0, 2), (0, 1, 2)))


def test_plan_value_checks_itself():
    with pytest.raises(EttError, match="out of range"):
        Plan(R20, R32, ((0, 1, 1, 2, 3),) * 3)
    with pytest.raises(EttError, match="fills 3 positions"):
        Plan(R20, R32, ((0, 1, 2),) * 3)


@pytest.mark.parametrize(
    "source,to,expected",
    [
        ("cifar_resnet_20", "resnet-56", "cifar_resnet_56"),
        ("cifar_resnet_20", "cifar_resnet_56", "cifar_resnet_56"),
        ("cifar_resnet_20_8", "resnet-56", "cifar_resnet_56_8"),
        ("cifar_resnet_20_8", "cifar_resnet_56", "cifar_resnet_56_8"),  # width follows the source
        ("cifar_resnet_20_8", "cifar_resnet_56_8", "cifar_resnet_56_8"),
        ("cifar_resnet_20", "cifar_resnet_s3-5-7", "cifar_resnet_s3-5-7"),
        ("imagenet_resnet_26", "resnet-34", "imagenet_resnet_34"),
        ("imagenet_resnet_26_bottleneck_8", "resnet-50", "imagenet_resnet_50_8"),
        ("imagenet_resnet_26_bottleneck_8", "imagenet_resnet_50_8", "imagenet_resnet_50_8"),
        ("cifar_vgg_16", "vgg-19", "cifar_vgg_19"),
        ("cifar_vgg_16_8", "cifar_vgg_19", "cifar_vgg_19_8"),
    ],
)
def test_target_names(source, to, expected):
    assert resolve_target(parse_arch(source), to).name == expected


def test_target_by_stages_and_classes_follow_source():
    src = parse_arch("cifar_resnet_20", num_classes=100)
    t = resolve_target(src, stages="5,5,5")
    assert t.name == "cifar_resnet_32" and t.num_classes == 100
    assert resolve_target(src, stages="4,6,8").name == "cifar_resnet_s4-6-8"
    assert resolve_target(src, "resnet-56").num_classes == 100
    prefixed = dataclasses.replace(parse_arch("imagenet_resnet_18"), prefix="model.")
    assert resolve_target(prefixed, "imagenet_resnet_34").prefix == "model."


@pytest.mark.parametrize(
    "source,kwargs,fragment",
    [
        ("cifar_resnet_20", {"to": "vgg-19"}, "names a vgg"),
        ("cifar_resnet_20", {"to": "cifar_vgg_19"}, "keeps the family"),
        ("cifar_resnet_20", {"to": "imagenet_resnet_34"}, "keeps the family"),
        ("cifar_resnet_20", {"to": "cifar_resnet_56_32"}, "keeps the width"),
        ("imagenet_resnet_26_bottleneck", {"to": "imagenet_resnet_34"}, "unit type"),
        ("cifar_resnet_20", {"stages": "3,3,3,3"}, "keeps the number of stages"),
        ("cifar_resnet_20", {"to": "cifar_resnet_s3-3"}, "keeps the number of stages"),
        ("cifar_resnet_20", {"stages": "3,0,3"}, "at least one"),
        ("cifar_resnet_20", {"stages": "a,b"}, "comma-separated"),
        ("cifar_resnet_20", {}, "name the target"),
        ("cifar_resnet_20", {"to": "resnet-56", "stages": "9,9,9"}, "not both"),
        ("cifar_resnet_20", {"to": "resnet-57"}, r"6n\+2"),
    ],
)
def test_bad_targets(source, kwargs, fragment):
    with pytest.raises(EttError, match=fragment):
        resolve_target(parse_arch(source), kwargs.get("to"), kwargs.get("stages"))


@pytest.mark.parametrize(
    "src,to,kwargs,fragment",
    [
        ("cifar_resnet_20", "resnet-56", {"verb": "squeeze"}, "use 'ett stretch'"),
        ("cifar_resnet_56", "resnet-20", {"verb": "stretch"}, "use 'ett squeeze'"),
        ("cifar_resnet_56", "resnet-20", {"order": "interpolate"}, "use 'ett squeeze'"),
        ("cifar_resnet_20", "resnet-56", {"drop": "tail"}, "use 'ett stretch'"),
        ("cifar_resnet_20", "cifar_resnet_s5-2-3", {}, "--mapping"),
        ("cifar_resnet_20", "resnet-32", {"order": "tail"}, "not a stretch preset"),
        ("cifar_resnet_20", "resnet-32", {"order": "append", "mapping": "0:0;1:1,2;2:3,4"}, "not both"),
        ("cifar_vgg_11", "vgg-13", {}, "only layer 0"),
    ],
)
def test_bad_directions(src, to, kwargs, fragment):
    with pytest.raises(EttError, match=fragment):
        make_plan(parse_arch(src), to, **kwargs)


def test_mixed_direction_with_mapping_is_allowed():
    plan = make_plan(R20, "cifar_resnet_s5-2-3", mapping="0:0;1:1,2;2:3,4|0:0;2:1|0:0;1:1;2:2")
    assert plan.dropped(1) == [1] and plan.replicated(0) == [1, 2]


def test_registry_is_the_source_of_choices_and_help():
    assert list(presets_for("stretch")) == ["interpolate", "append", "middle"]
    assert list(presets_for("squeeze")) == ["interleave", "tail", "head"]
    for name, p in PRESETS.items():
        assert name in preset_help(p.verb) and p.help in preset_help(p.verb)


def test_docstring_examples_run():
    import doctest

    import ettcli.plan

    result = doctest.testmod(ettcli.plan)
    assert result.attempted >= 5 and result.failed == 0


def test_the_plan_carries_its_verb():
    r20, r32 = parse_arch("cifar_resnet_20"), parse_arch("cifar_resnet_32")
    assert make_plan(r20, "resnet-32").verb == "stretch" and make_plan(r32, "resnet-20").verb == "squeeze"
    assert build_plan(r32, r20, "tail").verb == "squeeze"  # the preset's verb
    assert Plan.parse("0:0;1:1,2;2:3,4", r20, r32).verb == "stretch"  # the depths' direction
    with pytest.warns(EttWarning):
        assert make_plan(r20, "resnet-20", verb="squeeze", mapping="0:0;1:1;2:2").verb == "squeeze"  # as given
    mixed = make_plan(r20, stages="2,4,3", mapping="0:0;1:1|0:0;1:1,2;2:3|0:0;1:1;2:2")
    assert mixed.verb is None
    from transform_util import labelled_ticket

    from ettcli.transform import apply_plan

    assert apply_plan(labelled_ticket(r20.with_stages((3, 3, 3))), mixed).metadata["ett.transform"] == "transform"


@pytest.mark.parametrize(
    ("src", "to", "mapping"),
    [
        ("cifar_resnet_20", "resnet-32", "0:0;1:1,2,3;2:4"),  # 1 1 1 | 2: the last unit once, at the end
        ("cifar_resnet_32", "resnet-56", "0:0;1:1,2,3;2:4,5;3:6,7;4:8"),
        ("cifar_resnet_14", "resnet-20", "0:0;1:1,2"),  # one unit after unit 0: interpolate
        ("cifar_resnet_20", "resnet-20", "0:0;1:1;2:2"),
    ],
)
def test_middle_keeps_the_last_unit_once_and_replicates_the_ones_between(src, to, mapping):
    assert make_plan(parse_arch(src), to, order="middle").mapping == mapping
