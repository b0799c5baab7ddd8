"""Where a client connects: flag > environment > context > `quanta up`'s default >
built in, each setting on its own; and the config file that holds the contexts."""

from __future__ import annotations

import stat
import threading

import pytest

from quanta import config
from quanta.config import Config, Context
from quanta.errors import ConfigError

LAB = Context("lab", endpoint="lab:7000", token="lab-token", tenant="acme", project="web", tls_ca="/ca.pem")
DEV = Context("dev", endpoint="dev:7000", token_file="/dev.token")
BARE = Context("bare", tenant="globex")
CFG = Config({c.name: c for c in (LAB, DEV, BARE)}, current="lab")
UP = {"endpoint": "127.0.0.1:41000", "admin_token": "up-token"}

#: (case, arguments, env, config, local state, context argument) -> expected settings and sources
CASES = [
    ("nothing at all: built-in defaults", {}, {}, Config(), None, None,
     dict(endpoint="127.0.0.1:7000", token="", tenant="default", project="default", tls_ca="", context=None),
     dict(endpoint="default", token="default")),
    ("quanta up's default system", {}, {}, Config(), UP, None,
     dict(endpoint="127.0.0.1:41000", token="up-token", context=None),
     dict(endpoint="quanta up (local)", token="quanta up (local)")),
    ("the current context beats quanta up", {}, {}, CFG, UP, None,
     dict(endpoint="lab:7000", token="lab-token", tenant="acme", project="web", tls_ca="/ca.pem", context="lab"),
     dict(endpoint="context lab", tenant="context lab")),
    ("$QUANTA_CONTEXT beats the current context", {}, {"QUANTA_CONTEXT": "bare"}, CFG, None, None,
     dict(endpoint="127.0.0.1:7000", tenant="globex", project="default", context="bare"),
     dict(tenant="context bare", project="default")),
    ("--context beats $QUANTA_CONTEXT", {}, {"QUANTA_CONTEXT": "bare"}, CFG, None, "lab",
     dict(endpoint="lab:7000", context="lab"), {}),
    ("$QUANTA_ENDPOINT beats the context; its token stays", {}, {"QUANTA_ENDPOINT": "env:1"}, CFG, UP, None,
     dict(endpoint="env:1", token="lab-token", tenant="acme"),
     dict(endpoint="$QUANTA_ENDPOINT", token="context lab")),
    ("a flag beats the environment", {"endpoint": "flag:1", "tenant": "t1"},
     {"QUANTA_ENDPOINT": "env:1", "QUANTA_TENANT": "t2"}, CFG, None, None,
     dict(endpoint="flag:1", tenant="t1", project="web"), dict(endpoint="argument", tenant="argument")),
    ("$QUANTA_TENANT and $QUANTA_PROJECT beat the context", {},
     {"QUANTA_TENANT": "t2", "QUANTA_PROJECT": "p2", "QUANTA_TOKEN": "env-token"}, CFG, None, None,
     dict(tenant="t2", project="p2", token="env-token", endpoint="lab:7000"), dict(token="$QUANTA_TOKEN")),
    ("a context without endpoint falls back to quanta up, with its token", {}, {"QUANTA_CONTEXT": "bare"},
     CFG, UP, None, dict(endpoint="127.0.0.1:41000", token="up-token", tenant="globex"), {}),
    ("quanta up's admin token is never sent to another endpoint", {"endpoint": "elsewhere:1"}, {}, Config(), UP,
     None, dict(endpoint="elsewhere:1", token=""), dict(token="default")),
    ("a context's token file, read later", {}, {"QUANTA_CONTEXT": "dev"}, CFG, UP, None,
     dict(endpoint="dev:7000", token="", token_file="/dev.token"), dict(token="context dev")),
    ("$QUANTA_TOKEN beats a context's token file", {}, {"QUANTA_CONTEXT": "dev", "QUANTA_TOKEN": "e"}, CFG,
     None, None, dict(token="e", token_file=""), dict(token="$QUANTA_TOKEN")),
    ("empty values count as not given", {"endpoint": "", "tenant": None}, {"QUANTA_ENDPOINT": ""}, CFG, None,
     None, dict(endpoint="lab:7000", tenant="acme"), {}),
]


@pytest.mark.parametrize("case, arguments, env, cfg, state, context, expected, sources", CASES,
                         ids=[c[0] for c in CASES])
