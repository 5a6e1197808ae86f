"""The README's provider table says exactly which parameters each provider drops."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from streamproxy.providers.registry import PROVIDER_TYPES

README = (Path(__file__).parent.parent / "README.md").read_text()


def _common() -> set[str]:
    paragraph = README.split('"Common" below stands for')[1].split("(`store`")[0]
    return set(re.findall(r"`([a-z_]+)`", paragraph))


def _rows() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        if line.startswith("| `") and line.count("|") == 6:
            first, _url, _auth, _supported, dropped = line.split("|")[1:6]
            for name in re.findall(r"`([a-z]+)`", first):
                rows[name] = dropped
    return rows


@pytest.mark.parametrize("type_name", sorted(PROVIDER_TYPES))
def test_readme_lists_each_providers_dropped_parameters(type_name: str) -> None:
    rows = _rows()
    assert type_name in rows, f"provider type {type_name} missing from the README table"
    cell = rows[type_name]
    if type_name == "mock":
        return  # "as its wire"
    listed = set(re.findall(r"`([a-z_]+)`", cell))
    if "common except" in cell:
        # "common except `a`, `b`; `c`": the names up to the semicolon are excepted
        excepted = set(re.findall(r"`([a-z_]+)`", cell.split("except", 1)[1].split(";")[0]))
        listed = (listed - excepted) | (_common() - excepted)
    elif "common" in cell:
        listed |= _common()
    assert listed == set(PROVIDER_TYPES[type_name].dropped_params)


def test_readme_shows_the_two_commands() -> None:
    first_screen = README[:1500]
    assert "make run" in first_screen and "make test" in first_screen


OPERATIONS = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()


def test_every_exported_metric_is_documented() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from streamproxy.observe.metrics import metrics

    exported = {m._name + ("_total" if m._type == "counter" else "")
                for m in vars(metrics()).values() if isinstance(m, MetricWrapperBase)}
    assert len(exported) > 10
    operations = README.split("## Operations")[1].split("\n## ")[0]
    shortened = re.findall(r"`…(_[a-z_]+)`", operations)  # (`…_out_total` after bytes_in's)
    for name in sorted(exported):
        assert f"`{name}`" in OPERATIONS, f"{name} missing from docs/operations.md"
        assert name in operations or any(map(name.endswith, shortened)), (
            f"{name} missing from README")


def test_the_metrics_table_gives_each_metrics_type_and_labels() -> None:
    """Every row of docs/operations.md's metrics table names a metric the code exports, with
    its type and label set (the test above only checks that each exported name is mentioned)."""
    from prometheus_client.metrics import MetricWrapperBase

    from streamproxy.observe.metrics import metrics

    exported = {m._name + ("_total" if m._type == "counter" else ""):
                (m._type, set(m._labelnames))
                for m in vars(metrics()).values() if isinstance(m, MetricWrapperBase)}
    rows = {m[1]: (m[2], set(re.findall(r"`([a-z_]+)`", m[3])))
            for m in re.finditer(r"^\| `(streamproxy_[a-z_]+)` \| (\w+) \| ([^|]*) \|",
                                 OPERATIONS, re.M)}
    assert rows == exported


def test_the_access_log_table_and_example_give_every_field_the_code_writes() -> None:
    """The access log's field table names exactly the fields a line has, and its example line
    has the fields every line has, in the order written."""
    import json

    from streamproxy.observe.access_log import access_entry
    from streamproxy.record import RequestRecord

    section = OPERATIONS.split("## Access log")[1].split("\n## ")[0]
    documented = {name for line in section.splitlines() if line.startswith("| `")
                  for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    every = access_entry(RequestRecord(trace_id="t", metadata={"team": "a"},
                                       request_body=b"{}"))
    assert documented == set(every)
    example = json.loads(section.split("```json\n")[1].split("```")[0])
    assert list(example) == list(access_entry(RequestRecord(trace_id="t")))


def test_check_config_sample_shows_every_line_the_command_prints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamproxy.cli import main

    sample = OPERATIONS.split("$ streamproxy check-config proxy.yaml\n")[1].split("```")[0]
    path = tmp_path / "proxy.yaml"
    path.write_text("providers: {mock: {type: mock}}\nconfigs: {c: {provider: mock}}\n")
    main(["check-config", str(path)])
    printed = capsys.readouterr().out

    def kinds(text: str) -> list[str]:  # each line's label: `limits:`, `provider`, …
        return sorted({re.split(r"[ :]", line.replace(str(path), "proxy.yaml"))[0]
                       for line in text.splitlines() if line})

    assert set(kinds(printed)) <= set(kinds(sample)), (kinds(printed), kinds(sample))


def _known_keys(parse: Any, section: str) -> set[str]:
    """The keys a section's parser takes, as its refusal of an unknown one lists them."""
    from streamproxy.config import ConfigError, parse_config

    config = parse_config({"providers": {"mock": {"type": "mock"}}, section: {"?": 1}}, "F")
    with pytest.raises(ConfigError) as refused:
        parse(config)
    return set(re.findall(r"[a-z_]+", refused.value.reason.split("known:")[1]))


