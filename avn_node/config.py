"""Configuration (DESIGN §4): TOML file, then ``AVN_`` environment overrides with ``__`` nesting.

Relative paths (``node.data_dir``, ``models.dir``, a SQLite URL's file) in a file resolve against that file's
folder; from the environment or the defaults, against the working directory. Settings are frozen, and a value
whose feature is not built is refused with the key that holds it.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

from avn_node.models import DEFAULT_WEIGHTS

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "avn-node.toml"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    def next_attempt(self, attempts: int, now: datetime) -> datetime:
        """When to try a delivery again after ``attempts`` failures: ``retry_first_seconds`` doubling per
        attempt, at most ``retry_max_seconds``."""
        delay = min(self.retry_first_seconds * 2 ** max(0, attempts - 1), self.retry_max_seconds)
        return now + timedelta(seconds=delay)


class SecuritySettings(_Section):
    allowed_calling_aets: list[str] = []
    allowed_peer_ips: list[str] = []
    tls_cert: str = ""  # PEM; when set the SCP speaks TLS only
    tls_key: str = ""
    tls_ca: str = ""  # when set, peers must present a certificate signed by it; also checks destinations
    audit_log: str = ""  # IHE ATNA-style JSON lines; "" = off
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


# DESIGN §4: stow-rs takes url instead
DIMSE_ONLY = ("ae_title", "host", "port", "calling_ae_title", "tls", "storage_commitment")
STOW_ONLY = ("url", "token", "username", "password", "ca_bundle")


class Destination(_Section):
    """One archive results are sent to: by C-STORE (``kind = "dimse"``) or by DICOMweb STOW-RS (``"stow-rs"``)."""

    name: str
    kind: Literal["dimse", "stow-rs"] = "dimse"
    ae_title: AETitle | None = None
    host: str = ""
    port: int | None = Field(None, ge=1, le=65535)
    calling_ae_title: AETitle = "AVN_NODE"
    tls: bool = False
    storage_commitment: bool = False  # a delivery counts only once the archive commits it (PS3.4 Annex J)
    storage_commitment_timeout_seconds: float = Field(600, gt=0)  # unreported for longer: in doubt, asked again
    url: str = ""  # the DICOMweb service root, e.g. https://pacs.example.org/dicom-web
    token: str = ""  # bearer token …
    username: str = ""  # … or basic credentials
    password: str = ""
    verify_tls: bool = True
    ca_bundle: str = ""  # PEM of the certificate authorities to trust instead of the system's

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Destination:
        if self.kind == "dimse":
            if missing := [k for k in ("ae_title", "host", "port") if not getattr(self, k)]:
                raise ValueError(f'kind = "dimse" needs {", ".join(missing)}')
            if stray := [k for k in STOW_ONLY if getattr(self, k)]:
                raise ValueError(f'{", ".join(stray)}: only for kind = "stow-rs"')
            return self
        if not self.url.startswith(("http://", "https://")):
            raise ValueError('kind = "stow-rs" needs url = "http(s)://…" (the DICOMweb service root)')
        given = {k for k in DIMSE_ONLY if getattr(self, k)} - ({"calling_ae_title"} - self.model_fields_set)
        if stray := [k for k in DIMSE_ONLY if k in given]:  # calling_ae_title counts only when set, not defaulted
            raise ValueError(f'{", ".join(stray)}: only for kind = "dimse"')
        if self.token and self.username:
            raise ValueError("token or username/password, not both")
        if bool(self.username) != bool(self.password):
            raise ValueError("username and password go together")
        return self


class Settings(BaseSettings):
    """Everything the node reads from its configuration."""

    model_config = SettingsConfigDict(env_prefix="AVN_", env_nested_delimiter="__", extra="forbid", frozen=True)

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
        """Where incoming datasets are streamed before their rename (inside ``data_dir``: same filesystem); a
        running node uses a folder of its own inside, emptied at start."""
        return self.node.data_dir / "tmp"


NOT_BUILT = "is not implemented yet"


def refused_values(settings: Settings) -> list[str]:
    """``key: why`` for every value that asks for a feature the node does not have (it would be ignored), and
    for TLS files that are missing or incomplete."""
    security = settings.security
    problems = [f"security.{key}: no such file {getattr(security, key)}" for key in ("tls_cert", "tls_key", "tls_ca")
                if getattr(security, key) and not Path(getattr(security, key)).is_file()]  # fmt: skip
    problems += [f"destinations.{d.name}.ca_bundle: no such file {d.ca_bundle}" for d in settings.destinations
                 if d.ca_bundle and not Path(d.ca_bundle).is_file()]  # fmt: skip
    if security.tls_key and not security.tls_cert:
        problems.append("security.tls_key: set without security.tls_cert")
    if settings.queue.backend == "celery":
        if not settings.queue.broker_url:
            problems.append('queue.broker_url: backend = "celery" needs the broker, e.g. "redis://127.0.0.1:6379/0"')
        if make_url(settings.database.url).get_backend_name() == "sqlite":
            problems.append('database.url: backend = "celery" needs one database that serve and every worker reach '
                            '(PostgreSQL: "postgresql+psycopg://user@host/db"), not SQLite')  # fmt: skip
    problems += [f"reporting.{k}: {k} output {NOT_BUILT}" for k in ("gsps", "segmentation")
                 if getattr(settings.reporting, k)]  # fmt: skip
    if not settings.dashboard.token and not _loopback(settings.dashboard.host):
        problems.append(f'dashboard.token: required when dashboard.host ("{settings.dashboard.host}") is not loopback')
    return problems


def _loopback(host: str) -> bool:
    from avn_node.web.auth import is_loopback

    return is_loopback(host)


def _resolved_path(value: object, base: Path) -> object:
    if value in ("", None):
        return value  # "" means off
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolved_url(url: object, base: Path) -> object:
    """A SQLite URL's relative file against ``base``; other URLs (and in-memory SQLite) as they are."""
    parsed = make_url(str(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    return parsed.set(database=str(_resolved_path(parsed.database, base))).render_as_string(hide_password=False)


def _resolve_against(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` (TOML or environment values) with its relative paths made absolute against ``base``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, key, resolve in (("node", "data_dir", _resolved_path), ("models", "dir", _resolved_path),
                                  ("database", "url", _resolved_url), ("security", "tls_cert", _resolved_path),
                                  ("security", "tls_key", _resolved_path), ("security", "tls_ca", _resolved_path),
                                  ("security", "audit_log", _resolved_path)):  # fmt: skip
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section][key] = resolve(out[section][key], base)
    for destination in out.get("destinations") or []:
        if isinstance(destination, dict) and destination.get("ca_bundle"):
            destination["ca_bundle"] = _resolved_path(destination["ca_bundle"], base)
    return out


def _absolute(settings: Settings) -> Settings:
    """Paths still relative (from the environment or the defaults) against the working directory."""
    cwd = Path.cwd()
    sections = {"node": NodeSettings, "models": ModelsSettings, "database": DatabaseSettings,
                "security": SecuritySettings}  # fmt: skip
    fixed = _resolve_against({k: getattr(settings, k).model_dump() for k in sections}, cwd)
    return settings.model_copy(update={k: model(**fixed[k]) for k, model in sections.items()})


def load_settings(path: Path | None = None) -> Settings:
    """Read ``path`` (default: the embedded ``config/avn-node.toml``) and the environment.

    Raises:
        ConfigError: unreadable TOML, an unknown key, a bad value or one whose feature is not built; the
            message names key and file.
    """
    path = path or DEFAULT_CONFIG
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not path.exists() and path != DEFAULT_CONFIG:
        raise ConfigError(f"{path}: no such configuration file")
    try:
        settings = _absolute(Settings(**_resolve_against(raw, path.resolve().parent)))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            problems.append(f'key "{key}": {error["msg"]}')
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    if problems := refused_values(settings):
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return settings
