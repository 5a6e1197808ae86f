"""`streamproxy check-config FILE`: prints what would be served (key names, never keys), or
`file: key: reason` and a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamproxy.cli import main

GOOD = """
server: {port: 9999, max_concurrent_streams: 50, client_body_timeout: 120, drain_delay: 5}
providers:
  mock: {type: mock, default_model: fast, models: [fast, slow]}
  openai: {type: openai, api_key: sk-configured-SECRET-1}
default_provider: mock
auth:
  keys:
    - name: team-a
      key: proxy-SECRET-2
      allowed_providers: [mock]
      rate_limit: {requests_per_minute: 120, burst: 10}
    - {name: team-b, key_env: CHECK_CONFIG_TEAM_B}
logging: {log_bodies: true}
"""


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    try:
        main(["check-config", str(path)])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out.replace(str(path), "FILE"), err.replace(str(path), "FILE")


def test_prints_each_providers_real_endpoint(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Bedrock, Vertex and Azure build their URL from other keys: that URL is printed, not
    `in-process` (the embedded mock's)."""
    code, out, err = run(tmp_path, """
providers:
  bedrock: {type: bedrock, region: eu-west-1}
  vertex: {type: vertex, project: p, location: europe-west4}
  azure: {type: azure, resource: contoso, api_version: "2024-10-21"}
  mock: {type: mock}
""", capsys)
    assert code == 0, err
    assert "base_url=https://bedrock-runtime.eu-west-1.amazonaws.com " in out
    assert "base_url=https://europe-west4-aiplatform.googleapis.com " in out
    assert "base_url=https://contoso.openai.azure.com " in out
    assert "provider mock: type=mock base_url=in-process " in out


def test_prints_what_it_would_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECK_CONFIG_TEAM_B", "proxy-SECRET-3")
    code, out, err = run(tmp_path, GOOD, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "FILE: OK"
    assert "listen: 127.0.0.1:9999" in lines
    assert any(line.startswith("provider mock (default): type=mock") and "fast, slow" in line
               for line in lines)
    assert any(line.startswith("provider openai: type=openai") and "configured key" in line
               for line in lines)
    assert "default provider: mock" in lines
    assert ("auth: on, 2 key(s): team-a (providers=mock rate=120/min burst=10); team-b"
            in lines)
    assert "logging: level=info access_log=on request_bodies=on" in lines
    assert any(line.startswith("limits:") and "concurrent_streams=50/worker" in line
               and "header_timeout=60s body_timeout=120s" in line for line in lines)
    assert "shutdown: drain_delay=5s grace=30s" in lines
    assert "SECRET" not in out + err


def _shown_with_server_setting(tmp_path: Path, setting: str,
                               capsys: pytest.CaptureFixture[str]) -> list[str]:
    """check-config's lines for a config whose `server` has `setting` (and a port); it is OK."""
    code, out, err = run(tmp_path, f"""
server:
  port: 9999
  {setting}
providers: {{mock: {{type: mock}}}}
""", capsys)
    assert code == 0, err
    return out.splitlines()


@pytest.mark.parametrize(("setting", "shown"), [
    ("workers: 3", "workers: 3"),
    ("workers: null", "workers: 5 (one per usable CPU)"),
    ("", "workers: 5 (one per usable CPU)")])
def test_the_worker_count_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, setting: str,
                                   shown: str) -> None:
    """It was not: an operator could not see how many processes serve would fork (each with
    its own limits: concurrent_streams is per worker), nor that server.workers took."""
    from streamproxy import cli

    monkeypatch.setattr(cli, "default_workers", lambda: 5)
    assert shown in _shown_with_server_setting(tmp_path, setting, capsys)


_PROXY_VARIABLES = [f"{name}_proxy" for name in ("http", "https", "all", "no")]


@pytest.mark.parametrize(("setting", "environ", "shown"), [
    ("none", {"HTTPS_PROXY": "http://p:1"}, "egress proxy: none"),
    ("env", {}, "egress proxy: none (from the environment: no HTTPS_PROXY, HTTP_PROXY or "
                "ALL_PROXY)"),
    ("env", {"HTTPS_PROXY": "http://user:SECRET@proxy.corp:3128", "no_proxy": "a.example,10/8"},
     "egress proxy: https=http://proxy.corp:3128 http=direct no_proxy=a.example,10/8 "
     "(from the environment)"),
    ("env", {"ALL_PROXY": "http://all.corp:8080"},
     "egress proxy: https=http://all.corp:8080 http=http://all.corp:8080 (from the "
     "environment)"),
    ("{url: 'http://u:SECRET@proxy.corp:3128', no_proxy: [vllm.internal, 10.0.0.0/8]}", {},
     "egress proxy: http://proxy.corp:3128 no_proxy=vllm.internal,10.0.0.0/8"),
    ("proxy.corp:3128", {}, "egress proxy: http://proxy.corp:3128"),
])
def test_the_egress_proxy_in_effect_is_shown_without_its_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        setting: str, environ: dict[str, str], shown: str) -> None:
    """It was not: whether upstream requests would leave through a proxy (the environment's,
    which the shell running serve may not share with the one that ran check-config) went
    unsaid until a provider was unreachable."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(tmp_path, f"""
