"""The event-loop switch every service and mesh host calls first (X0TTA6BL4_EVENT_LOOP)."""
import asyncio

import pytest

from x0tta6bl4.bus.connection import EventLoopError, install_event_loop
from x0tta6bl4.config import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restore_policy():
    yield
    asyncio.set_event_loop_policy(None)


def _loop_module() -> str:
    async def probe():
        return type(asyncio.get_running_loop()).__module__
    return asyncio.run(probe())


def test_auto_runs_uvloop_when_installed():
    pytest.importorskip("uvloop")
    assert install_event_loop({}) == "uvloop"
    assert _loop_module().startswith("uvloop")


def test_asyncio_switch_gives_the_standard_loop():
    assert install_event_loop({"X0TTA6BL4_EVENT_LOOP": "asyncio"}) == "asyncio"
    assert _loop_module().startswith("asyncio")


def test_explicit_uvloop():
    pytest.importorskip("uvloop")
    assert install_event_loop({"X0TTA6BL4_EVENT_LOOP": " UVLOOP "}) == "uvloop"


def test_unknown_loop_is_a_config_error_naming_the_setting():
    with pytest.raises(EventLoopError) as e:
        install_event_loop({"X0TTA6BL4_EVENT_LOOP": "trio"})
    assert isinstance(e.value, ConfigError)
    assert "X0TTA6BL4_EVENT_LOOP='trio'" in str(e.value) and "asyncio" in str(e.value)
