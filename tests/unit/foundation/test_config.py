import pytest

from x0tta6bl4.config import CommonSettings, ConfigError, load_settings


def test_defaults_load(monkeypatch):
    monkeypatch.delenv("X0TTA6BL4_CONFIG_FILE", raising=False)
    s = load_settings(CommonSettings)
    assert s.max_deliver == 5 and s.nats_url.startswith("nats://")


@pytest.mark.parametrize("env,needle", [
    ({"X0TTA6BL4_MAX_DELIVER": "many"}, "X0TTA6BL4_MAX_DELIVER='many'"),
    ({"X0TTA6BL4_MAX_DELIVER": "0"}, "X0TTA6BL4_MAX_DELIVER='0'"),
    ({"X0TTA6BL4_NATS_URL": "http://x"}, "not a NATS URL"),
    ({"X0TTA6BL4_HEALTH_PORT": "70000"}, "X0TTA6BL4_HEALTH_PORT"),
    ({"X0TTA6BL4_LOG_LEVEL": "LOUD"}, "X0TTA6BL4_LOG_LEVEL"),
])
def test_bad_values_name_the_setting(monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings(CommonSettings)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_file_toml_and_env_precedence(tmp_path, monkeypatch):
    f = tmp_path / "x.toml"
    f.write_text('max_deliver = 7\nack_wait_s = 12.5\n')
    monkeypatch.setenv("X0TTA6BL4_CONFIG_FILE", str(f))
    monkeypatch.setenv("X0TTA6BL4_ACK_WAIT_S", "3")
    s = load_settings(CommonSettings)
    assert s.max_deliver == 7 and s.ack_wait_s == 3


def test_broken_config_file_is_one_clear_line(tmp_path, monkeypatch):
    f = tmp_path / "x.toml"
    f.write_text("max_deliver = [\n")
    monkeypatch.setenv("X0TTA6BL4_CONFIG_FILE", str(f))
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(CommonSettings)
    monkeypatch.setenv("X0TTA6BL4_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(CommonSettings)