server: {{upstream_proxy: {setting}}}
providers: {{mock: {{type: mock}}}}
""", capsys)
    assert code == 0, err
    assert shown in out.splitlines()
    assert "SECRET" not in out + err


@pytest.mark.parametrize(("setting", "shown"), [("", "60s"), ("send_timeout: 7.5", "7.5s"),
                                                ("send_timeout: 0", "off"),
                                                ("send_timeout: null", "off")])
def test_the_limits_line_shows_the_send_timeout(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                setting: str, shown: str) -> None:
    """It showed the two read timeouts but not the third client timeout: an operator who
    turned it off (or down) could not see it took."""
    lines = _shown_with_server_setting(tmp_path, setting, capsys)
    (line,) = [line for line in lines if line.startswith("limits:")]
    assert line.endswith(f"body_timeout=60s send_timeout={shown}")


def test_a_providers_unset_api_key_env_is_named(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's key is forwarded (as documented), but the operator asked for a key: the
    line names the variable that was looked in, so a typo or a missing export shows."""
    monkeypatch.delenv("CHECK_CONFIG_UNSET", raising=False)
    code, out, err = run(tmp_path, "providers:\n  gpt: {type: openai, "
                         "api_key_env: CHECK_CONFIG_UNSET}\n  own: {type: openai}\n", capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("provider gpt: ") and "auth=client's key (environment variable "
               "CHECK_CONFIG_UNSET is not set) " in line for line in lines), out
    assert any(line.startswith("provider own: ") and "auth=client's key models=" in line
               for line in lines), out


SECRET_AS_NAME = "sk-proj-Abc123-SECRET-9"


@pytest.mark.parametrize("text", [
    f"providers: {{gpt: {{type: openai, api_key_env: {SECRET_AS_NAME}}}}}\n",
    f"providers: {{gpt: {{type: bedrock, region: us-east-1, api_key_env: {SECRET_AS_NAME}}}}}\n",
    f"providers: {{mock: {{type: mock}}}}\n"
    f"auth: {{keys: [{{name: a, key_env: {SECRET_AS_NAME}}}]}}\n",
    f"providers: {{mock: {{type: mock}}}}\n"
    f"virtual_keys: {{vk: {{provider: mock, api_key_env: {SECRET_AS_NAME}}}}}\n",
])
def test_a_secret_written_where_its_variables_name_goes_is_not_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    """`api_key_env: sk-...` (the key itself, where its variable's name goes): check-config
    printed it as "environment variable sk-... is not set", and serve logged it. It is a
    config error now, which names the field and not the value."""
    code, out, err = run(tmp_path, text, capsys)
    assert code == 2, out
    assert SECRET_AS_NAME not in out + err
    assert "not shown" in err, err


def test_check_config_writes_an_empty_host_as_an_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # server.host "" (every interface) was "listen: :9999", which no client can connect to.
    code, out, err = run(tmp_path, "server: {host: '', port: 9999}\n"
                                   "providers: {mock: {type: mock}}\n", capsys)
    assert code == 0, err
    assert "listen: 0.0.0.0:9999 (every interface)" in out.splitlines()


