"""The YAML config: errors name file, key and reason; routing order; /v1/models; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamproxy.config import ConfigError, ServerConfig, Timeouts, load_config, parse_config
from streamproxy.errors import UnknownProvider
from streamproxy.routing.router import Router
from streamproxy.server.app import build_providers
from tests.helpers import make_config

EXAMPLE = """
server:
  port: 9999
  max_body_bytes: 2097152
  timeouts: {connect: 5, first_token: 60, idle: 30}
providers:
  claude:
    type: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANTHROPIC_API_KEY
    default_model: claude-sonnet-4-5
  gpt:
    type: openai
    api_key: sk-inline
    headers: {x-extra: "1"}
    models: [gpt-4o, gpt-4o-mini]
default_provider: claude
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamproxy.yaml"
    path.write_text(text)
    return path


def test_the_readme_example_loads(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.server.port == 9999
    assert config.server.timeouts.first_token == 60 and config.server.timeouts.total is None
    assert config.providers["claude"].api_key == "sk-ant-env"
    assert config.providers["gpt"].base_url == "https://api.openai.com/v1"
    assert "sk-" not in repr(config.providers["gpt"])


def test_a_secret_beginning_with_a_dollar_is_the_secret(tmp_path: Path) -> None:
    """`$ecretPw` is a password, not the shell's `$VAR` (a variable's name is upper case): it
    was refused as a reference, and the error printed it to the terminal and the logs."""
    from streamproxy.server.auth import parse_auth

    config = load_config(write(tmp_path, "providers: {x: {type: openai, api_key: $ecretPw}}\n"
                                         "auth: {keys: [{name: a, key: $0me-Pa55}, "
                                         "{name: b, key: $hunter2}]}"))
    assert config.providers["x"].api_key == "$ecretPw"
    assert len(parse_auth(config).keys) == 2
    with pytest.raises(ConfigError) as info:  # the shell's reference is still one
        load_config(write(tmp_path, "providers: {x: {type: openai, api_key: $OPENAI_API_KEY}}"))
    assert "write api_key_env: OPENAI_API_KEY" in info.value.reason


def test_a_dollar_in_a_header_or_url_is_left_as_it_is(tmp_path: Path) -> None:
    """Only `${VAR}` and `os.environ/VAR` are refused in a header, and `$VAR` in a base URL
    after its user info: a `$` elsewhere is a password's."""
    config = load_config(write(tmp_path, "providers: {x: {type: openai, headers: "
                                         "{x-pw: 'pa$$w0rd', x-tag: '$Secret', x-b: '${'}}}"))
    assert config.providers["x"].headers == {"x-pw": "pa$$w0rd", "x-tag": "$Secret", "x-b": "${"}
    config = load_config(write(tmp_path, "providers: {x: {type: openai, base_url: "
                                         "'https://u:$ECRET@llm.example.com/v1'}}"))
    assert config.providers["x"].base_url == "https://u:$ECRET@llm.example.com/v1"


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("providers: {x: {type: nope}}", "providers.x.type", "unknown provider type"),
    ("providers: {x: {type: openai, base_url: ftp://a}}", "providers.x.base_url", "http"),
    ("providers: {x: {type: openai, bogus: 1}}", "providers.x.bogus", "unknown key"),
    ("providers: {x: {type: openai}}\ndefault_provider: y", "default_provider", "not a"),
    ("providers: {x: {type: openai}}\nserver: {port: -1}", "server.port", "positive"),
    ("providers: {x: {type: openai, timeouts: {soon: 1}}}", "providers.x.timeouts.soon",
     "unknown timeout"),
    ("providers: {}", "providers", "non-empty"),
    ("providers: [a", "line", "invalid YAML"),
    # nothing expands it: the upstream would get the characters `${OPENAI_KEY}` as the key
    ("providers: {x: {type: openai, api_key: '${OPENAI_KEY}'}}", "providers.x.api_key",
     "write api_key_env: OPENAI_KEY"),
    # PyYAML keeps the last of two keys silently: one provider would have served as both.
    ("providers:\n  x: {type: mock}\n  x: {type: openai}", "line 3", "duplicate key 'x'"),
    ("nonsense: 1\nproviders: {x: {type: openai}}", "nonsense", "unknown key"),
    # A list or a mapping where a name goes: a config error, not a TypeError's traceback.
    ("providers: {x: {type: [openai]}}", "providers.x.type", "unknown provider type"),
    ("providers: {x: {type: openai}}\ndefault_provider: [x]", "default_provider", "not a"),
    ("providers: {x: {type: mock, wire: {openai: 1}}}", "providers.x.wire", "must be one of"),
    # YAML's .nan and .inf passed `<= 0`: a NaN first-token timeout expired every request at
    # once (a ValueError under uvloop), a NaN idle one cut every stream at its first timer.
    ("providers: {x: {type: mock}}\nserver: {timeouts: {idle: .nan}}", "server.timeouts.idle",
     "finite"),
    ("providers: {x: {type: mock, timeouts: {first_token: .nan}}}",
     "providers.x.timeouts.first_token", "finite"),
    ("providers: {x: {type: mock, timeouts: {total: .inf}}}", "providers.x.timeouts.total",
     "finite"),
    ("providers: {x: {type: mock}}\nserver: {client_body_timeout: .inf}",
     "server.client_body_timeout", "finite"),
    ("providers: {x: {type: mock}}\nserver: {keepalive_interval: .nan}",
     "server.keepalive_interval", "finite"),
    ("providers: {x: {type: mock}}\nserver: {shutdown_grace: .nan}", "server.shutdown_grace",
     "finite"),
    # The drain delay keeps serving after SIGTERM: a NaN or endless one would never drain.
    ("providers: {x: {type: mock}}\nserver: {drain_delay: .nan}", "server.drain_delay", "finite"),
    ("providers: {x: {type: mock}}\nserver: {drain_delay: .inf}", "server.drain_delay", "finite"),
    ("providers: {x: {type: mock}}\nserver: {drain_delay: -1}", "server.drain_delay", "0 to 300"),
    ("providers: {x: {type: mock}}\nserver: {drain_delay: 301}", "server.drain_delay", "0 to 300"),
    ("providers: {x: {type: mock}}\nserver: {drain_delay: true}", "server.drain_delay", "0 to"),
    # Anthropic's options go into a header as they are: a number was a TypeError per request,
    # a CR/LF split the header (as the gateway refuses them from a client's config or header).
    ("providers: {x: {type: anthropic, anthropic_beta: 5}}", "providers.x.anthropic_beta",
     "beta names"),
    ("providers: {x: {type: anthropic, anthropic_beta: [b1, 3]}}",
     "providers.x.anthropic_beta", "beta names"),
    ("providers: {x: {type: anthropic, anthropic_beta: \"b1\\r\\nx-evil: 1\"}}",
     "providers.x.anthropic_beta", "beta names"),
    ("providers: {x: {type: anthropic, anthropic_version: \"2023-06-01\\r\\nx: 1\"}}",
     "providers.x.anthropic_version", "a version"),
    # OpenAI's organization and project go into headers as they are: a `|` block's line
    # break failed every request as it was sent, a number was a TypeError there, a list went
    # as the characters ['org-1'].
    ("providers: {x: {type: openai, organization: \"org-1\\n\"}}", "providers.x.organization",
     "an id of letters"),
    ("providers: {x: {type: openai, project: 12345}}", "providers.x.project", "an id of"),
    ("providers: {x: {type: openai, organization: [org-1]}}", "providers.x.organization",
     "an id of"),
    # Any provider's extra headers, likewise: both HTTP clients refused them as each request
    # was sent, a 500 with a traceback for every request to the provider.
    ("providers: {x: {type: openai, headers: {authorization: \"Bearer sk-1\\r\\nx-evil: 1\"}}}",
     "providers.x.headers.authorization", "control character"),
    ("providers: {x: {type: openai, headers: {\"x-a:b\": c}}}", "providers.x.headers.x-a:b",
     "not a header name"),
    # Nothing expands a reference: the header went upstream as the characters `${TOKEN}` (a
    # gateway's or a provider's 401 on every request, check-config said OK).
    ("providers: {x: {type: openai, headers: {cf-aig-authorization: 'Bearer ${CF_TOKEN}'}}}",
     "providers.x.headers.cf-aig-authorization", "${CF_TOKEN} is not expanded here"),
    ("providers: {x: {type: openai, headers: {Helicone-Auth: 'Bearer os.environ/HELICONE'}}}",
     "providers.x.headers.Helicone-Auth", "os.environ/HELICONE is not expanded here"),
    # Nothing expands a reference in a base URL: check-config said OK, and every request
    # failed to resolve the host `${ollama_host}` (a 502).
    ("providers: {x: {type: ollama, base_url: 'http://${OLLAMA_HOST}:11434'}}",
     "providers.x.base_url", "${OLLAMA_HOST} is not expanded here"),
    ("providers: {x: {type: openai, base_url: 'https://$LLM_HOST/v1'}}",
     "providers.x.base_url", "$LLM_HOST is not expanded here"),
    ("providers: {x: {type: openai, base_url: 'os.environ/LLM_URL'}}",
     "providers.x.base_url", "os.environ/LLM_URL is not expanded here"),
    # A base URL with no host or an impossible port failed every request with a 500.
    ("providers: {x: {type: openai, base_url: 'http://'}}", "providers.x.base_url", "no host"),
    ("providers: {x: {type: openai, base_url: 'https://u:sk-1@api.example.com:99999/v1'}}",
     "providers.x.base_url", "0 to 65535"),
])
def test_config_errors_name_the_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                                    reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert key in info.value.key
    assert reason in info.value.reason


