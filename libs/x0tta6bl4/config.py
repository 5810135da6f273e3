"""Settings for every service: environment variables with one prefix
(``X0TTA6BL4_``) and an optional TOML or YAML file named by
``X0TTA6BL4_CONFIG_FILE``. Environment variables win over the file.

A bad value stops a service at start with one line naming the setting::

    config error: X0TTA6BL4_MAX_DELIVER='many': Input should be a valid integer
"""
from __future__ import annotations

import os
import pathlib
import socket
import tomllib
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from x0tta6bl4.config_errors import ConfigError
from x0tta6bl4.monitoring.thresholds import ThresholdConfigError, Thresholds, load_thresholds

if TYPE_CHECKING:
    from x0tta6bl4.bus.connection import NatsCredentials
    from x0tta6bl4.trust import Signer, TrustBundle

PREFIX = "X0TTA6BL4_"
CONFIG_FILE_ENV = PREFIX + "CONFIG_FILE"


class _FileSource(PydanticBaseSettingsSource):
    """Values from the TOML/YAML file named by X0TTA6BL4_CONFIG_FILE (keys are lower-case setting names)."""

    def __init__(self, settings_cls: type[BaseSettings]):
        super().__init__(settings_cls)
        self._data = self._load()

    @staticmethod
    def _load() -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_ENV)
        if not path:
            return {}
        p = pathlib.Path(path)
        if not p.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={path!r}: no such file")
        text = p.read_text()
        try:
            data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{CONFIG_FILE_ENV}={path!r}: cannot parse: {str(e).splitlines()[0]}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{CONFIG_FILE_ENV}={path!r}: top level must be a table of settings")
        return {str(k).lower(): v for k, v in data.items()}

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class CommonSettings(BaseSettings):
    """Settings shared by every service."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", validate_default=True)

    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated NATS server URLs")
    data_dir: pathlib.Path = Field(pathlib.Path("var"), description="local state: keys, spans, logs")
    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC endpoint for spans (unset: spans kept locally)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    health_port: int = Field(0, ge=0, le=65535, description="HTTP /health, /ready, /metrics (0 = off)")
    max_deliver: int = Field(5, ge=1, le=100, description="deliveries before a message is dead-lettered")
    ack_wait_s: float = Field(30.0, gt=0, le=3600)
    fetch_batch: int = Field(32, ge=1, le=1024)
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas for streams (clustered NATS)")
    monitor_partitions: int = Field(1, ge=1, le=16, description=(
        "telemetry partitions across monitor replicas (the MESH stream stores each node's reports under its "
        "partition; one durable consumer per partition): the same on every service and the provisioner"))
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    trust_domain: str = Field("x0tta6bl4.mesh", pattern=r"^[a-z0-9.-]{1,253}$")
    nats_nkey_file: pathlib.Path | None = Field(None, description="this identity's NATS nkey seed file")
    nats_ca_file: pathlib.Path | None = Field(None, description="CA certificate of the NATS server (TLS)")
    nats_identity: str = Field("", description="bus identity (default: the nkey file's name)")
    trust_file: pathlib.Path | None = Field(None, description="trust bundle: the services' public signing keys")
    signing_key_file: pathlib.Path | None = Field(None, description="this service's ML-DSA-65 signing seed")
    thresholds_file: pathlib.Path | None = Field(None, description="TOML/YAML/JSON threshold table (every stage)")
    thresholds: str | None = Field(None, description='inline JSON, e.g. {"cpu_percent": {"warning": 60}}')

    @field_validator("nats_url")
    @classmethod
    def _urls(cls, v: str) -> str:
        for url in v.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"not a NATS URL: {url.strip()!r} (expected nats://host:port)")
        return v

    def nats_credentials(self) -> NatsCredentials | None:
        """This process's bus identity (None: an open broker, development only). ConfigError names a
        missing file."""
        if self.nats_nkey_file is None:
            return None
        from x0tta6bl4.bus.connection import CredentialsError, NatsCredentials
        creds = NatsCredentials(self.nats_identity or self.nats_nkey_file.stem, self.nats_nkey_file,
                                self.nats_ca_file)
        try:
            return creds.check()
        except CredentialsError as e:
            raise ConfigError(str(e)) from None

    def threshold_table(self) -> Thresholds:
        """The one threshold table of this deployment (the spec's, changed by the two threshold settings);
        every stage classifies with it. ConfigError names the bad setting."""
        try:
            return load_thresholds(self.thresholds_file, self.thresholds)
        except ThresholdConfigError as e:
            raise ConfigError(str(e)) from None

    def signer(self, owner: str) -> Signer:
        """This service's signing key (``owner``: the service it speaks for). ConfigError when the setting is
        missing or the file is not a signing seed: a service that signs does not start without its key."""
        from x0tta6bl4.trust import Signer, TrustError
        if self.signing_key_file is None:
            raise ConfigError(f"{PREFIX}SIGNING_KEY_FILE is not set: {owner} needs its signing key "
                              "(meshctl secrets init makes one per service)")
        try:
            return Signer.load(owner, self.signing_key_file)
        except TrustError as e:
            raise ConfigError(f"{PREFIX}SIGNING_KEY_FILE: {e}") from None

    def trust_bundle(self) -> TrustBundle:
        """The trust bundle (the services' public keys). ConfigError when the setting is missing or the file
        cannot be read or trusted."""
        from x0tta6bl4.trust import TrustBundle, TrustError
        if self.trust_file is None:
            raise ConfigError(f"{PREFIX}TRUST_FILE is not set: the trust bundle with the services' public "
                              "signing keys is required (meshctl secrets init writes it)")
        try:
            return TrustBundle.load(self.trust_file)
        except TrustError as e:
            raise ConfigError(f"{PREFIX}TRUST_FILE: {e}") from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls))


S = TypeVar("S", bound=CommonSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or raise ConfigError with one line naming the bad setting."""
    try:
        return cls(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{PREFIX}{name.upper()}{shown}: {err['msg']}{more}") from None