def test_serve_warns_of_an_unset_api_key_env(tmp_path: Path) -> None:
    """serve said nothing: a missing export went unnoticed until clients without a key of
    their own got the provider's 401. It starts (the client's key is forwarded, as
    documented) but names the variable once, at start-up."""
    path = tmp_path / "proxy.yaml"
    path.write_text("providers:\n  gpt: {type: openai, api_key_env: CHECK_CONFIG_UNSET}\n"
                    "  own: {type: openai}\n")
    env = {k: v for k, v in os.environ.items() if k != "CHECK_CONFIG_UNSET"}
    proc = subprocess.Popen([sys.executable, "-m", "streamproxy", "serve", "--config", str(path),
                             "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    lines = []
    try:
        assert proc.stderr is not None
        for _ in range(50):  # (bounded: the listening line comes after a few)
            line = proc.stderr.readline()
            lines.append(line)
            if not line or "listening on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert "listening on" in lines[-1], lines
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, lines
    assert warnings[0].rstrip().endswith("provider gpt: environment variable CHECK_CONFIG_UNSET "
                                         "(its api_key_env) is not set"), warnings


def test_bedrock_says_how_it_authenticates(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Bedrock signs with AWS credentials unless it has a key: `auth=client's key` was printed
    for every one without a configured key (Vertex names its token option already)."""
    for name in ("AWS_BEARER_TOKEN_BEDROCK", "CHECK_CONFIG_UNSET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHECK_CONFIG_AK", "AKIA-SECRET")
    code, out, err = run(tmp_path, """
providers:
  static: {type: bedrock, region: eu-west-1, aws_access_key_id_env: CHECK_CONFIG_AK,
           aws_secret_access_key: SECRET}
  profile: {type: bedrock, region: eu-west-1, profile: prod}
  chain: {type: bedrock, region: eu-west-1, api_key_env: CHECK_CONFIG_UNSET}
  key: {type: bedrock, region: eu-west-1, api_key: SECRET}
""", capsys)
    assert code == 0, err
    auth = dict(re.findall(r"^provider (\w+): .* auth=(.*) models=", out, re.MULTILINE))
    assert auth == {
        "static": "sigv4 (static keys)",
        "profile": "sigv4 (profile prod)",
        "chain": "sigv4 (the AWS credential chain; without credentials, the client's key) "
                 "(environment variable CHECK_CONFIG_UNSET is not set)",
        "key": "configured key",
    }
    assert "SECRET" not in out + err
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "SECRET")
    code, out, err = run(tmp_path, "providers:\n  b: {type: bedrock, region: eu-west-1}\n",
                         capsys)
    assert "auth=bearer (AWS_BEARER_TOKEN_BEDROCK) " in out and "SECRET" not in out


def test_sections_of_other_modules_are_named_not_dumped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(tmp_path, """
providers:
  mock: {type: mock, default_model: fast}
  openai: {type: openai}
configs:
  resilient: {strategy: {mode: fallback}, targets: [{provider: openai}, {provider: mock}]}
routes: {gpt-4o: resilient}
virtual_keys:
  team-openai: {provider: openai, api_key: sk-vk-SECRET-4}
""", capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "configs: resilient" in lines and "routes: gpt-4o" in lines
    assert "virtual_keys: team-openai" in lines
    assert "SECRET" not in out


def test_auth_off_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(tmp_path, "providers: {mock: {type: mock}}\n", capsys)
    assert code == 0
    assert any(line.startswith("auth: off") for line in out.splitlines())
    assert "default provider: none (requests must name one)" in out


ERRORS = [
    ("providers: {mock: {type: nope}}\n", "FILE: providers.mock.type: unknown provider type"),
    ("providers: {mock: {type: mock}}\nserver: {max_concurrent_streams: 0}\n",
     "FILE: server.max_concurrent_streams: must be a positive integer"),
    ("providers: {mock: {type: mock}}\nserver: {drain_delay: 3600}\n",
     "FILE: server.drain_delay: must be a finite number of seconds, 0 to 300"),
    ("providers: {mock: {type: mock}}\nauth: {keys: [{name: a, key_env: CHECK_CONFIG_UNSET}]}\n",
     "FILE: auth.keys[0].key_env: environment variable CHECK_CONFIG_UNSET is not set"),
    ("providers: {mock: {type: mock}}\nlogging: {log_bodies: maybe}\n",
     "FILE: logging.log_bodies: must be true or false"),
    ("providers: {mock: {type: mock}}\nauth: {keys: [{name: a, key: k, allowed_providers: [x]}]}"
     "\n", "FILE: auth.keys[0].allowed_providers: 'x' is not a configured provider"),
    ("providers: [\n", "FILE: line"),
    # A list or a mapping where a name goes: a config error, not a TypeError's traceback.
    ("providers: {mock: {type: mock}}\nconfigs: {a: {provider: mock}}\n"
     "routes: {smart: [a]}\n", "FILE: routes.smart: ['a'] is not under configs"),
    ("providers: {mock: {type: mock}}\nroutes: {smart: b}\n",
     "FILE: routes.smart: 'b' is not under configs"),
    ("providers: {mock: {type: mock}}\ndefault_config: {targets: [{provider: mock}]}\n",
     "FILE: default_config: {'targets': [{'provider': 'mock'}]} is not under configs"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: [mock]}}\n",
     "FILE: virtual_keys.vk.provider: must name a configured provider (mock)"),
    # A misspelt `provider` read as a missing one: "must name a configured provider (mock)",
    # for an entry that named mock, and the typo not named.
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provder: mock, api_key: sk-1}}\n",
     "FILE: virtual_keys.vk.provder: unknown key; did you mean provider? (known: api_key, "
     "api_key_env, provider)"),
    # the secret alone, where the entry goes (never echoed)
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: sk-1}\n",
     "FILE: virtual_keys.vk: must be a mapping with provider, and api_key or api_key_env"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: mock, api_key_env: [A]}}\n",
     "FILE: virtual_keys.vk.api_key_env: must be a string"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: mock, apikey: sk-1}}\n",
     "FILE: virtual_keys.vk.apikey: unknown key; did you mean api_key? (known: api_key, "
     "api_key_env, provider)"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: mock, api_key: '${VK}'}}\n",
     "FILE: virtual_keys.vk.api_key: ${VK} is not expanded here: write api_key_env: VK"),
    # A virtual key fails closed, as auth.keys do: without its secret the client's own key
    # (or the provider's) went upstream in its name.
    ("providers: {mock: {type: mock}}\n"
     "virtual_keys: {vk: {provider: mock, api_key_env: CHECK_CONFIG_UNSET}}\n",
     "FILE: virtual_keys.vk.api_key_env: environment variable CHECK_CONFIG_UNSET is not set"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: mock}}\n",
     "FILE: virtual_keys.vk: give exactly one of `api_key` or `api_key_env`"),
    ("providers: {mock: {type: mock}}\nvirtual_keys: {vk: {provider: mock, api_key: ''}}\n",
     "FILE: virtual_keys.vk.api_key: must be a non-empty string"),
    # LiteLLM's reference and the shell's went upstream as those characters too: a 401
    ("providers: {c: {type: anthropic, api_key: os.environ/ANTHROPIC_API_KEY}}\n",
     "FILE: providers.c.api_key: os.environ/ANTHROPIC_API_KEY is not expanded here: write "
     "api_key_env: ANTHROPIC_API_KEY"),
    ("providers: {c: {type: anthropic, api_key: $ANTHROPIC_API_KEY}}\n",
     "FILE: providers.c.api_key: $ANTHROPIC_API_KEY is not expanded here: write "
     "api_key_env: ANTHROPIC_API_KEY"),
    ("providers: {mock: {type: mock}}\nauth: {keys: [{name: a, key: os.environ/PROXY_KEY}]}\n",
     "FILE: auth.keys[0].key: os.environ/PROXY_KEY is not expanded here: write key_env: "
     "PROXY_KEY"),
    ("providers: {mock: {type: mock}}\nauth: {keys: [{name: a, key: '${PROXY_KEY}'}]}\n",
     "FILE: auth.keys[0].key: ${PROXY_KEY} is not expanded here: write key_env: PROXY_KEY"),
    # (a target's api_key went upstream as the characters ${OPENAI_KEY})
    ("providers: {mock: {type: mock}}\n"
     "configs: {a: {strategy: {mode: fallback},\n"
     "             targets: [{provider: mock, api_key: '${OPENAI_KEY}'}]}}\n",
     "FILE: configs.a: config.targets[0].api_key: ${OPENAI_KEY} is not expanded here: write "
     "a virtual key's api_key_env: OPENAI_KEY"),
    # A misspelt field of a named config said only "is not a config field", not which
    ("providers: {mock: {type: mock}}\n"
     "configs: {a: {stratgy: {mode: fallback}, targets: [{provider: mock}]}}\n",
     "FILE: configs.a: Invalid config: 'config.stratgy' is not a config field (did you mean "
     "strategy?)."),
    ("providers: {mock: {type: mock}}\nconfigs: {a: {provider: mock, retry: {attempt: 3}}}\n",
     "FILE: configs.a: Invalid config: 'config.retry.attempt' is not a retry field (did you "
     "mean attempts?)."),
    ("providers: {mock: {type: mock}}\nconfigs: {a: {strategy: {mode: fallback, "
     "on_status_code: [429]}, targets: [{provider: mock}]}}\n",
     "FILE: configs.a: Invalid config: 'config.strategy.on_status_code' is not a strategy field "
     "(did you mean on_status_codes?)."),
    ("providers: {mock: {type: mock}}\n"
     "configs: {a: {provider: mock, cb_config: {failure_treshold: 3}}}\n",
     "FILE: configs.a: Invalid config: 'config.cb_config.failure_treshold' is not a cb_config "
     "field (did you mean failure_threshold?)."),
    # Redis refused the TTL of every write ("value is not an integer or out of range"): with
    # redis, no request without its own max_age was ever cached
    ("providers: {mock: {type: mock}}\ncache: {default_max_age: 1.0e+17}\n",
     "FILE: cache.default_max_age: must be at most 7776000 seconds (90 days, Portkey's "
     "maximum max_age)"),
    ("providers: {mock: {type: mock}}\nconfigs: {a: {provider: mock, cache: {mod: simple}}}\n",
     "FILE: configs.a: Invalid config: 'config.cache.mod' is not a cache field (mode, max_age; "
     "did you mean mode?)."),
    # every request through the target would be a 400 custom_host_not_allowed
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: [llm.example.com]\n"
     "configs: {a: {provider: mock, custom_host: 'https://other.example.com/v1'}}\n",
     "FILE: configs.a: config.custom_host: 'other.example.com' is not under allowed_custom_hosts"),
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: [llm.example.com]\n"
     "configs: {a: {provider: mock, custom_host: 'https://[::1'}}\n",  # (urlsplit's ValueError)
     "FILE: configs.a: config.custom_host: 'https://[::1' is not under allowed_custom_hosts"),
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: [llm.example.com]\n"
     "configs: {a: {provider: mock, custom_host: 'ftp://llm.example.com/v1'}}\n",
     "FILE: configs.a: config.custom_host: 'ftp://llm.example.com/v1' is not under "
     "allowed_custom_hosts"),
    # an entry written with a scheme allows that scheme alone
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: ['https://llm.example.com']\n"
     "configs: {a: {provider: mock, custom_host: 'http://llm.example.com/v1'}}\n",
     "FILE: configs.a: config.custom_host: 'llm.example.com' is not under allowed_custom_hosts"),
    ("providers: {mock: {type: mock}}\n"
     "allowed_custom_hosts: [llm.example.com, 'https://llm.example.com/v1']\n",
     "FILE: allowed_custom_hosts[1]: must be host[:port], or http:// or https:// and "
     "host[:port] (no path)"),
    # (never matched: no custom_host holds a space, which custom_host_error refuses)
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: [llm.example.com, 'my host.example']"
     "\n", "FILE: allowed_custom_hosts[1]: holds a space or control character"),
    ("providers: {mock: {type: mock}}\nallowed_custom_hosts: ['llm.example.com:443 ']\n",
     "FILE: allowed_custom_hosts[0]: holds a space or control character"),
    # the gateway's key to another tenant's Azure resource: a 400 for every request too
    ("providers: {az: {type: azure, resource: contoso, api_version: 2024-10-21, api_key: k}}\n"
     "configs: {a: {strategy: {mode: fallback},\n"
     "             targets: [{provider: az, resource_name: fabrikam}]}}\n",
     "FILE: configs.a: config.targets[0].resource_name: 'fabrikam.openai.azure.com' is not "
     "under allowed_custom_hosts"),
    # the portal's Target URI as base_url: every request went to a doubled path, a 404
    ("providers: {az: {type: azure, api_version: 2024-10-21, base_url: "
     "'https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions"
     "?api-version=2025-01-01-preview'}}\n",
     "FILE: providers.az.base_url: is a deployment's URL (the portal's Target URI), but type "
     "azure builds /openai/deployments/{deployment}/chat/completions?api-version=... itself: "
     "write base_url: https://r.openai.azure.com (or resource: r), deployment: gpt4o, "
     "api_version: 2025-01-01-preview"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_file_key_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, text: str,
                                         expected: str) -> None:
    monkeypatch.delenv("CHECK_CONFIG_UNSET", raising=False)
    code, out, err = run(tmp_path, text, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(expected), err


def _parsed(text: str) -> Any:
    """The Config `text` loads as (before any section is checked), or None: a load error."""
    import yaml

    from streamproxy.config import ConfigError, _ConfigLoader, parse_config

    try:
        return parse_config(yaml.load(text, _ConfigLoader), "FILE")
    except (ConfigError, yaml.YAMLError):
        return None


@pytest.mark.parametrize(("text", "expected"), [e for e in ERRORS if _parsed(e[0])])
def test_the_masters_check_finds_what_building_the_app_finds(
        monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    """`serve --workers N` checks the sections before it forks (check_sections), not by
    building the app: every mistake the app's construction finds, it must find too."""
    from streamproxy.config import ConfigError
    from streamproxy.server.app import check_sections, create_app

    monkeypatch.delenv("CHECK_CONFIG_UNSET", raising=False)
    config = _parsed(text)
    with pytest.raises(ConfigError) as built:
        create_app(config)
    with pytest.raises(ConfigError) as checked:
        check_sections(config)
    assert str(checked.value) == str(built.value) and str(built.value).startswith(expected)


def test_a_reader_that_stops_reading_gets_no_traceback(tmp_path: Path) -> None:
    # `streamproxy check-config FILE | head -1` printed a BrokenPipeError's traceback: the
    # summary's reader left (here: before the first line), which is no error of the config.
    path = tmp_path / "ok.yaml"
    path.write_text("providers: {mock: {type: mock}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "streamproxy", "check-config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err  # (the verdict: the config is valid)
    assert err == ""


def test_the_installed_command(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers: {mock: {type: mock}}\nauth: {keys: []}\n")
    proc = subprocess.run([sys.executable, "-m", "streamproxy", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{path}: auth.keys: must be a non-empty list (remove the "
                                   "auth section to turn proxy authentication off)")


@pytest.mark.parametrize("env", ["STREAMPROXY_FRONT", "STREAMPROXY_UPSTREAM_CLIENT"])
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_bad_environment_override_is_a_config_error_not_a_traceback(
        tmp_path: Path, env: str, command: str) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("providers: {mock: {type: mock}}\n")
    args = [str(path)] if command == "check-config" else ["--config", str(path), "--port", "0",
                                                          "--workers", "1"]
    proc = subprocess.run([sys.executable, "-m", "streamproxy", command, *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, env: "bogus"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"streamproxy: config error: environment: {env}=")
    assert "Traceback" not in proc.stderr


def test_workers_must_be_one_or_more() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamproxy", "serve", "--workers", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be 1 or more" in proc.stderr


@pytest.mark.parametrize("port", ["70000", "-1"])
@pytest.mark.parametrize("command", [["serve", "--workers", "1"], ["mock"]])
def test_a_port_out_of_range_is_refused(port: str, command: list[str]) -> None:
    # 70000 listened on 4464 without a word (the socket layer takes the port modulo 65536).
    proc = subprocess.run([sys.executable, "-m", "streamproxy", *command, "--port", port],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be 0 to 65535" in proc.stderr


def test_a_configured_port_out_of_range_is_a_config_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(tmp_path, "server: {port: 70000}\nproviders: {mock: {type: mock}}\n",
                         capsys)
    assert code == 2 and out == ""
    assert err.startswith("FILE: server.port: must be a port number, 1 to 65535"), err


def test_serve_help_says_the_config_sets_host_and_port(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Without --host / --port the config's server.host and server.port are used: a help
    # that gave 127.0.0.1 and 8787 as the defaults sent readers of a config with its own
    # host or port to the wrong address.
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: server.host, else 127.0.0.1" in help_text
    assert "default: server.port, else 8787" in help_text


@pytest.mark.parametrize(("command", "says"), [
    ("serve", "run the proxy"),
    ("mock", "run the mock upstream alone"),
    ("check-config", "validate a config"),
])
def test_each_subcommands_help_says_what_it_and_each_argument_does(
        capsys: pytest.CaptureFixture[str], command: str, says: str) -> None:
    """`check-config --help` listed `file` with no word on it, `mock --help` its --host and
    --port bare, and no subcommand's help said what the command does."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert says in out.split("\n\n")[1].lower()  # the description, after the usage
    lines = [*out.splitlines(), ""]
    arguments = [i for i, line in enumerate(lines) if re.match(r"  [-\w]", line)]
    assert len(arguments) >= 2  # (-h and at least one more)
    for i in arguments:  # its help beside it, or (a long name's) on the next line, indented
        assert re.match(r"  \S.*?\S {2,}\S", lines[i]) or lines[i + 1].startswith("    "), \
            lines[i]


def test_credentials_in_a_base_url_are_not_printed(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A base URL may carry user:password@ (a self-hosted server behind basic auth): the
    output, which goes to terminals and CI logs, masks them, as the metrics' labels drop them."""
    code, out, err = run(tmp_path, """
providers:
  vllm: {type: openai, base_url: "https://alice:pa@ss-SECRET@vllm.example.com/v1"}
""", capsys)
    assert code == 0, err
    assert "SECRET" not in out and "alice" not in out
    assert "base_url=https://***@vllm.example.com/v1 " in out


def test_credentials_in_an_allowed_custom_host_are_not_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An allow-list entry matches a custom_host with its user info (a config target's
    `https://alice:…@vllm…` is allowed by that very entry): it was printed as written."""
    code, out, err = run(tmp_path, """
providers:
  vllm: {type: openai}
allowed_custom_hosts: ["https://alice:pw-SECRET@vllm.example.com", api.example.com,
                       "bob:pw-SECRET@llm.example.com:8443"]
""", capsys)
    assert code == 0, err
    assert "SECRET" not in out and "alice" not in out and "bob" not in out
    assert ("allowed_custom_hosts: https://***@vllm.example.com, api.example.com, "
            "***@llm.example.com:8443") in out.splitlines()


@pytest.mark.parametrize(("given", "listens_on"), [("[::1]", "::1"), ("::1", "::1"),
                                                    ("127.0.0.1", "127.0.0.1")])
def test_a_bracketed_ipv6_host_is_its_address(given: str, listens_on: str) -> None:
    # `--host [::1]`, as an address is written in a URL, failed with "Name or service not
    # known": the socket layer looked the brackets up as a name.
    from streamproxy.cli import _host

    assert _host(given) == listens_on


@pytest.mark.parametrize(("argv", "said"), [
    (["serve", "--port", "abc"], "argument --port: 'abc' is not a port number: must be 0 to "
                                 "65535 (0: any free port)"),
    (["mock", "--port", ""], "argument --port: '' is not a port number"),
    (["serve", "--workers", "two"], "argument --workers: 'two' is not a whole number: must be "
                                    "1 or more"),
])
def test_a_cli_value_that_is_not_a_number_is_said_plainly(
        argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse named the converter: "invalid _port value: 'abc'".
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err, err
    assert "_port" not in err and "_positive" not in err


def test_a_bracketed_ipv6_server_host_is_its_address_as_the_clis(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # check-config said OK ("listen: [[::1]]:9999"), then serve failed "cannot listen on
    # [[::1]]:9999: Name or service not known", where `--host [::1]` listens.
    code, out, err = run(tmp_path, "server: {host: '[::1]', port: 9999}\n"
                                   "providers: {mock: {type: mock}}\n", capsys)
    assert code == 0, err
    assert "listen: [::1]:9999" in out.splitlines()


@pytest.mark.parametrize("host", ["localhost:8080", "0.0.0.0:8787", "http://0.0.0.0",
                                  "[::1]:8787", " 0.0.0.0"])
def test_a_listen_host_with_a_port_or_scheme_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str) -> None:
    # check-config said OK ("listen: [localhost:8080]:8787"); serve then failed to resolve it.
    code, out, err = run(tmp_path, f"server: {{host: '{host}'}}\n"
                                   "providers: {mock: {type: mock}}\n", capsys)
    assert code == 2 and out == ""
    assert err.startswith("FILE: server.host: must be a host name or IP address alone"), err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--host", host])
    assert exit_.value.code == 2
    assert "argument --host: must be a host name or IP address alone" in capsys.readouterr().err


def test_check_config_writes_an_ipv6_listen_address_bracketed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "listen: ::1:9999" — which colon starts the port? As the master's and workers' logs,
    # and a URL, write it.
    code, out, err = run(tmp_path, "server: {host: '::1', port: 9999}\n"
                                   "providers: {mock: {type: mock}}\n", capsys)
    assert code == 0, err
    assert "listen: [::1]:9999" in out.splitlines()


def test_every_independent_problem_is_listed_one_per_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config stopped at the first problem: an operator fixing a config learned of the
    next only by running it again, once per mistake."""
    code, out, err = run(tmp_path, """
server: {port: 0.5}
providers:
  a: {type: openai, timeouts: {idle: -1}}
  b: {type: nope}
  c: {type: openai}
default_provider: d
extra: 1
""", capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "FILE: extra: unknown key (known: allowed_custom_hosts, auth, cache, configs, "
        "default_config, default_provider, logging, providers, routes, server, storage, "
        "virtual_keys)",
        "FILE: server.port: must be a positive integer",
        "FILE: providers.a.timeouts.idle: must be a positive, finite number of seconds",
        "FILE: providers.b.type: " + err.splitlines()[3].partition("providers.b.type: ")[2],
        "FILE: default_provider: 'd' is not a configured provider (configured: a, b, c)",
    ]
    assert "unknown provider type 'nope'" in err.splitlines()[3]


def test_each_server_keys_problem_is_listed(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Within `server`, check-config still stopped at the first bad key."""
    code, out, err = run(tmp_path, """
server: {port: 0.5, log_level: loud, front: fast, host: 127.0.0.1}
providers: {mock: {type: mock}}
""", capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "FILE: server.port: must be a positive integer",
        "FILE: server.log_level: must be one of debug, info, warning, error",
        "FILE: server.front: must be one of aiohttp, lean",
    ]


def test_every_sections_problem_is_listed(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(tmp_path, """
providers: {mock: {type: mock}}
auth: {keys: []}
logging: {access_log: 1}
storage: {max_pending: 0}
routes: {fast: nowhere}
""", capsys)
    assert code == 2 and out == ""
    assert [line.partition(": ")[2].partition(":")[0] for line in err.splitlines()] == [
        "routes.fast", "auth.keys", "logging.access_log", "storage.max_pending"]


def test_serve_reports_the_first_problem(tmp_path: Path) -> None:
    from streamproxy.config import ConfigError, load_config

    path = tmp_path / "proxy.yaml"
    path.write_text("providers: {a: {type: nope}, b: {type: openai, models: 0}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "providers.a.type" and str(info.value).count("\n") == 0


# Keys of only letters, digits and `_` pass as a variable's name (Cohere's and Mistral's 40
# and 32 alphanumerics, Groq's gsk_, AWS's access key id, Hugging Face's hf_...).
KEYS_AS_NAMES = ["Zq8VwR3kLm2Np7Xt5Yb1Hc4Jd6Fg9Ks0Ae3Wr8Ty", "gsk_T4x9QwErTyUiOp1234AsDfGhJkL",
                 "AKIAIOSFODNN7EXAMPLE", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
                 "AIzaSyA1b2C3d4E5f6G7h8I9j0KLmNoPqRsTuVw", "d41d8cd98f00b204e9800998ecf8427e"]


@pytest.mark.parametrize("key", KEYS_AS_NAMES)
def test_a_key_that_reads_as_a_variables_name_is_not_printed_as_unset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        key: str) -> None:
    """`api_key_env: <the key itself>`, a key with no `-`: it passed as a variable's name, and
    check-config printed it ("environment variable <key> is not set"), as serve logged it."""
    from streamproxy.cli import _warn_unset_key_envs
    from streamproxy.config import load_config

    text = f"providers: {{gpt: {{type: openai, api_key_env: {key}}}}}\n"
    code, out, err = run(tmp_path, text, capsys)
    assert code == 0, err
    assert key not in out + err and "not shown" in out, out
    with caplog.at_level("WARNING", "streamproxy"):
        _warn_unset_key_envs(load_config(tmp_path / "proxy.yaml"))
    assert "not shown" in caplog.text and key not in caplog.text, caplog.text


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_BACKUP_KEY", "my_key",
                                  "AZURE_OPENAI_API_KEY_WESTEUROPE2_PRODUCTION", "GEMINI_KEY_2",
                                  "SK_PROD_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"])
def test_an_ordinary_variables_name_is_still_named(name: str) -> None:
    from streamproxy.config import shown_env

    assert shown_env(name) == name


@pytest.mark.parametrize("blank", [" ", "\n", ""])
def test_a_variable_set_to_nothing_but_whitespace_is_said_empty_not_unset(
        blank: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable exported empty (a secret mount of nothing, `export KEY=` from an unset one)
    was reported as "is not set": the operator looked for a missing export that was there."""
    from streamproxy.cli import _warn_unset_key_envs
    from streamproxy.config import load_config
    from streamproxy.providers.gemini.auth import TokenUnavailable
    from streamproxy.routing.target import Target
    from streamproxy.server.app import build_providers
    from tests.helpers import make_config

    monkeypatch.setenv("CHECK_CONFIG_BLANK", blank)
    for section in ("auth: {keys: [{name: a, key_env: CHECK_CONFIG_BLANK}]}",
                    "virtual_keys: {vk: {provider: mock, api_key_env: CHECK_CONFIG_BLANK}}"):
        code, out, err = run(tmp_path, f"providers: {{mock: {{type: mock}}}}\n{section}\n",
                             capsys)
        assert code != 0 and "environment variable CHECK_CONFIG_BLANK is empty" in err, err
    code, out, err = run(tmp_path, "providers:\n  gpt: {type: openai, api_key_env: "
                         "CHECK_CONFIG_BLANK}\n  b: {type: bedrock, region: eu-west-1, "
                         "api_key_env: CHECK_CONFIG_BLANK, profile: prod}\n", capsys)
    assert code == 0, err
    auth = dict(re.findall(r"^provider (\w+): .* auth=(.*) models=", out, re.MULTILINE))
    assert auth == {"gpt": "client's key (environment variable CHECK_CONFIG_BLANK is empty)",
                    "b": "sigv4 (profile prod) (environment variable CHECK_CONFIG_BLANK is "
                         "empty)"}, out
    with caplog.at_level("WARNING", "streamproxy"):
        _warn_unset_key_envs(load_config(tmp_path / "proxy.yaml"))
    assert "environment variable CHECK_CONFIG_BLANK (its api_key_env) is empty" in caplog.text
    # (Vertex's token_env, as a request finds it: the client's 502)
    vertex = build_providers(make_config({"v": {"type": "vertex", "project": "p",
                                                "location": "global",
                                                "token_env": "CHECK_CONFIG_BLANK"}}))["v"]
    with pytest.raises(TokenUnavailable, match="CHECK_CONFIG_BLANK is empty"):
        vertex.auth_headers(Target(vertex, "gemini-2.5-flash"))


def test_names_written_as_numbers_are_referred_to_as_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`providers: {1: ...}` and `configs: {2: ...}` are "1" and "2": a reference written `1`
    or `2` was refused as naming none of them (e.g. "must name a configured provider (1)")."""
    status, out, err = run(tmp_path, "providers: {1: {type: mock}}\ndefault_provider: 1\n"
                           "virtual_keys: {vk: {provider: 1, api_key: sk-1}}\n"
                           "configs: {2: {provider: '1'}}\nroutes: {smart: 2}\n"
                           "default_config: 2\n", capsys)
    assert (status, err) == (0, "")
    assert "provider 1 (default): type=mock" in out


@pytest.mark.parametrize(("server", "flags", "workers", "level"), [
    ("{workers: 3, log_level: warning}", [], 3, "warning"),
    ("{workers: 3, log_level: warning}", ["--workers", "2", "--log-level", "DEBUG"], 2, "debug"),
    ("{}", ["--log-level", "error"], None, "error"),
])
def test_serve_takes_workers_and_the_log_level_from_the_file_the_flags_winning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str, flags: list[str],
        workers: int | None, level: str) -> None:
    """A sidecar's settings live in its config file: `server.workers` was refused as an
    unknown key, and the log level had no flag (only STREAMPROXY_LOG_LEVEL), where --host,
    --port and --workers were one. The command line wins over the file (and the variable)."""
    import streamproxy.cli as cli
    from streamproxy.observe import access_log
    from streamproxy.server import workers as server_workers

    monkeypatch.setenv("STREAMPROXY_LOG_LEVEL", "info")  # (restored: --log-level sets it)
    seen: dict[str, Any] = {}

    def run(path: Any, config: Any, host: str, port: int, count: int | None,
            pinned: frozenset[str]) -> int:
        seen.update(workers=count, level=access_log.log_level(config), pinned=pinned)
        return 0

    monkeypatch.setattr(server_workers, "run", run)
    monkeypatch.setattr(access_log, "configure_logging", lambda config: None)
    monkeypatch.setattr(cli, "_install_uvloop", lambda: None)
    if not flags:
        monkeypatch.delenv("STREAMPROXY_LOG_LEVEL")
    path = tmp_path / "proxy.yaml"
    path.write_text(f"server: {server}\nproviders: {{mock: {{type: mock}}}}\n")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--config", str(path), *flags])
    assert info.value.code == 0
    assert (seen["workers"], seen["level"]) == (workers, level)
    assert ("workers" in seen["pinned"]) == ("--workers" in flags)


@pytest.mark.parametrize("value", ["0", "-1", "true", "two", "1.5"])
def test_server_workers_must_be_a_positive_whole_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = run(tmp_path, f"server: {{workers: {value}}}\n"
                                 "providers: {mock: {type: mock}}\n", capsys)
    assert (code, err.splitlines()) == (2, ["FILE: server.workers: must be a positive integer"])


@pytest.mark.parametrize("custom_host", [
    "https://bob:hunter2-SECRET@other.example.com/v1",
    "bob:hunter2-SECRET@other.example.com",  # (scheme-less: read as https://)
    "https://bob:hunter2-SECRET@[::1",  # (urlsplit refuses it: the value itself is shown)
    "ftp://bob:hunter2-SECRET@llm.example.com/v1",
])
def test_a_refused_custom_hosts_password_is_not_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], custom_host: str) -> None:
    """A named config's custom_host outside allowed_custom_hosts is named in the error, which
    goes to terminals and CI logs: its host, never the user info it carries (Basic auth)."""
    code, _, err = run(tmp_path, "providers: {mock: {type: mock}}\n"
                       "allowed_custom_hosts: [llm.example.com]\n"
                       f"configs: {{a: {{provider: mock, custom_host: '{custom_host}'}}}}\n",
                       capsys)
    assert code == 2
    assert "is not under allowed_custom_hosts" in err
    assert "SECRET" not in err and "bob" not in err
