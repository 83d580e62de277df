from __future__ import annotations

import pytest

from normsearch.errors import NormsearchError
from normsearch.norms import NormSpec, make_norm, validate_spec


@pytest.mark.parametrize(
    "text",
    [
        "bn",
        "ibn:ratio=0.25",
        "sn:mean=in,mode=hard,var=bn",
        "gn:groups=8",
        "crossnorm:crop=style,threshold=0.2",
        "sn:last_gamma=true,unbiased=false",
    ],
)
def test_str_round_trips(text: str) -> None:
    spec = NormSpec.parse(text)
    assert str(spec) == text
    assert NormSpec.parse(str(spec)) == spec


def test_parameter_order_does_not_matter_and_values_are_typed() -> None:
    a = NormSpec.parse("sn:var=in,mode=hard,mean=bn")
    b = NormSpec.of("sn", mode="hard", mean="bn", var="in")
    assert a == b and hash(a) == hash(b)
    spec = NormSpec.parse("x:a=1,b=0.5,c=true,d=word")
    assert spec.kwargs == {"a": 1, "b": 0.5, "c": True, "d": "word"}


def test_coerce_accepts_mapping() -> None:
    assert NormSpec.coerce({"kind": "ibn", "ratio": 0.25}) == NormSpec.parse("ibn:ratio=0.25")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown normalizer kind 'nope'; allowed: bn, in"),
        ("ibn:rate=0.5", "unknown parameter 'rate' for ibn; allowed: ratio"),
        ("ibn:ratio=high", "parameter 'ratio' must be int|float"),
        ("sn:mode", "is not key=value"),
        ("ibn:ratio=1.5", "ibn: ratio must be in [0, 1], got 1.5"),
        ("sn:mode=hard,mean=gn", "sn: mean must be one of in|ln|bn"),
        ("crossnorm:mode=3ins", "crossnorm: mode must be one of 2ins|1ins"),
        ("selfnorm:form=wide", "selfnorm: form must be one of tied|two_branch"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(NormsearchError, match=None) as info:
        make_norm(spec, 8)
    assert message in str(info.value)


def test_group_norm_error_names_channels_and_groups() -> None:
    with pytest.raises(NormsearchError) as info:
        make_norm("gn:groups=3", 16)
    assert "groups=3" in str(info.value) and "16 channels" in str(info.value)


def test_validate_spec_does_not_build() -> None:
    assert validate_spec("gn:groups=3") == NormSpec.of("gn", groups=3)