@pytest.mark.parametrize(("text", "key", "reason"), [
    # The provider's listed only its type-specific keys, as if default_model were none of them.
    ("providers: {c: {type: anthropic, defualt_model: claude-sonnet-4-5}}",
     "providers.c.defualt_model", "unknown key for type anthropic; did you mean default_model? "
     "(known: anthropic_beta, anthropic_version, api_key, api_key_env, base_url, "
     "default_model, headers, models, timeouts, type)"),
    ("providers: {c: {type: openai, api_key_evn: OPENAI_API_KEY}}", "providers.c.api_key_evn",
     "did you mean api_key_env?"),
    # server's named no key at all
    ("providers: {x: {type: mock}}\nserver: {prot: 8080}", "server.prot",
     "unknown key; did you mean port? (known: client_body_timeout,"),
    ("providers: {x: {type: mock}}\ndefault_provder: x", "default_provder",
     "unknown key; did you mean default_provider? (known: allowed_custom_hosts,"),
    ("providers: {x: {type: mock, timeouts: {frist_token: 5}}}", "providers.x.timeouts.frist_token",
     "unknown timeout; did you mean first_token? (known: connect, first_token, idle, total)"),
    ("providers: {x: {type: mock}}\nstorage: {pth: a.sqlite3}", "storage.pth",
     "did you mean path?"),
    ("providers: {x: {type: mock}}\ncache: {max_entires: 5}", "cache.max_entires",
     "did you mean max_entries?"),
    ("providers: {x: {type: mock}}\nlogging: {acces_log: false}", "logging.acces_log",
     "did you mean access_log?"),
    ("providers: {c: {type: antropic}}", "providers.c.type",
     "unknown provider type 'antropic'; did you mean anthropic? (known: anthropic, azure,"),
    # OneLLM's names for two of our types
    ("providers: {g: {type: google}}", "providers.g.type",
     "unknown provider type 'google'; did you mean gemini?"),
    ("providers: {v: {type: vertexai}}", "providers.v.type", "did you mean vertex?"),
    # nothing close: no guess
    ("providers: {x: {type: mock}}\nserver: {zzz: 1}", "server.zzz", "unknown key (known: "),
])
def test_an_unknown_key_names_the_closest_known_one(tmp_path: Path, text: str, key: str,
                                                    reason: str) -> None:
    from streamproxy.server.app import check_sections

    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        check_sections(load_config(path))
    assert (info.value.key, info.value.source) == (key, str(path))
    assert reason in info.value.reason, info.value.reason


@pytest.mark.parametrize(("data", "key", "reason"), [
    ("providers:\n  x: {type: mock}\n# café\n".encode("latin-1"), "line 3", "not UTF-8 text"),
    (b"providers: {x: {type: mock, headers: " + b"[" * 5000 + b"]" * 5000 + b"}}", "",
     "nested too deeply"),
])
def test_a_file_yaml_cannot_read_is_a_config_error(tmp_path: Path, data: bytes, key: str,
                                                   reason: str) -> None:
    """A UnicodeDecodeError or a RecursionError escaped load_config: a traceback at start-up
    and check-config, and on SIGHUP the prefork master died, taking its workers with it."""
    path = tmp_path / "streamproxy.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.source, info.value.key, info.value.reason) == (str(path), key, reason)


def test_a_base_url_error_never_echoes_what_stands_where_the_port_goes(
        tmp_path: Path) -> None:
    # (`https://user:secret`, host and password with no `@`: urllib reads the secret as a port)
    path = write(tmp_path, "providers: {x: {type: openai, base_url: 'https://me:sk-secret'}}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "providers.x.base_url" and "sk-secret" not in str(info.value)


@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["plain", "bom"])
def test_a_json_config_indented_with_tabs_loads(tmp_path: Path, bom: str) -> None:
    """JSON is YAML's flow style and loaded so, but PyYAML takes no tab before a token: a JSON
    file indented with tabs (jq --tab, Go's MarshalIndent) failed as 'invalid YAML: found
    character '\\t' that cannot start any token'. With a BOM (as Windows editors save) it
    still failed: the JSON check saw no `{` first."""
    path = tmp_path / "proxy.json"
    path.write_text(bom + json.dumps({"server": {"port": 8788}, "providers": {
        "m": {"type": "mock", "default_model": "fast", "models": ["fast"]}},
        "default_provider": "m"}, indent="\t"), encoding="utf-8")
    config = load_config(path)
    assert (config.server.port, config.default_provider) == (8788, "m")
    assert config.providers["m"].models == ("fast",)


