"""Portkey configs in the forms typed clients write them (pure: parse_config alone)."""

from __future__ import annotations

from typing import Any

import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.routing.portkey_config import DEFAULT_RETRY_CODES, parse_config

# Every optional field null, as pydantic's model_dump() (no exclude_none) or a TypeScript
# object with its undefined fields serialised as null writes a target.
_NULLS: dict[str, Any] = {
    "name": None, "weight": None, "api_key": None, "virtual_key": None, "custom_host": None,
    "override_params": None, "forward_headers": None, "request_timeout": None, "retry": None,
    "cache": None, "cb_config": None, "strategy": None, "targets": None, "aws_region": None,
    "before_request_hooks": None,
}


def test_null_optional_fields_are_absent() -> None:
    root = parse_config({
        **_NULLS, "provider": "a",
        "strategy": {"mode": "loadbalance", "on_status_codes": None, "cb_config": None,
                     "conditions": None, "default": None},
        "targets": [{**_NULLS, "provider": "b", "weight": 2},
                    {**_NULLS, "override_params": {"model": "m"}}],
    })
    first, second = root.targets
    assert root.on_status_codes is None and root.breaker is None
    assert (first.provider, first.weight) == ("b", 2.0)
    # a null virtual_key named no key of its own: the target keeps its parent's provider
    assert (second.provider, second.virtual_key, second.weight) == ("a", None, 1.0)
    assert second.override_params == {"model": "m"}
    assert second.cache is None and second.retry.attempts == 0
    assert second.provider_options == {} and second.timeouts == {}


def test_a_null_provider_beside_a_virtual_key_names_none() -> None:
    root = parse_config({"provider": "a", "strategy": {"mode": "fallback"},
                         "targets": [{"provider": None, "virtual_key": "vk"}]})
    assert (root.targets[0].provider, root.targets[0].virtual_key) == (None, "vk")


def test_null_fields_inside_retry_cache_and_cb_config_are_absent() -> None:
    node = parse_config({
        "provider": "a",
        "retry": {"attempts": 2, "on_status_codes": None, "use_retry_after_header": None},
        "cache": {"mode": "simple", "max_age": None},
        "cb_config": {"failure_threshold": 3, "failure_threshold_percentage": None,
                      "cooldown_interval": None, "failure_status_codes": None,
                      "minimum_requests": None},
    })
    assert (node.retry.attempts, node.retry.on_status_codes) == (2, DEFAULT_RETRY_CODES)
    assert node.retry.use_retry_after_header is True
    assert node.cache == {"mode": "simple"}
    assert node.breaker is not None
    assert (node.breaker.failure_threshold, node.breaker.cooldown_interval,
            node.breaker.minimum_requests) == (3, 30.0, 1)
    # a null attempts is no operator's "no retries": OneLLM's body retries may still apply
    assert parse_config({"provider": "a", "retry": {"attempts": None}}).retry.attempts_set is False