def test_every_config_key_the_code_takes_is_documented() -> None:
    from dataclasses import fields

    from streamproxy.cache.config import parse_cache_settings
    from streamproxy.config import ServerConfig
    from streamproxy.observe.access_log import parse_logging
    from streamproxy.storage.config import parse_storage_config

    docs = Path(__file__).parent.parent / "docs"
    stored, cached = (docs / "storage-and-cache.md").read_text().split("## Response cache")
    everywhere = "\n".join([README, *(p.read_text() for p in docs.rglob("*.md"))])
    where = {"server": everywhere, "logging": OPERATIONS, "storage": stored, "cache": cached}
    keys = [("server", f.name) for f in fields(ServerConfig)]
    for section, parse in (("storage", parse_storage_config), ("cache", parse_cache_settings),
                           ("logging", parse_logging)):
        keys += [(section, k) for k in sorted(_known_keys(parse, section))]
    keys += [(f"providers (type {name})", k) for name, cls in sorted(PROVIDER_TYPES.items())
             for k in sorted(cls.option_keys)]
    missing = [f"{section}.{key}" for section, key in keys
               if not re.search(rf"(`|\.|^ +(# )?){key}(`|:)", where.get(section, everywhere),
                                re.M)]
    assert not missing, f"config keys the docs never name: {missing}"


def test_the_systemd_unit_signals_only_the_master_and_waits_out_a_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's default KillMode=control-group sends SIGTERM to the workers as well as the
    master: they drained at once, and `drain_delay` was skipped (connections refused at once).
    The documented unit sends it to the master alone, runs the documented command line, and
    leaves the stop time for the delay, the grace and the master's kill margin."""
    import shlex

    from streamproxy import cli
    from streamproxy.server.master import KILL_AFTER

    section = OPERATIONS.split("## Draining behind a load balancer")[1].split("\n## ")[0]
    unit = dict(line.split("=", 1) for line in section.split("```ini\n")[1].split("```")[0]
                .splitlines() if "=" in line and not line.startswith("#"))
    assert unit["KillMode"] == "mixed"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    seen: list[Any] = []
    monkeypatch.setattr(cli, "cmd_serve", seen.append)
    program, *argv = shlex.split(unit["ExecStart"])
    assert program.endswith("/streamproxy")
    cli.main(argv)
    assert seen and seen[0].workers > 1 and seen[0].config
    delay, grace = (int(re.search(rf"{key}: (\d+)", section)[1])  # type: ignore[index]
                    for key in ("drain_delay", "shutdown_grace"))
    assert int(unit["TimeoutStopSec"]) >= delay + grace + KILL_AFTER


def _config_blocks() -> list[Any]:
    """Every YAML block of README.md and docs/ (each `---` document) that is a streamproxy
    config: its top-level keys are config sections (not the pod spec beside one)."""
    import yaml

    from streamproxy.config import EXTRA_SECTIONS

    sections = {"server", "providers", "default_provider", *EXTRA_SECTIONS}
    root = Path(__file__).parent.parent
    blocks = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        text = path.read_text()
        for m in re.finditer(r"^( *)```yaml\n(.*?)^\1```", text, re.M | re.S):
            indent = len(m[1])
            body = "\n".join(line[indent:] for line in m[2].splitlines())
            line = text[:m.start()].count("\n") + 1
            for i, doc in enumerate(yaml.safe_load_all(body)):
                if isinstance(doc, dict) and set(doc) <= sections:
                    blocks.append(pytest.param(body, i, id=f"{path.name}:{line}[{i}]"))
    return blocks


