"""Configuration: the embedded default loads, errors name key and file, environment overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from avn_node.config import DEFAULT_CONFIG, ConfigError, load_settings


def test_config_embedded_default_matches_design_defaults():
    s = load_settings(DEFAULT_CONFIG)
    assert (s.node.ae_title, s.node.port, s.pipeline.study_idle_seconds, s.destinations) == ("AVN_NODE", 11112, 20, [])


def test_config_error_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nstudy_idle_secs = 5\n")
    with pytest.raises(ConfigError, match=r'bad\.toml.*"pipeline\.study_idle_secs"'):
        load_settings(bad)


def test_config_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AVN_NODE__PORT", "11113")
    assert load_settings(DEFAULT_CONFIG).node.port == 11113


def test_cli_serve_exits_2_on_bad_config(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 'eleven'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "avn_node", "serve", "--config", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and '"node.port"' in proc.stderr


def test_config_rejects_destination_ae_title_over_16_characters(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[destinations]]\nname = "a"\nae_title = "A_VERY_LONG_AE_TITLE"\nhost = "h"\nport = 104\n')
    with pytest.raises(ConfigError, match=r'"destinations\.0\.ae_title"'):
        load_settings(bad)


def test_config_relative_paths_in_a_file_resolve_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "node.toml"
    config.write_text('[node]\ndata_dir = "../data"\n[database]\nurl = "sqlite:///../data/node.db"\n'
                      '[models]\ndir = "weights"\n')  # fmt: skip
    monkeypatch.chdir(tmp_path / "etc")
    elsewhere = tmp_path / "cron"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(config)
    assert s.node.data_dir == tmp_path / "data"
    assert s.database.url == f"sqlite:///{tmp_path / 'data' / 'node.db'}"
    assert s.models.dir == folder / "weights"


def test_config_relative_environment_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVN_NODE__DATA_DIR", "here")
    assert load_settings(DEFAULT_CONFIG).node.data_dir == tmp_path / "here"


def test_config_embedded_default_points_at_the_checkout_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    s = load_settings(DEFAULT_CONFIG)
    assert s.node.data_dir == DEFAULT_CONFIG.parents[1] / "var"
    assert (s.models.dir / "model.json").is_file()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[reporting]\ngsps = true\n", "reporting.gsps"),
        ("[reporting]\nsegmentation = true\n", "reporting.segmentation"),
    ],
)
def test_cli_refuses_a_value_whose_feature_is_not_built_with_exit_2_naming_the_key(tmp_path: Path, toml: str, key: str):
    config = tmp_path / "unbuilt.toml"
    config.write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "avn_node", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{key}:" in proc.stderr and "not implemented yet" in proc.stderr


def test_cli_refuses_a_dashboard_off_loopback_without_a_token_with_exit_2_naming_the_key(tmp_path: Path):
    config = tmp_path / "open.toml"
    config.write_text('[dashboard]\nhost = "0.0.0.0"\n')
    proc = subprocess.run([sys.executable, "-m", "avn_node", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "dashboard.token:" in proc.stderr and "not loopback" in proc.stderr
    config.write_text('[dashboard]\nhost = "0.0.0.0"\ntoken = "s3cret-token"\n')
    assert load_settings(config).dashboard.token == "s3cret-token"


def test_cli_refuses_celery_on_sqlite_or_without_a_broker_with_exit_2_naming_the_key(tmp_path: Path):
    config = tmp_path / "celery.toml"
    config.write_text('[queue]\nbackend = "celery"\n[database]\nurl = "sqlite:///x.db"\n')
    proc = subprocess.run([sys.executable, "-m", "avn_node", "worker", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "database.url:" in proc.stderr and "not SQLite" in proc.stderr
    assert "queue.broker_url:" in proc.stderr
    config.write_text('[queue]\nbackend = "celery"\nbroker_url = "redis://127.0.0.1:1/0"\n'
                      '[database]\nurl = "postgresql+psycopg://avn@127.0.0.1:1/avn"\n')
    assert load_settings(config).queue.backend == "celery"


def test_config_refuses_missing_tls_files_and_a_key_without_a_certificate(tmp_path: Path):
    missing = tmp_path / "missing.toml"
    missing.write_text('[security]\ntls_cert = "node.pem"\n')
    with pytest.raises(ConfigError, match=r"security\.tls_cert: no such file .*node\.pem"):
        load_settings(missing)
    (tmp_path / "node.key").write_text("key")
    lone = tmp_path / "lone.toml"
    lone.write_text('[security]\ntls_key = "node.key"\n')
    with pytest.raises(ConfigError, match=r"security\.tls_key: set without security\.tls_cert"):
        load_settings(lone)


def test_settings_are_frozen():
    s = load_settings(DEFAULT_CONFIG)
    with pytest.raises(ValidationError):
        s.node.port = 1


def test_config_example_for_scale_out_loads_as_celery_on_postgresql():
    settings = load_settings(DEFAULT_CONFIG.parent / "examples" / "scale-out.toml")
    assert settings.queue.backend == "celery" and settings.queue.broker_url.startswith("redis://")
    assert settings.database.url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ('name = "a"\nae_title = "A"\nhost = "h"', 'kind = "dimse" needs port'),
        ('name = "a"\nae_title = "A"\nhost = "h"\nport = 104\nurl = "http://x"', 'url: only for kind = "stow-rs"'),
        ('name = "a"\nkind = "stow-rs"', 'needs url = "http(s)://'),
        ('name = "a"\nkind = "stow-rs"\nurl = "http://x"\nhost = "h"', 'host: only for kind = "dimse"'),
        ('name = "a"\nkind = "stow-rs"\nurl = "http://x"\ncalling_ae_title = "US"', 'calling_ae_title: only for'),
        ('name = "a"\nkind = "stow-rs"\nurl = "http://x"\nstorage_commitment = true', 'storage_commitment: only for'),
        ('name = "a"\nkind = "stow-rs"\nurl = "http://x"\ntoken = "t"\nusername = "u"\npassword = "p"', "not both"),
        ('name = "a"\nkind = "stow-rs"\nurl = "http://x"\nusername = "u"', "go together"),
    ],
)
def test_config_refuses_a_destination_with_fields_of_another_kind(tmp_path: Path, destination: str, message: str):
    config = tmp_path / "dest.toml"
    config.write_text(f"[[destinations]]\n{destination}\n")
    with pytest.raises(ConfigError, match=r"destinations\.0") as refused:
        load_settings(config)
    assert message in str(refused.value)


def test_config_resolves_a_stow_destinations_ca_bundle_against_the_file_and_refuses_a_missing_one(tmp_path: Path):
    config = tmp_path / "web.toml"
    config.write_text('[[destinations]]\nname = "web"\nkind = "stow-rs"\nurl = "https://pacs/dicom-web"\n'
                      'token = "t"\nca_bundle = "ca.pem"\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"destinations\.web\.ca_bundle: no such file .*ca\.pem"):
        load_settings(config)
    (tmp_path / "ca.pem").write_text("pem")
    (web,) = load_settings(config).destinations
    assert web.ca_bundle == str(tmp_path / "ca.pem") and web.verify_tls and web.kind == "stow-rs"
