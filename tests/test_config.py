"""Configuration: the embedded default loads, errors name key and file, environment overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