@pytest.mark.parametrize(("raw", "param"), [
    # null is "not set", not a value: what is required stays required
    ({"provider": "a", "cache": {"mode": None}}, "config.cache.mode"),
    ({"strategy": {"mode": None}, "targets": [{"provider": "a"}]}, "config.strategy.mode"),
    ({"strategy": None, "targets": [{"provider": "a"}]}, "config.strategy"),
    ({"strategy": {"mode": "fallback"}, "targets": None}, "config.targets"),
    ({"provider": "a", "cb_config": {"failure_threshold": None}}, "config.cb_config"),
])
def test_a_null_required_field_is_still_missing(raw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param


def test_camel_case_fields_are_portkeys_snake_case_ones() -> None:
    # Portkey's gateway reads its configs camelCased: a JavaScript client's keys work there
    root = parse_config({
        "provider": "a", "apiKey": "sk-parent", "requestTimeout": 2500,
        "overrideParams": {"max_tokens": 5},
        "cache": {"mode": "simple", "maxAge": 60},
        "retry": {"attempts": 2, "onStatusCodes": [429], "useRetryAfterHeader": False},
        "strategy": {"mode": "fallback", "onStatusCodes": [500],
                     "cbConfig": {"failureThreshold": 2, "cooldownInterval": 5000}},
        "targets": [{"virtualKey": "vk", "weight": 3, "forwardHeaders": ["X-Team"]},
                    {"customHost": "https://h.example", "overrideParams": {"top_p": 1}}],
    })
    assert root.on_status_codes == frozenset({500})
    assert root.breaker is not None and root.breaker.failure_threshold == 2
    assert root.breaker.cooldown_interval == 5.0
    vk, hosted = root.targets
    assert (vk.virtual_key, vk.provider, vk.api_key) == ("vk", None, None)
    assert vk.forward_headers == ("x-team",) and vk.weight == 3.0
    assert (hosted.api_key, hosted.custom_host) == ("sk-parent", "https://h.example")
    assert hosted.override_params == {"max_tokens": 5, "top_p": 1}
    assert hosted.timeouts == {"request": 2.5}
    assert hosted.retry.attempts == 2 and hosted.retry.on_status_codes == frozenset({429})
    assert hosted.retry.use_retry_after_header is False
    assert root.cache == {"mode": "simple", "max_age": 60}


def test_camel_case_stops_at_what_is_not_a_config_field() -> None:
    # an override's fields and a condition's query are the request's, never renamed
    node = parse_config({"provider": "a", "overrideParams": {"maxTokens": 5}})
    assert node.override_params == {"maxTokens": 5}
    node = parse_config({"strategy": {"mode": "conditional", "conditions": [
        {"query": {"metadata.userTier": {"$eq": "pro"}}, "then": "p"}]},
        "targets": [{"provider": "a", "name": "p"}]})
    assert node.conditions[0].query == {"metadata.userTier": {"$eq": "pro"}}


@pytest.mark.parametrize(("raw", "param"), [
    ({"provider": "a", "virtual_key": "x", "virtualKey": "y"}, "config.virtualKey"),
    ({"provider": "a", "cache": {"mode": "simple", "max_age": 1, "maxAge": 2}},
     "config.cache.maxAge"),
    # a camelCase name of no field is refused as written
    ({"provider": "a", "virtualKeys": "x"}, "config.virtualKeys"),
])
def test_a_field_given_twice_or_unknown_in_camel_case_is_a_400(raw: dict[str, Any],
                                                               param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param


def test_null_timeouts_are_not_set() -> None:
    """A typed client's timeouts object writes every key: a null `connect`, `first_token` or
    `idle` was a 400, and a null `total` lifted the total a parent or provider set."""
    nulls = {"connect": None, "first_token": None, "idle": None, "total": None}
    root = parse_config({"provider": "a", "timeouts": {"total": 30, "idle": 5},
                         "strategy": {"mode": "fallback"},
                         "targets": [{"provider": "b", "timeouts": nulls},
                                     {"provider": "c", "timeouts": {**nulls, "connect": 2}}]})
    first, second = root.targets
    assert first.timeouts == {"total": 30.0, "idle": 5.0}
    assert second.timeouts == {"total": 30.0, "idle": 5.0, "connect": 2.0}
    assert parse_config({"provider": "a", "timeouts": nulls}).timeouts == {}


def test_a_zero_total_lifts_the_total() -> None:
    root = parse_config({"provider": "a", "timeouts": {"total": 30},
                         "strategy": {"mode": "fallback"},
                         "targets": [{"provider": "b", "timeouts": {"total": 0}}]})
    assert root.targets[0].timeouts == {"total": None}  # (None: no total, over a provider's)
    for key, value in [("connect", 0), ("first_token", 0), ("idle", 0), ("total", False)]:
        with pytest.raises(InvalidRequest) as info:  # (no "none" for these: a hung upstream)
            parse_config({"provider": "a", "timeouts": {key: value}})
        assert info.value.param == f"config.timeouts.{key}"


@pytest.mark.parametrize(("raw", "param"), [
    ({"cache": {"mode": "simple", "maxAge": -1}}, "config.cache.maxAge"),
    ({"retry": {"attempts": 1, "onStatusCodes": "x"}}, "config.retry.onStatusCodes"),
    ({"retry": {"useRetryAfterHeader": "yes"}}, "config.retry.useRetryAfterHeader"),
    ({"overrideParams": {"stream": True}}, "config.overrideParams.stream"),
    ({"overrideParams": {"tools": "x"}}, "config.overrideParams.tools"),
    ({"requestTimeout": -5}, "config.requestTimeout"),
    ({"virtualKey": 5}, "config.virtualKey"),
    ({"forwardHeaders": 3}, "config.forwardHeaders"),
    ({"cbConfig": {"failureThreshold": 1, "cooldownInterval": -1}},
     "config.cbConfig.cooldownInterval"),
    ({"strategy": {"mode": "fallback", "cbConfig": {"failureThreshold": 0}}, "targets": [{}]},
     "config.strategy.cbConfig.failureThreshold"),
    ({"strategy": {"mode": "fallback"}, "targets": [{"cache": {"mode": "simple",
                                                               "maxAge": 0}}]},
     "config.targets[0].cache.maxAge"),
    # (snake_case as written stays so)
    ({"cache": {"mode": "simple", "max_age": -1}}, "config.cache.max_age"),
])
def test_a_400_names_a_field_as_the_client_wrote_it(raw: dict[str, Any], param: str) -> None:
    """A camelCase field is read as Portkey's snake_case one; its 400 named the snake_case
    one (`config.cache.max_age` for a bad `maxAge`): a field the client's config lacks."""
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param
    assert f"'{param}'" in info.value.message and f"'{param}'" in str(info.value)


@pytest.mark.parametrize(("timeouts", "param", "says"), [
    ({"total": -1}, "config.timeouts.total", "number of seconds (at least 0.001), or 0 for none"),
    ({"total": "30s"}, "config.timeouts.total", "or 0 for none"),
    ({"total": True}, "config.timeouts.total", "or 0 for none"),
    ({"idle": "30s"}, "config.timeouts.idle", "a number of seconds (at least 0.001)"),
    ({"connect": -5}, "config.timeouts.connect", "a number of seconds (at least 0.001)"),
    ({"first_token": False}, "config.timeouts.first_token", "number of seconds"),
    ({"frist_token": 5}, "config.timeouts.frist_token", "did you mean first_token?"),
    ({"request": 5}, "config.timeouts.request", "request_timeout"),
    ({"firstToken": "5"}, "config.timeouts.firstToken", "number of seconds"),
    ({"first_token": 5, "firstToken": 6}, "config.timeouts.firstToken", "a second time"),
])
def test_a_bad_timeout_is_a_400_saying_what_it_takes(timeouts: dict[str, Any], param: str,
                                                     says: str) -> None:
    """A total's error said 'must be a finite number ≥ 0.001' where 0 is its none, and none
    said seconds (`"30s"`); a misspelt key had no hint."""
    with pytest.raises(InvalidRequest) as info:
        parse_config({"provider": "a", "timeouts": timeouts})
    assert info.value.param == param
    assert says in info.value.message


def test_a_timeout_may_be_written_in_camel_case() -> None:
    node = parse_config({"provider": "a", "timeouts": {"firstToken": 5, "total": None}})
    assert node.timeouts == {"first_token": 5.0}


def test_request_timeout_and_timeouts_total_are_both_kept() -> None:
    """request_timeout (ms, Portkey's) is the wait for the answer to start; timeouts.total
    (s) the whole target: given together, on one target or inherited, each is kept."""
    root = parse_config({"provider": "a", "request_timeout": 5000, "timeouts": {"total": 60},
                         "strategy": {"mode": "fallback"},
                         "targets": [{"provider": "b"},
                                     {"provider": "c", "request_timeout": 2000},
                                     {"provider": "d", "timeouts": {"total": 0}},
                                     {"provider": "e", "requestTimeout": 0}]})
    assert root.timeouts == {"request": 5.0, "total": 60.0}
    inherits, own_request, no_total, zero = root.targets
    assert inherits.timeouts == {"request": 5.0, "total": 60.0}
    assert own_request.timeouts == {"request": 2.0, "total": 60.0}
    assert no_total.timeouts == {"request": 5.0, "total": None}
    assert zero.timeouts == {"request": 5.0, "total": 60.0}  # (0 sets none: the parent's)


@pytest.mark.parametrize("max_age", [-1, 0, "60s", True])
def test_a_bad_max_age_says_what_it_takes_at_once(max_age: Any) -> None:
    """-1 was told 'must be a finite number ≥ 0', and 0, written so, 'must be a positive
    number of seconds': a second 400 for following the first."""
    with pytest.raises(InvalidRequest) as info:
        parse_config({"cache": {"mode": "simple", "maxAge": max_age}})
    assert info.value.param == "config.cache.maxAge"
    assert "must be a positive number of seconds" in info.value.message


@pytest.mark.parametrize(("raw", "param", "says"), [
    ({"cb_config": {"failure_threshold": 1, "cooldown_interval": 0.5}},
     "config.cb_config.cooldown_interval", "milliseconds"),
    ({"cbConfig": {"failureThreshold": 1, "cooldownInterval": "30s"}},
     "config.cbConfig.cooldownInterval", "milliseconds"),
    ({"request_timeout": -5}, "config.request_timeout", "milliseconds"),
    ({"requestTimeout": "10s"}, "config.requestTimeout", "milliseconds"),
    # a percentage's one rule at once: -1 was told '≥ 0', and 0 then '(0, 100]'
    *[({"cb_config": {"failure_threshold_percentage": pct}},
       "config.cb_config.failure_threshold_percentage", "a percentage above 0, at most 100")
      for pct in (-1, 0, 101, "50%")],
])
def test_a_bad_config_number_says_its_unit(raw: dict[str, Any], param: str, says: str) -> None:
    """cooldown_interval and request_timeout are Portkey's milliseconds (timeouts and max_age
    are seconds): '30s' was told 'must be a finite number ≥ 1', not which unit to write it
    in (in seconds, 30 is a 30 ms cooldown)."""
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param
    assert says in info.value.message