@pytest.mark.parametrize(("text", "key", "reason"), [
    # (as YAML's loader refuses one: two providers under one name would serve as one); named
    # by its line and column, as YAML's is (it was the key alone: no place to look in the file)
    ('{\n\t"providers": {"m": {"type": "mock"}, "m": {"type": "openai"}}\n}', "line 2",
     "invalid JSON: duplicate key 'm' in one mapping (column 39)"),
    ('{"providers": {"m": {"type": "mock",\n "headers": {"a": "1", "b": "2", "a": "3"}}}}',
     "line 2", "invalid JSON: duplicate key 'a' in one mapping (column 34)"),
    ('{"a": {"x": 1, "y": "{\\"x\\": [", "x": 2}}', "line 1",
     "invalid JSON: duplicate key 'x' in one mapping (column 34)"),
    # Python's json reads NaN and Infinity, which no JSON is: a tool that reads the file
    # (jq, an editor's schema) refuses it, and `override_params: {temperature: NaN}` loaded.
    ('{"providers": {"m": {"type": "mock"}},\n "configs": {"c": {"provider": "m",\n'
     '  "override_params": {"temperature": NaN}}}}', "line 3",
     "invalid JSON: NaN is no JSON number (column 38)"),
    ('{"server": {"drain_delay": -Infinity}, "providers": {"m": {"type": "mock"}}}', "line 1",
     "invalid JSON: -Infinity is no JSON number (column 28)"),
    ('{\n\t"providers": {"m": {"type": "mock"},}\n}', "line 2",
     "invalid JSON: Expecting property name enclosed in double quotes (column 38)"),
    # A .json file is JSON: re-read as YAML (whose flow style takes a trailing comma, a
    # comment, an unquoted key), one that jq, a JSON schema or another tool refuses passed.
    ('{"providers": {"m": {"type": "mock",}}}', "line 1",
     "invalid JSON: Expecting property name enclosed in double quotes (column 37)"),
    ('{"providers": {m: {"type": "mock"}}}', "line 1",
     "invalid JSON: Expecting property name enclosed in double quotes (column 16)"),
    ('providers:\n  m: {type: mock}\n', "line 1", "invalid JSON: Expecting value (column 1)"),
])
def test_a_json_config_error_names_its_line(tmp_path: Path, text: str, key: str,
                                            reason: str) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.reason) == (key, reason)


def test_a_yaml_merge_may_override_what_it_merges(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "providers:\n  x: &x {type: mock, default_model: a}\n"
                                         "  y: {<<: *x, default_model: b}\n"))
    assert config.providers["y"].default_model == "b"


def test_serve_reports_a_config_error_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: {x: {type: nope}}")
    proc = subprocess.run([sys.executable, "-m", "streamproxy", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"{path}: providers.x.type: unknown provider type" in proc.stderr
    assert "Traceback" not in proc.stderr


def router() -> Router:
    config = make_config({"mock": {"type": "mock"}, "openai": {"type": "openai"},
                          "claude": {"type": "anthropic"}}, default="mock")
    return Router(build_providers(config), config.default_provider,
                  config.server.timeouts)


@pytest.mark.parametrize(("headers", "model", "provider", "upstream_model"), [
    ({}, "gpt-4o", "mock", "gpt-4o"),
    ({}, "openai/gpt-4o", "openai", "gpt-4o"),
    ({}, "@claude/claude-x", "claude", "claude-x"),
    ({}, "meta-llama/Llama-3", "mock", "meta-llama/Llama-3"),  # not a provider name
    ({"x-portkey-provider": "claude"}, "openai/gpt-4o", "claude", "openai/gpt-4o"),
    ({"x-portkey-provider": "@openai"}, "openai/gpt-4o", "openai", "gpt-4o"),
    ({"x-portkey-provider": "openai"}, None, "openai", None),
])
def test_routing_order(headers: dict[str, str], model: str | None, provider: str,
                       upstream_model: str | None) -> None:
    target = router().resolve(headers, model)
    assert target.provider.name == provider
    assert target.model == upstream_model


def test_unknown_provider_names_the_configured_ones() -> None:
    with pytest.raises(UnknownProvider, match="mock, openai, claude"):
        router().resolve({"x-portkey-provider": "nope"}, "m")


async def test_models_lists_the_configured_models(default_proxy: Any) -> None:
    client = await default_proxy()
    resp = await client.get("/v1/models")
    data = (await resp.json())["data"]
    ids = {m["id"] for m in data}
    assert {"mock/fast", "mock/tool", "mock-openai/fast", "openai/gpt-4o-mini",
            "anthropic/claude-sonnet-4-5"} <= ids
    assert all(m["object"] == "model" for m in data)
    health = await client.get("/healthz")
    assert (await health.json()) == {"status": "ok"}


def test_a_configured_header_in_any_case_is_one_header_on_the_wire() -> None:
    """`Authorization` in `headers:` (a gateway's token in front of a vLLM) replaces the
    `authorization` the provider would set from the client's key, instead of going as a
    second Authorization header beside it; where the provider's own auth wins, it still wins."""
    import orjson

    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    providers = build_providers(make_config({
        "vllm": {"type": "vllm", "base_url": "http://127.0.0.1:8000/v1",
                 "headers": {"Authorization": "Bearer gateway-token"}},
        "az": {"type": "azure", "resource": "r", "api_version": "2024-10-21",
               "headers": {"Api-Key": "configured"}},
        "co": {"type": "cohere", "headers": {"Authorization": "Bearer configured"}},
    }, default="vllm"))
    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))

    def sent(name: str) -> dict[str, str]:
        provider = providers[name]
        return provider.build_request(req, Target(provider, "m", api_key="sk-client")).headers

    assert [(k, v) for k, v in sent("vllm").items() if k.lower() == "authorization"] == [
        ("authorization", "Bearer gateway-token")]
    assert [(k, v) for k, v in sent("az").items() if k.lower() == "api-key"] == [
        ("api-key", "configured")]
    assert [(k, v) for k, v in sent("co").items() if k.lower() == "authorization"] == [
        ("authorization", "Bearer sk-client")]


@pytest.mark.parametrize("betas", [["b1", "b2"], "b1, b2"])
def test_a_providers_betas_listed_or_comma_separated_are_one_header(betas: Any) -> None:
    import orjson

    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    provider = build_providers(make_config({
        "an": {"type": "anthropic", "api_key": "k", "anthropic_beta": betas}}))["an"]
    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert provider.build_request(req, Target(provider, "m")).headers["anthropic-beta"] == "b1,b2"


