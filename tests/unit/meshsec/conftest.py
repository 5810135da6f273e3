import pytest

from x0tta6bl4.mesh.security import LocalAuthority


@pytest.fixture(scope="module")
def auth(request):
    """An in-process authority with real keys for the module's NODES (default n0, n1, n2)."""
    a = LocalAuthority()
    for n in getattr(request.module, "NODES", ("n0", "n1", "n2")):
        a.issue(n)
    return a