def test_resolution_order(case, arguments, env, cfg, state, context, expected, sources) -> None:
    got = config.resolve(arguments=arguments, env=env, config=cfg, local_state=state, context=context)
    assert {key: getattr(got, key) for key in expected} == expected
    assert {key: got.sources[key] for key in sources} == sources


@pytest.mark.parametrize("env, context", [({"QUANTA_CONTEXT": "nope"}, None), ({}, "nope"),
                                          ({}, None)], ids=["env", "argument", "current"])
def test_an_unknown_context_is_an_error_naming_the_known_ones(env, context) -> None:
    cfg = Config(CFG.contexts, current="nope")
    with pytest.raises(ConfigError) as caught:
        config.resolve(arguments={}, env=env, config=cfg, local_state=UP, context=context)
    assert caught.value.reason == "CONTEXT_NOT_FOUND"
    assert "'nope'" in str(caught.value) and "bare, dev, lab" in str(caught.value)


def test_the_file_round_trips_and_is_private(tmp_path) -> None:
    path = tmp_path / "quanta" / "config.yaml"
    with config.editing_config(path) as box:
        box[0] = CFG
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "token-file: /dev.token" in path.read_text() and "current-context: lab" in path.read_text()
    assert config.load_config(path) == CFG


def test_deleting_the_current_context_leaves_none_current_and_the_others_alone() -> None:
    after = CFG.without_context("lab")
    assert after.current == "" and set(after.contexts) == {"dev", "bare"}
    assert CFG.without_context("dev").current == "lab"
    with pytest.raises(ConfigError):
        CFG.using("nope")


@pytest.mark.parametrize("text, words", [
    ("contexts: [a, b]\n", "contexts"),
    ("contexts:\n  a:\n    endpiont: x:1\n", "endpiont"),
    ("current-context: a\nextra: 1\n", "extra"),
    ("contexts: {a: 3}\n", "mapping"),
    ("contexts:\n  a: [\n", "YAML"),
], ids=["list", "typo", "unknown-key", "scalar", "broken"])
def test_a_malformed_file_is_a_clear_error(tmp_path, text, words) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load_config(path)
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_concurrent_edits_all_land(tmp_path) -> None:
    path = tmp_path / "config.yaml"

    def add(n: int) -> None:
        with config.editing_config(path) as box:
            box[0] = box[0].with_context(Context(f"c{n}", endpoint=f"h:{n}"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(config.load_config(path).contexts) == sorted(f"c{n}" for n in range(8))


def test_settings_read_the_file_the_environment_names_and_the_token_file(tmp_path, monkeypatch) -> None:
    token_file = tmp_path / "dev.token"
    token_file.write_text("secret-token\n")
    path = tmp_path / "config.yaml"
    with config.editing_config(path) as box:
        box[0] = Config({"dev": Context("dev", endpoint="dev:7000", token_file=str(token_file))}, "dev")
    monkeypatch.setenv("QUANTA_CONFIG", str(path))
    got = config.settings()
    assert (got.endpoint, got.token, got.context) == ("dev:7000", "secret-token", "dev")
    token_file.unlink()
    with pytest.raises(ConfigError) as caught:
        config.settings()
    assert caught.value.reason == "FILE_UNREADABLE" and str(token_file) in str(caught.value)


def test_the_default_paths_follow_xdg() -> None:
    assert config.config_path({"XDG_CONFIG_HOME": "/x"}) == config.pathlib.Path("/x/quanta/config.yaml")
    assert config.config_path({"QUANTA_CONFIG": "/y.yaml", "XDG_CONFIG_HOME": "/x"}) == config.pathlib.Path("/y.yaml")
    assert config.state_dir({"XDG_STATE_HOME": "/s"}) == config.pathlib.Path("/s/quanta")


def test_each_system_has_its_own_state_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert config.local_state_path().name == "local.json"  # the default system: where try-vcsim looks
    config.write_local_state("a", {"endpoint": "127.0.0.1:1"})
    config.write_local_state("b", {"endpoint": "127.0.0.1:2"})
    assert [config.local_state(n)["endpoint"] for n in ("a", "b")] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert stat.S_IMODE(config.local_state_path("a").stat().st_mode) == 0o600
    assert config.local_state("c") is None
    with pytest.raises(ConfigError):
        config.local_state_path("../etc")


def test_tokens_stay_out_of_reprs() -> None:
    from quanta.config import Context, Settings

    secret = "eyJ-secret-token"
    assert secret not in repr(Context(name="lab", token=secret))
    assert secret not in repr(Settings(endpoint="h:1", token=secret, tenant="t", project="p", tls_ca="", context=None))