@pytest.mark.parametrize("betas", ["b1,b2,", " b1 , ,b2", ",b1,,b2", ["b1", "", "b2"],
                                   ["b1", " b2 ", " "]])
def test_a_providers_betas_with_an_empty_name_skip_it(betas: Any) -> None:
    """A trailing comma (`anthropic_beta: "b1,b2,"`, as a list is often left when edited) names
    no beta more: it was a config error ("must be beta names"), though the header skipped it."""
    import orjson

    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    provider = build_providers(make_config({
        "an": {"type": "anthropic", "api_key": "k", "anthropic_beta": betas}}))["an"]
    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert provider.build_request(req, Target(provider, "m")).headers["anthropic-beta"] == "b1,b2"


@pytest.mark.parametrize("betas", [",", " , ", [""], ""])
def test_a_providers_betas_naming_none_send_no_header(betas: Any) -> None:
    # As an empty list does: not an empty `anthropic-beta` header.
    import orjson

    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    provider = build_providers(make_config({
        "an": {"type": "anthropic", "api_key": "k", "anthropic_beta": betas}}))["an"]
    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert "anthropic-beta" not in provider.build_request(req, Target(provider, "m")).headers


@pytest.mark.parametrize(("written", "level"), [("INFO", "info"), ("Warning", "warning"),
                                                 ("debug", "debug")])
def test_the_log_level_is_any_case_as_its_environment_variable(
        tmp_path: Path, written: str, level: str) -> None:
    """STREAMPROXY_LOG_LEVEL=DEBUG was accepted, `server.log_level: DEBUG` refused at start."""
    config = load_config(write(tmp_path, f"server: {{log_level: {written}}}\n"
                                         "providers: {x: {type: mock}}"))
    assert config.server.log_level == level


@pytest.mark.parametrize("written", ["loud", "[info]", "5"])
def test_an_unknown_log_level_names_the_valid_ones(tmp_path: Path, written: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.log_level: must be one of debug, info, "
                                          "warning, error"):
        load_config(write(tmp_path, f"server: {{log_level: {written}}}\n"
                                    "providers: {x: {type: mock}}"))


@pytest.mark.parametrize("value", ["sk-abc123456\n", "  sk-abc123456\r\n", "\tsk-abc123456 "])
def test_a_key_read_from_the_environment_loses_its_surrounding_whitespace(
        tmp_path: Path, monkeypatch: Any, value: str) -> None:
    # A secret mounted from a file (Kubernetes) or written with `echo` ends in a newline; sent
    # as it was, no header could hold it and every request to the provider was a 500.
    monkeypatch.setenv("K", value)
    monkeypatch.setenv("V", value)
    config = load_config(write(tmp_path, "providers: {x: {type: openai, api_key_env: K}}\n"))
    assert config.providers["x"].api_key == "sk-abc123456"
    from streamproxy.config import required_secret
    assert required_secret({"api_key_env": "V"}, "f", "virtual_keys.v", "api_key",
                           "api_key_env") == "sk-abc123456"


@pytest.mark.parametrize(("text", "key"), [
    ("providers: {x: {type: openai, api_key_env: K}}\n", "providers.x.api_key_env"),
    ('providers: {x: {type: openai, api_key: "sk-abc\\n123456"}}\n', "providers.x.api_key"),
])
def test_a_key_with_a_control_character_inside_is_a_config_error_that_does_not_echo_it(
        tmp_path: Path, monkeypatch: Any, text: str, key: str) -> None:
    monkeypatch.setenv("K", "sk-abc\n123456")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key and "control character" in str(err.value)
    assert "123456" not in str(err.value)


@pytest.mark.parametrize(("text", "key"), [
    ("server: []\nproviders: {x: {type: openai}}\n", "server"),
    ("providers: {x: {type: openai, timeouts: []}}\n", "providers.x.timeouts"),
    ("providers: {x: {type: openai, timeouts: 0}}\n", "providers.x.timeouts"),
    ("providers: {x: {type: openai, headers: 0}}\n", "providers.x.headers"),
    ("providers: {x: {type: openai, models: {}}}\n", "providers.x.models"),
    ("providers: {x: {type: openai, models: 0}}\n", "providers.x.models"),
    ("providers: {x: {type: openai}}\nroutes: []\n", "routes"),
    ("providers: {x: {type: openai}}\nconfigs: []\n", "configs"),
    ("providers: {x: {type: openai}}\nvirtual_keys: ''\n", "virtual_keys"),
    ("providers: {x: {type: openai}}\nallowed_custom_hosts: {}\n", "allowed_custom_hosts"),
])
def test_an_empty_value_of_the_wrong_type_is_an_error(tmp_path: Path, text: str,
                                                      key: str) -> None:
    """Any empty value (`[]`, `0`, `''`) was read as "not given", so a mapping written as a
    list, or a list as a mapping, passed silently where a non-empty one is refused."""
    from streamproxy.routing.gateway import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(load_config(write(tmp_path, text)))
    assert info.value.key == key


def test_an_empty_mapping_or_null_where_a_mapping_goes_is_fine(tmp_path: Path) -> None:
    from streamproxy.routing.gateway import load_settings

    config = load_config(write(tmp_path, "server: {}\nproviders: {x: {type: openai, headers: {},"
                               " timeouts: {}, models: []}, y: {type: openai, headers: null,"
                               " timeouts: null, models: null}}\nroutes: {}\nconfigs: null\n"
                               "allowed_custom_hosts: []\n"))
    load_settings(config)
    assert config.providers["x"].headers == {} and config.providers["y"].models == ()


@pytest.mark.parametrize(("text", "key"), [
    ("providers: {x: {type: openai, api_key_env: '${OPENAI_API_KEY}'}}\n",
     "providers.x.api_key_env"),
    ("providers: {x: {type: openai, api_key_env: $OPENAI_API_KEY}}\n",
     "providers.x.api_key_env"),
    ("providers: {x: {type: openai, api_key_env: os.environ/OPENAI_API_KEY}}\n",
     "providers.x.api_key_env"),
    ("providers: {x: {type: openai}}\n"
     "virtual_keys: {v: {provider: x, api_key_env: '${OPENAI_API_KEY}'}}\n",
     "virtual_keys.v.api_key_env"),
    ("providers: {x: {type: bedrock, region: us-east-1,"
     " aws_access_key_id_env: '${OPENAI_API_KEY}', aws_secret_access_key: s}}\n",
     "providers.x.aws_access_key_id_env"),
])
def test_a_reference_where_a_variables_name_goes_says_to_write_the_name(
        tmp_path: Path, monkeypatch: Any, text: str, key: str) -> None:
    """`api_key_env: ${OPENAI_API_KEY}` looked for a variable named `${OPENAI_API_KEY}`:
    serve only warned that it was unset, and the client's own key went upstream."""
    from streamproxy.routing.gateway import load_settings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc123456")
    with pytest.raises(ConfigError) as info:
        load_settings(load_config(write(tmp_path, text)))
    assert info.value.key == key
    assert f"write {key.rpartition('.')[2]}: OPENAI_API_KEY" in info.value.reason


