"""Settings from the environment: defaults, validation messages, and secrets kept out of repr."""

from __future__ import annotations

import pytest

from thumbnail_ml.settings import Settings, SettingsError


def test_defaults():
    settings = Settings.from_env({})
    assert settings.port == 9090
    assert settings.label_studio_url is None
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.min_labelled_tasks == 20


def test_label_studio_url_normalised():
    assert Settings.from_env({"LABEL_STUDIO_URL": "http://localhost:8080/"}).label_studio_url == "http://localhost:8080"


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "invalid LABEL_STUDIO_URL 'localhost:8080'"),
        ({"LABEL_STUDIO_URL": "ftp://ls"}, "expected an http(s) URL"),
        ({"LABEL_STUDIO_API_KEY": "abc123"}, "LABEL_STUDIO_URL is not"),
        ({"PORT": "http"}, "invalid PORT 'http': expected an integer"),
        ({"PORT": "70000"}, "between 1 and 65535"),
        ({"THREADS": "0"}, "invalid THREADS '0'"),
        ({"LOG_LEVEL": "LOUD"}, "invalid LOG_LEVEL 'LOUD'"),
        ({"BASIC_AUTH_USER": "me"}, "must be set together"),
        ({"REDIS_URL": "localhost:6379"}, "invalid REDIS_URL"),
        ({"MAX_IMAGE_MB": "lots"}, "invalid MAX_IMAGE_MB 'lots': expected a number"),
    ],
)
def test_invalid_values_named(environ, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert message in str(caught.value)


def test_secrets_not_in_repr():
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "token-value",
                                  "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "password-value"})
    assert "token-value" not in repr(settings)
    assert "password-value" not in repr(settings)
