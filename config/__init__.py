"""Settings of threads-poller, read from the environment (and a `.env` file)."""

from config.settings import AuthMode, LogFormat, Settings, SettingsError, load_settings

__all__ = ["AuthMode", "LogFormat", "Settings", "SettingsError", "load_settings"]