def test_an_auth_key_env_holding_a_reference_says_to_write_the_name(tmp_path: Path) -> None:
    from streamproxy.server.auth import parse_auth

    config = load_config(write(tmp_path, "providers: {x: {type: openai}}\n"
                               "auth: {keys: [{name: a, key_env: $PROXY_KEY}]}\n"))
    with pytest.raises(ConfigError) as info:
        parse_auth(config)
    assert info.value.key == "auth.keys[0].key_env"
    assert "write key_env: PROXY_KEY" in info.value.reason


@pytest.mark.parametrize("text", ["", "\n", "# providers: to come\n", "---\n", "\ufeff"])
def test_an_empty_file_is_refused_as_empty_not_as_the_embedded_default(
        tmp_path: Path, text: str) -> None:
    """An empty file (a truncated write, an unfilled ConfigMap) failed as "providers: must be
    a non-empty mapping", which did not say the file had nothing in it. It is not read as the
    embedded default: a reload would then swap a real config for the mock and forward
    clients' keys to OpenAI and Anthropic."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == ""
    assert info.value.reason == ("the file is empty: give at least `providers` (without "
                                 "--config, the embedded default is served)")


@pytest.mark.parametrize("ptype", ["openai", "ollama", "azure"])
def test_an_empty_base_url_is_an_error_not_the_types_default(tmp_path: Path,
                                                             ptype: str) -> None:
    """`base_url: ""` (a template's unset variable) read as "not given": an OpenAI-type entry
    meant for a local server sent its key, and every prompt, to api.openai.com."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers: {{x: {{type: {ptype}, base_url: '', "
                                    "api_key: sk-local}}\n"))
    assert info.value.key == "providers.x.base_url"
    assert "is empty" in info.value.reason


@pytest.mark.parametrize(("entry", "key"), [
    ({"api_key": "", "api_key_env": "R274_SET_KEY"}, "api_key"),
    ({"api_key": "   "}, "api_key"),
    ({"api_key_env": ""}, "api_key_env"),
])
def test_an_empty_provider_key_field_is_an_error(monkeypatch: Any, entry: dict[str, Any],
                                                 key: str) -> None:
    """`api_key: ""` (an unset template variable) was read as "no key": api_key_env beside it
    was ignored and the client's own key went upstream."""
    monkeypatch.setenv("R274_SET_KEY", "sk-from-env")
    with pytest.raises(ConfigError) as e:
        parse_config({"providers": {"gpt": {"type": "openai", **entry}}}, "f.yaml")
    assert e.value.key == f"providers.gpt.{key}"
    assert "empty" in e.value.reason


_KEY_AS_NAME = "sk-proj-R274-secret-9"


@pytest.mark.parametrize(("data", "key"), [
    ({"providers": {"gpt": {"type": "openai", "api_key_env": _KEY_AS_NAME}}},
     "providers.gpt.api_key_env"),
    ({"providers": {"b": {"type": "bedrock", "region": "us-east-1",
                          "aws_access_key_id_env": "R274_ID",
                          "aws_secret_access_key_env": _KEY_AS_NAME}}},
     "providers.b.aws_secret_access_key_env"),
])
def test_a_key_written_where_its_variables_name_goes_is_an_error(
        data: dict[str, Any], key: str) -> None:
    """`api_key_env: sk-proj-...` named a variable never set: serve only warned, and the
    client's own key went upstream. An error naming the field, never the value."""
    with pytest.raises(ConfigError) as e:
        parse_config(data, "f.yaml")
    assert e.value.key == key
    assert _KEY_AS_NAME not in str(e.value)


@pytest.mark.parametrize("written", ['" sk-abc123456 "', '"sk-abc123456\\n"',
                                     "|\n        sk-abc123456\n"])
def test_an_inline_key_loses_its_surrounding_whitespace(tmp_path: Path, written: str) -> None:
    """A key pasted with a space or a line break around it (a YAML block scalar keeps its
    last newline) went upstream as it was, and the provider answered 401 (or, a newline, it
    was refused): it is stripped, as a key read from the environment is."""
    from streamproxy.server.auth import parse_auth

    config = load_config(write(tmp_path, f"providers:\n  x:\n    type: openai\n"
                                         f"    api_key: {written}\n"
                                         f"auth:\n  keys:\n    - name: a\n"
                                         f"      key: {written}\n"))
    assert config.providers["x"].api_key == "sk-abc123456"
    auth = parse_auth(config)
    assert auth is not None and auth.identify("sk-abc123456") is auth.keys[0]
    from streamproxy.config import required_secret
    assert required_secret({"api_key": " sk-abc123456\n"}, "f", "virtual_keys.v", "api_key",
                           "api_key_env") == "sk-abc123456"


@pytest.mark.parametrize(("text", "key"), [
    ("auth: {keys: [{name: a, key: '   '}]}\n", "auth.keys[0].key"),
    ("auth: {keys: [{name: a, key: \"\\n\"}]}\n", "auth.keys[0].key"),
    ("virtual_keys: {v: {provider: x, api_key: '  '}}\n", "virtual_keys.v.api_key"),
])
def test_a_secret_of_whitespace_alone_is_a_config_error(tmp_path: Path, text: str,
                                                         key: str) -> None:
    """An auth key or a virtual key's secret of spaces only (an unset template variable in
    quotes) was accepted: a proxy key no client could present (the presented key is
    stripped), a virtual key whose spaces went upstream as the provider's key (its 401)."""
    from streamproxy.routing.gateway import load_settings
    from streamproxy.server.auth import parse_auth

    config = load_config(write(tmp_path, "providers: {x: {type: openai}}\n" + text))
    with pytest.raises(ConfigError) as info:
        parse_auth(config)
        load_settings(config)
    assert info.value.key == key and "non-empty" in info.value.reason