@pytest.mark.parametrize(("body", "doc"), _config_blocks())
def test_every_config_block_in_the_docs_loads(
        body: str, doc: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A config a reader copies from the docs passes `streamproxy check-config`, given the
    environment it names: its variables set, its files present. A block of one section
    goes beside the providers the docs' examples name, as it would in a real file."""
    import json

    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from streamproxy.cli import main

    config = list(yaml.safe_load_all(body))[doc]
    # the providers the README's examples name: its complete example's and the embedded default's
    config.setdefault("providers", {"claude": {"type": "anthropic"}, "gpt": {"type": "openai"},
                                    "anthropic": {"type": "anthropic"},
                                    "openai": {"type": "openai"}, "mock": {"type": "mock"}})
    for name in re.findall(r"\b(?:api_key_env|key_env|token_env|[a-z_]+_env): *([A-Z_]+)",
                           body):
        monkeypatch.setenv(name, f"sk-docs-{name.lower()}")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    (tmp_path / "aws-config").write_text("[profile dev]\nregion = us-east-1\n")
    (tmp_path / "aws-credentials").write_text("")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for p in config["providers"].values():
        if isinstance(p, dict) and "credentials_file" in p:
            p["credentials_file"] = str(tmp_path / "sa.json")
            (tmp_path / "sa.json").write_text(json.dumps({
                "type": "service_account", "project_id": "p", "private_key_id": "k",
                "client_email": "sa@p.iam.gserviceaccount.com", "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
                "private_key": key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()).decode()}))
    if "path" in config.get("storage", {}):
        config["storage"]["path"] = str(tmp_path / "store.sqlite3")
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        main(["check-config", str(path)])
    except SystemExit as e:
        pytest.fail(f"check-config exited {e.code}: {capsys.readouterr().err}")
    assert ": OK" in capsys.readouterr().out


def test_the_retry_limit_is_the_one_documented() -> None:
    from streamproxy.routing.portkey_config import RETRY_ATTEMPTS_MAX

    retries = README.split("- **Retries** (per target)")[1].split("\n- ")[0]
    assert f"`attempts` (0 to {RETRY_ATTEMPTS_MAX}," in retries


def test_every_doc_gives_the_masters_kill_margin_as_the_code_has_it() -> None:
    """docs/performance.md said a worker still draining is killed `shutdown_grace` + 10 s
    after it was told to drain, and an operator sizing a pod's termination grace or a unit's
    TimeoutStopSec on it cut drains the master would have let finish (it waits + 15 s)."""
    from streamproxy.server.master import KILL_AFTER

    root = Path(__file__).parent.parent
    said = [(path.name, int(m[1])) for path in [root / "README.md", *(root / "docs").glob("*.md")]
            for m in re.finditer(r"shutdown_grace`?\s+\+\s+(\d+)\b", path.read_text())]
    assert said and all(n == KILL_AFTER for _, n in said), said


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (code blocks' `#` lines are none)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#{1,6} +(.+?)\s*$", text, re.M)}


def test_every_link_in_the_docs_reaches_a_file_and_heading() -> None:
    """A section renamed or a doc moved leaves the README's links pointing at nothing: each
    relative link names a file that exists and, after `#`, one of its headings."""
    root = Path(__file__).parent.parent
    broken = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for link in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            target, _, anchor = link.partition("#")
            file = (path.parent / target) if target else path
            if not file.exists() or (anchor and file.suffix == ".md"
                                     and anchor not in _anchors(file.read_text())):
                broken.append(f"{path.name}: {link}")
    assert not broken, broken


def test_the_mock_table_lists_the_mocks_presets_and_knobs() -> None:
    """The README's table of the mock's presets and knobs is the mock's: every knob it takes
    (an unknown one is a 400), every preset, and each preset's delta count."""
    from dataclasses import fields

    from streamproxy.providers.mock.server import PRESETS, MockOptions

    rows = README.split("### The mock's knobs")[1].split("\n\n| preset")[1].split("\n\n")[0]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in rows.splitlines()[2:]]
    presets = {c[0].strip("`"): c[1] for c in cells if c[0]}
    knobs = {c[3].strip("`") for c in cells if c[3]}
    assert knobs == {f.name for f in fields(MockOptions) if f.name != "cut"}
    assert set(presets) == set(PRESETS)
    for name, meaning in presets.items():
        deltas = PRESETS[name].get("error_after", PRESETS[name]["tokens"])
        assert re.search(rf"\b{deltas} (text )?deltas", meaning), (name, meaning)


def test_the_portkey_sdk_provider_settings_listed_are_the_headers_read() -> None:
    """The README lists the portkey-ai SDK's provider settings that apply to a target; each is
    a header the SDK sends and the gateway reads, and no header the gateway reads is missing."""
    from portkey_ai import Portkey

    from streamproxy.routing.gateway import PROVIDER_OPTION_HEADERS

    said = README.split("Its provider settings")[1].split("apply to")[0]
    names = set(re.findall(r"`([a-z_]+)`", said)) - {"anthropic-version", "anthropic-beta"}
    client = Portkey(base_url="http://127.0.0.1:1/v1", api_key="unused",
                     **dict.fromkeys(names, "x"))
    # (the SDK sends these two whatever it is given)
    sent = set(client.custom_headers) - {"x-portkey-api-key", "x-portkey-strict-open-ai-compliance"}
    assert sent == set(PROVIDER_OPTION_HEADERS.values()), (sent, names)
