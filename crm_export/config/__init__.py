"""The config file users edit (TOML), validated into frozen pydantic models.

Every problem names the file and the key path, and all problems are reported at once.

- ``models``: the sections and their keys, each declared once (type, default, bounds)
- ``checks``: the domain checks the models attach to their fields
- ``secret``: the ``Secret`` value, read from an environment variable or a file
- ``problems``: pydantic's errors said in crm-export's words
- ``loader``: finding and reading the file (``load_config``)
- ``wording``: how problems name keys and show values
"""

from crm_export.config.checks import MIN_API_VERSION
from crm_export.config.loader import CONFIG_ENV_VAR, load_config, resolve_config_path
from crm_export.config.models import (
    AUTH_MODES,
    AUTH_NEEDS,
    CONFIG_KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_BATCH_SIZE,
    MAX_TIMEOUT_SECONDS,
    AuthMode,
    Config,
    DatabaseConfig,
    ExportConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    MetricsConfig,
    RetryConfig,
    SalesforceConfig,
    SandboxConfig,
    ScheduleConfig,
    StreamConfig,
)
from crm_export.config.secret import Secret
from crm_export.config.wording import stream_key_path

__all__ = [
    "AUTH_MODES",
    "AUTH_NEEDS",
    "CONFIG_ENV_VAR",
    "CONFIG_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_BATCH_SIZE",
    "MAX_TIMEOUT_SECONDS",
    "MIN_API_VERSION",
    "AuthMode",
    "Config",
    "DatabaseConfig",
    "ExportConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "MetricsConfig",
    "RetryConfig",
    "SalesforceConfig",
    "SandboxConfig",
    "ScheduleConfig",
    "Secret",
    "StreamConfig",
    "load_config",
    "resolve_config_path",
    "stream_key_path",
]
