"""Configuration (DESIGN §4): TOML file, then ``AVN_`` environment overrides with ``__`` nesting."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from avn_node.models import DEFAULT_WEIGHTS

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "avn-node.toml"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _ae_title(value: str) -> str:
    """PS3.5 AE VR: 1 to 16 characters, no backslash, not only spaces."""
    if not 0 < len(value.strip()) <= 16 or "\\" in value:
        raise ValueError("an AE title has 1 to 16 characters and no backslash")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_ae_title)]


class NodeSettings(_Section):
    ae_title: AETitle = "AVN_NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    data_dir: Path = Path("var")


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/avn-node.db"


class RoutingSettings(_Section):
    modalities: list[str] = ["CR", "DX"]
    body_parts: list[str] = ["HIP", "PELVIS", ""]


class PipelineSettings(_Section):
    analyse: bool = True
    study_idle_seconds: float = Field(20, gt=0)
    study_force_seconds: float = Field(600, gt=0)
    case_window_hours: float = Field(24, ge=0)


class QueueSettings(_Section):
    backend: Literal["local", "celery"] = "local"
    broker_url: str = ""
    lease_seconds: float = Field(600, gt=0)


class ModelsSettings(_Section):
    dir: Path = DEFAULT_WEIGHTS
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(2, ge=1)
    # A head beyond the weights' out-of-distribution threshold gets "AVN not evaluated", no stage. The
    # threshold is fitted at training time (model.json "ood"); this only switches the refusal on or off.
    refuse_out_of_distribution: bool = True


class ReportingSettings(_Section):
    summary_image: bool = True
    gsps: bool = False
    segmentation: bool = False


class DispatchSettings(_Section):
    retry_first_seconds: float = Field(10, gt=0)
    retry_max_seconds: float = Field(600, gt=0)
    give_up_hours: float = Field(24, gt=0)


class SecuritySettings(_Section):
    allowed_calling_aets: list[str] = []
    allowed_peer_ips: list[str] = []
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    max_associations: int = Field(64, ge=1)
    max_pdu_bytes: int = Field(4_194_304, ge=0)
    max_dataset_mb: float = Field(512, gt=0)
    min_free_disk_mb: float = Field(1024, ge=0)


class StorageSettings(_Section):
    retention_days: float = Field(0, ge=0)


class LoggingSettings(_Section):
    json_logs: bool = Field(False, alias="json")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DashboardSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str = ""


class Destination(_Section):
    """One archive results are sent to (C-STORE SCU)."""

    name: str
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle = "AVN_NODE"
    tls: bool = False


class Settings(BaseSettings):
    """Everything the node reads from its configuration."""

    model_config = SettingsConfigDict(env_prefix="AVN_", env_nested_delimiter="__", extra="forbid")

    node: NodeSettings = NodeSettings()
    database: DatabaseSettings = DatabaseSettings()
    routing: RoutingSettings = RoutingSettings()
    pipeline: PipelineSettings = PipelineSettings()
    queue: QueueSettings = QueueSettings()
    models: ModelsSettings = ModelsSettings()
    reporting: ReportingSettings = ReportingSettings()
    dispatch: DispatchSettings = DispatchSettings()
    security: SecuritySettings = SecuritySettings()
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    dashboard: DashboardSettings = DashboardSettings()
    destinations: list[Destination] = []

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        """Environment overrides the file's values (passed as init arguments)."""
        return env_settings, init_settings

    @property
    def tmp_dir(self) -> Path:
        """Where incoming datasets are streamed before their rename (inside ``data_dir``: same filesystem)."""
        return self.node.data_dir / "tmp"


def load_settings(path: Path | None = None) -> Settings:
    """Read ``path`` (default: the embedded ``config/avn-node.toml``) and the environment.

    Raises:
        ConfigError: unreadable TOML, an unknown key or a bad value; the message names key and file.
    """
    path = path or DEFAULT_CONFIG
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not path.exists() and path != DEFAULT_CONFIG:
        raise ConfigError(f"{path}: no such configuration file")
    try:
        return Settings(**raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            problems.append(f'key "{key}": {error["msg"]}')
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