@pytest.mark.parametrize(("url", "ref"), [
    ("https://my.openai.azure.com/openai/deployments/$DEPLOYMENT", "$DEPLOYMENT"),
    ("https://llm.example.com/$API_VERSION/", "$API_VERSION"),
    ("https://u:pw@llm.example.com/v1?api-version=$AZURE_API_VERSION", "$AZURE_API_VERSION"),
])
def test_a_shell_reference_in_a_base_urls_path_or_query_is_a_config_error(
        tmp_path: Path, url: str, ref: str) -> None:
    """`$VAR` was looked for in the host alone: one in the path or query went upstream as
    those very characters (the provider's 404) on every request."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers: {{x: {{type: openai, base_url: '{url}'}}}}"))
    assert info.value.key == "providers.x.base_url"
    assert info.value.reason.startswith(f"{ref} is not expanded here") and "pw" not in str(
        info.value)


@pytest.mark.parametrize(("section", "key"), [
    ({"providers": {"p": {"type": "openai", "api_key_env": "TEAM_KEY "}}},
     "providers.p.api_key_env"),
    ({"providers": {"p": {"type": "mock"}},
      "auth": {"keys": [{"name": "a", "key_env": " TEAM_KEY"}]}}, "auth.keys[0].key_env"),
    ({"providers": {"p": {"type": "mock"}},
      "virtual_keys": {"vk": {"provider": "p", "api_key_env": "TEAM_KEY\n"}}},
     "virtual_keys.vk.api_key_env"),
    ({"providers": {"p": {"type": "vertex", "project": "x", "location": "global",
                          "token_env": "TEAM_KEY "}}}, "providers.p.token_env"),
    ({"providers": {"p": {"type": "bedrock", "region": "us-east-1",
                          "aws_access_key_id_env": "TEAM_KEY ",
                          "aws_secret_access_key_env": "TEAM_KEY"}}},
     "providers.p.aws_access_key_id_env"),
])
def test_a_variables_name_with_spaces_around_it_is_said_so(
        section: dict[str, Any], key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`api_key_env: "TEAM_KEY "` (a paste's space, quoted) was refused as "no environment
    variable's name (the key itself?)": the operator looked at a name that is one."""
    from streamproxy.server.app import create_app

    monkeypatch.setenv("TEAM_KEY", "k")
    with pytest.raises(ConfigError) as info:
        create_app(parse_config(section, "f.yaml"))  # (auth and virtual keys: as it starts)
    assert info.value.key == key
    assert "spaces around it" in info.value.reason and "key itself" not in info.value.reason


NON_ASCII_KEYS = ["\u201csk-proj-abc123\u201d", "sk-proj-abc123\u200b", "sk-proj-abc\u00a0123"]


@pytest.mark.parametrize("secret", NON_ASCII_KEYS)
@pytest.mark.parametrize("where", ["inline", "env"])
def test_a_provider_key_that_is_not_ascii_is_a_config_error(
        secret: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Smart quotes pasted from a document, a zero-width or non-breaking space: the key was
    accepted and sent (the provider's 401 with no hint, or an encoding error as the header
    was written). No provider issues such a key: refused with the field, the key not shown."""
    monkeypatch.setenv("SP_TEST_KEY", secret)
    entry = {"api_key": secret} if where == "inline" else {"api_key_env": "SP_TEST_KEY"}
    field = next(iter(entry))
    for section in ({"providers": {"p": {"type": "openai", **entry}}},
                    {"providers": {"p": {"type": "openai"}},
                     "virtual_keys": {"vk": {"provider": "p", **entry}}}):
        from streamproxy.server.app import create_app

        with pytest.raises(ConfigError) as info:
            create_app(parse_config(section, "f.yaml"))
        assert info.value.key.endswith(f".{field}") and "ASCII" in info.value.reason
        assert secret.strip() not in str(info.value) and "abc" not in str(info.value)


@pytest.mark.parametrize("secret", NON_ASCII_KEYS)
def test_a_bedrock_static_key_that_is_not_ascii_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"b": {"type": "bedrock", "region": "us-east-1",
                                          "aws_access_key_id": "AKIDEXAMPLE",
                                          "aws_secret_access_key": secret}}}, "f.yaml")
    assert info.value.key == "providers.b.aws_secret_access_key"
    assert "ASCII" in info.value.reason and "abc" not in str(info.value)


@pytest.mark.parametrize(("url", "reason"), [
    # Azure's "Target URI", pasted whole: the paths went after the query, every request to /v1's
    # parent with `?api-version=…/chat/completions` (the provider's 404), check-config said OK.
    ("https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21",
     "query"),
    ("https://api.example.com/v1?team=a", "query"),
    ("https://api.example.com/v1#chat", "fragment"),  # (the paths dropped with it: POST /v1)
    ("https://api.example.com/v1 ", "space"),  # a paste's, quoted: POST /v1%20/chat/completions
    (" https://api.example.com/v1", "space"),  # (was "must start with http://")
    ("https://api.example.com/my models/v1", "space"),
])
def test_a_base_url_with_a_query_fragment_or_space_is_a_config_error(
        tmp_path: Path, url: str, reason: str) -> None:
    """The provider's paths are appended to its base_url, as to a custom_host, which refuses
    the same (README, Gateway controls)."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers: {{x: {{type: openai, base_url: '{url}'}}}}"))
    assert info.value.key == "providers.x.base_url" and reason in info.value.reason
    assert "api-version" not in str(info.value) and "team" not in str(info.value)  # (not echoed)


@pytest.mark.parametrize(("ptype", "url", "ending"), [
    # (the request went to /v1/v1/messages: Anthropic's 404 on every one, check-config OK)
    ("anthropic", "https://api.anthropic.com/v1", "/v1"),
    ("anthropic", "https://api.anthropic.com/v1/messages/", "/v1/messages"),
    ("cohere", "https://api.cohere.com/v2", "/v2"),
    ("cohere", "https://api.cohere.com/v1", "/v1"),
    ("cohere", "https://api.cohere.com/v2/chat", "/v2/chat"),
    # the endpoint pasted whole: /v1/chat/completions/chat/completions
    ("openai", "https://api.openai.com/v1/chat/completions", "/chat/completions"),
    ("groq", "https://api.groq.com/openai/v1/chat/completions", "/chat/completions"),
    ("ollama", "http://127.0.0.1:11434/api/chat", "/api/chat"),
    # /v1beta/v1beta/models/…; Gemini's OpenAI-compatible root, for type gemini
    ("gemini", "https://generativelanguage.googleapis.com/v1beta", "/v1beta"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai/", "/openai"),
    ("vertex", "https://us-central1-aiplatform.googleapis.com/v1", "/v1"),
])
def test_a_base_url_ending_in_the_path_its_type_appends_is_a_config_error(
        tmp_path: Path, ptype: str, url: str, ending: str) -> None:
    extra = ", project: p, location: us-central1" if ptype == "vertex" else ""
    text = f"providers: {{x: {{type: {ptype}, base_url: '{url}'{extra}}}}}"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "providers.x.base_url"
    assert f"ends in {ending}" in info.value.reason, info.value.reason


@pytest.mark.parametrize(("ptype", "url"), [
    ("anthropic", "https://gw.example.com/anthropic"), ("cohere", "https://api.cohere.com"),
    ("openai", "https://api.openai.com/v1"), ("openai", "https://api.cohere.ai/compatibility/v1"),
])
def test_a_base_url_before_the_types_path_is_taken(tmp_path: Path, ptype: str,
                                                   url: str) -> None:
    config = load_config(write(tmp_path, f"providers: {{x: {{type: {ptype}, base_url: '{url}'}}}}"))
    assert config.providers["x"].base_url == url


@pytest.mark.parametrize(("entry", "key", "ref"), [
    # check-config said OK ("models=${DEFAULT_MODEL}"); a request naming no model went upstream
    # with the model `${DEFAULT_MODEL}`, the provider's 404 model_not_found.
    ("default_model: '${DEFAULT_MODEL}'", "providers.x.default_model", "${DEFAULT_MODEL}"),
    ("default_model: $DEFAULT_MODEL", "providers.x.default_model", "$DEFAULT_MODEL"),
    ("default_model: 'gpt-${VERSION}'", "providers.x.default_model", "${VERSION}"),
    ("models: [gpt-4o, 'os.environ/EXTRA_MODEL']", "providers.x.models[1]",
     "os.environ/EXTRA_MODEL"),
])
def test_a_model_name_written_as_a_variable_is_a_config_error(
        tmp_path: Path, entry: str, key: str, ref: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  x: {{type: openai, {entry}}}\n"))
    assert info.value.key == key
    assert info.value.reason.startswith(f"{ref} is not expanded here"), info.value.reason


async def test_models_lists_each_model_once(proxy: Any) -> None:
    """A model the operator wrote twice under `models:` (a merge of two lists, a default also
    listed) is one entry: a model picker (Open WebUI, LibreChat) showed it twice, and
    OpenAI's list never repeats an id."""
    config = make_config({"m": {"type": "mock", "default_model": "fast",
                                "models": ["paced", "fast", "paced"]}}, default="m")
    client = await proxy(config)
    ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert ids == ["m/paced", "m/fast"]  # the config's order


async def test_a_routes_alias_is_listed_and_retrieved_as_a_chat_request_names_it(
        proxy: Any) -> None:
    """A `routes:` alias is a model a client sends (`model: "smart"` runs its config): it is
    listed, and `models.retrieve("smart")` finds it (it was a 404 while the chat answered),
    so a model picker offers it. A proxy key that may use none of the config's providers
    sees it no more than the providers' own models."""
    config = make_config(
        {"m": {"type": "mock", "default_model": "fast"},
         "o": {"type": "mock", "wire": "openai", "default_model": "fast"}},
        default="m", configs={"res": {"strategy": {"mode": "fallback"},
                                      "targets": [{"provider": "o"}]},
                              "cheap": {"virtual_key": "team"}},
        routes={"smart": "res", "cheap": "cheap"},
        virtual_keys={"team": {"provider": "m", "api_key": "sk-team"}},
        auth={"keys": [{"name": "all", "key": "sk-all-0123456789"},
                       {"name": "m-only", "key": "sk-monly-0123456789",
                        "allowed_providers": ["m"]}]})
    client = await proxy(config)
    everyone = {"authorization": "Bearer sk-all-0123456789"}
    resp = await client.get("/v1/models", headers=everyone)
    ids = [m["id"] for m in (await resp.json())["data"]]
    assert ids == ["m/fast", "o/fast", "smart", "cheap"]
    resp = await client.get("/v1/models/smart", headers=everyone)
    assert resp.status == 200
    assert await resp.json() == {"id": "smart", "object": "model", "created": 0,
                                 "owned_by": "streamproxy"}
    chat = await client.post("/v1/chat/completions", headers=everyone, json={
        "model": "smart", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 200
    m_only = {"authorization": "Bearer sk-monly-0123456789"}
    resp = await client.get("/v1/models", headers=m_only)
    assert [m["id"] for m in (await resp.json())["data"]] == ["m/fast", "cheap"]  # (m's key)
    resp = await client.get("/v1/models/smart", headers=m_only)
    assert resp.status == 404
    chat = await client.post("/v1/chat/completions", headers=m_only, json={
        "model": "smart", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 403
    assert (await resp.json())["error"]["code"] == "model_not_found"


def test_a_provider_given_both_api_key_and_api_key_env_is_an_error(monkeypatch: Any) -> None:
    """Both written (a template's two lines, one meant to replace the other): the inline key
    was used silently and the variable an operator rotated was never read."""
    monkeypatch.setenv("R348_KEY", "sk-from-env")
    with pytest.raises(ConfigError) as e:
        parse_config({"providers": {"gpt": {"type": "openai", "api_key": "sk-inline",
                                            "api_key_env": "R348_KEY"}}}, "f.yaml")
    assert e.value.key == "providers.gpt"
    assert "api_key" in e.value.reason and "api_key_env" in e.value.reason


def test_provider_names_written_as_numbers_are_the_names_they_read_as(tmp_path: Path) -> None:
    """A name is a string: `1` and `"1"` both became provider "1", the later silently replacing
    the earlier, and `default_provider: 1` was refused as not "1"."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "providers:\n  1: {type: mock}\n  '1': {type: openai}\n"))
    assert (info.value.key, info.value.reason) == (
        "line 3", "invalid YAML: duplicate key '1' in one mapping (1 and '1' are one name)")
    config = load_config(write(tmp_path, "providers:\n  1: {type: mock}\ndefault_provider: 1\n"))
    assert (list(config.providers), config.default_provider) == (["1"], "1")


@pytest.mark.parametrize(("entry", "key", "ref"), [
    ("deployment: '${AZURE_DEPLOYMENT}', api_version: 2024-10-21", "deployment",
     "${AZURE_DEPLOYMENT}"),
    ("deployment: gpt-4o, api_version: $AZURE_API_VERSION", "api_version",
     "$AZURE_API_VERSION"),
    ("deployment: os.environ/DEPLOY, api_version: 2024-10-21", "deployment", "os.environ/DEPLOY"),
])
def test_an_azure_deployment_or_api_version_written_as_a_variable_is_a_config_error(
        tmp_path: Path, entry: str, key: str, ref: str) -> None:
    """Nothing expands one: it went as those characters, URL-encoded into the path
    (/deployments/%24%7BAZURE_DEPLOYMENT%7D/...) or the api-version query, Azure's 404 or 400
    for every request, while check-config said OK (a resource's is refused by its rule)."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  az: {{type: azure, resource: myres, "
                                    f"{entry}}}\n"))
    assert info.value.key == f"providers.az.{key}"
    assert info.value.reason.startswith(f"{ref} is not expanded here"), info.value.reason


@pytest.mark.parametrize("none", ["0", "0.0", "null"])
def test_a_zero_total_is_none_as_in_a_clients_config(tmp_path: Path, none: str) -> None:
    """A client's config lifts a total with `total: 0` (its null is "not set"); the YAML's
    `total: 0` was an error ('must be a positive ... number'), only null lifted one there."""
    config = load_config(write(tmp_path, f"providers: {{x: {{type: mock, timeouts: "
                                         f"{{total: {none}}}}}}}\n"
                                         "server: {timeouts: {total: 30}}\n"))
    assert config.providers["x"].timeouts == {"total": None}
    routed = Router(build_providers(config), "x", config.server.timeouts)
    assert routed.resolve({}, None).timeouts.total is None  # (the server's 30 s lifted)
    config = load_config(write(tmp_path, "providers: {x: {type: mock}}\n"
                                         f"server: {{timeouts: {{total: {none}}}}}\n"))
    assert config.server.timeouts.total is None


@pytest.mark.parametrize("value", ["-1", "false", "true", "30s", ".inf"])
def test_a_bad_total_says_0_is_none(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers: {{x: {{type: mock, timeouts: "
                                    f"{{total: {value}}}}}}}\n"))
    assert "providers.x.timeouts.total" in str(info.value)
    assert "0 (or null) for none" in str(info.value)


@pytest.mark.parametrize(("entry", "key", "word"), [
    # A template that rendered Python's None (Jinja's `{{ model }}`), or a quoted null: read as
    # the name "None", a request naming no model went upstream with the model "None" (the
    # provider's 404 model_not_found), while check-config said OK.
    ("default_model: None", "providers.x.default_model", "None"),
    ("default_model: 'null'", "providers.x.default_model", "null"),
    ("models: [gpt-4o, None]", "providers.x.models[1]", "None"),
])
def test_a_model_name_written_as_none_is_a_config_error(
        tmp_path: Path, entry: str, key: str, word: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  x: {{type: openai, {entry}}}\n"))
    assert info.value.key == key
    assert info.value.reason.startswith(f"`{word}` is a string here"), info.value.reason
    assert "~" in info.value.reason  # (YAML's null, for one meaning "not set")


def test_an_azure_api_version_written_as_none_is_a_config_error(tmp_path: Path) -> None:
    """Sent as `?api-version=None`: Azure's 404 for every request."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "providers:\n  az: {type: azure, resource: myres, "
                                    "deployment: gpt4o, api_version: None}\n"))
    assert info.value.key == "providers.az.api_version"
    assert info.value.reason.startswith("`None` is a string here"), info.value.reason


@pytest.mark.parametrize("word", ["None", "'null'"])
def test_a_base_url_written_as_none_says_yamls_null_is_a_tilde(tmp_path: Path, word: str) -> None:
    """It was refused with "must start with http:// or https://" alone: no hint that the
    `None` a template wrote is a string, nor that leaving base_url out gives the default."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  x: {{type: openai, base_url: {word}}}\n"))
    assert info.value.key == "providers.x.base_url"
    assert "not YAML's null (`~`" in info.value.reason, info.value.reason
    assert "leave base_url out" in info.value.reason


def test_a_keyless_servers_dummy_api_key_none_still_loads(tmp_path: Path) -> None:
    """`api_key: none` is a dummy a local server (vLLM, llama.cpp) ignores: kept, not refused."""
    config = load_config(write(tmp_path, "providers:\n  x: {type: openai, base_url: "
                                         "'http://127.0.0.1:8000/v1', api_key: none}\n"))
    assert config.providers["x"].api_key == "none"


@pytest.mark.parametrize("key", ["host", "port", "log_level", "upstream_proxy", "upstream_client",
                                 "front", "timeouts", "shutdown_grace", "drain_delay",
                                 "client_header_timeout", "max_body_bytes"])
@pytest.mark.parametrize("null", ["~", "null", ""])
def test_a_server_key_given_null_is_not_set(tmp_path: Path, key: str, null: str) -> None:
    """`log_level: ~` (or a key left with nothing after it, as a template's unset variable
    leaves it) was an error ("must be one of ..."), while `workers: ~` meant the default, as
    `server: ~` or a provider's `timeouts: ~` do: null is "not set", its default served."""
    config = load_config(write(tmp_path, f"server:\n  {key}: {null}\n"
                                         "providers: {x: {type: mock}}\n"))
    assert config.server == ServerConfig()


def test_a_null_send_timeout_is_still_none(tmp_path: Path) -> None:
    """Its null is a value of its own (never cut a slow client), as documented: kept."""
    config = load_config(write(tmp_path, "server: {send_timeout: ~}\n"
                                         "providers: {x: {type: mock}}\n"))
    assert config.server.send_timeout is None and ServerConfig().send_timeout == 60.0


@pytest.mark.parametrize("key", ["connect", "first_token", "idle"])
def test_a_timeout_given_null_is_not_set(tmp_path: Path, key: str) -> None:
    """`timeouts: {idle: ~}` was an error ("must be a positive ... number") where `timeouts: ~`
    is not set, as a client's config reads a null timeout: a provider's null now leaves the
    server's, the server's the default. (`total: null` keeps its meaning: no total.)"""
    config = load_config(write(tmp_path, f"server: {{timeouts: {{{key}: ~, total: 30}}}}\n"
                                         f"providers: {{x: {{type: mock, timeouts: {{{key}: ~, "
                                         "total: ~}}}\n"))
    assert config.server.timeouts == Timeouts(total=30.0)
    assert config.providers["x"].timeouts == {"total": None}
    routed = Router(build_providers(config), "x", config.server.timeouts).resolve({}, None)
    assert routed.timeouts == Timeouts(total=None)


@pytest.mark.parametrize(("entry", "key"), [
    # Read as the region "none": every request went to bedrock-runtime.none.amazonaws.com
    # (or none-aiplatform.googleapis.com), a name that resolves nowhere, check-config said OK.
    ("type: bedrock, region: None, aws_access_key_id: AKIAABCDEFGHIJKLMNOP, "
     "aws_secret_access_key: abc", "providers.x.region"),
    ("type: vertex, project: my-proj, location: None, token_env: T", "providers.x.location"),
])
def test_a_region_written_as_none_is_a_config_error(tmp_path: Path, entry: str,
                                                     key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  x: {{{entry}}}\n"))
    assert info.value.key == key
    assert info.value.reason.startswith("`None` is a string here"), info.value.reason


@pytest.mark.parametrize(("entry", "key"), [
    # Taken as the name of a variable "None": check-config said OK, serve only warned that
    # "environment variable None is not set", and the client's own key went upstream.
    ("type: openai, api_key_env: None", "providers.x.api_key_env"),
    ("type: openai, api_key_env: 'null'", "providers.x.api_key_env"),
    ("type: vertex, project: my-proj, location: us-central1, token_env: None",
     "providers.x.token_env"),
    ("type: bedrock, region: us-east-1, aws_access_key_id_env: None, "
     "aws_secret_access_key_env: AWS_SECRET", "providers.x.aws_access_key_id_env"),
])
def test_an_env_name_written_as_none_says_yamls_null_is_a_tilde(tmp_path: Path, entry: str,
                                                                 key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"providers:\n  x: {{{entry}}}\n"))
    assert info.value.key == key
    assert "is a string here, not YAML's null (`~`" in info.value.reason, info.value.reason
