"""The harness itself: a test during which a server answers INTERNAL fails, even when the test's own
assertions pass; a process log with an unhandled error fails `assert_clean_logs`. Run with pytester, so
the failing test is an inner run's, not this suite's."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]

INNER_CONFTEST = "from tests.conftest import no_server_errors  # noqa: F401  (the autouse fixture under test)\n"
INNER_TESTS = '''
import grpc
import pytest

from mint import auth
from mint.proto import catalog_pb2, catalog_pb2_grpc
from mint.server import build_server, channel
from services.catalog.catalog import Catalog, StoreAuthenticator
from services.catalog.config import CatalogConfig
from services.catalog.main import catalog_service, open_catalog


def internal_answer(tmp_path, monkeypatch):
    """Call a real catalog server whose create_tenant has a bug; return the status the client saw."""
    key = auth.generate_key().key
    catalog = open_catalog(CatalogConfig(database_url=f"sqlite:///{tmp_path / 'c.db'}", blob_dir=str(tmp_path / "blobs"), admin_key=key))
    monkeypatch.setattr(Catalog, "create_tenant", lambda self, name: 1 / 0)
    server, port = build_server([catalog_service(catalog)], authenticator=StoreAuthenticator(catalog.store))
    server.start()
    try:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateTenant(catalog_pb2.CreateTenantRequest(name="acme"), metadata=auth.call_metadata(key))
        return err.value.code()
    finally:
        server.stop(0).wait()
        catalog.store.close()


def test_an_internal_answer_fails_the_test(tmp_path, monkeypatch):
    assert internal_answer(tmp_path, monkeypatch) == grpc.StatusCode.INTERNAL  # passes; the harness must not


@pytest.mark.server_errors
def test_a_test_marked_server_errors_may_see_one(tmp_path, monkeypatch):
    assert internal_answer(tmp_path, monkeypatch) == grpc.StatusCode.INTERNAL
'''


def test_a_server_error_during_a_test_fails_it(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    server_errors: the test provokes server errors on purpose\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    # The unmarked test's own assertions pass; the harness fails it at teardown. The marked one passes.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*mint.server: unhandled error in /mint.v1.CatalogService/CreateTenant*"])
    result.stdout.fnmatch_lines(["ERROR test_inner.py::test_an_internal_answer_fails_the_test*"])


@pytest.mark.parametrize(
    "text",
    [
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nZeroDivisionError: division by zero\n",
        "ERROR mint.server: /mint.v1.TrainerService/ForwardBackward answered INTERNAL: boom\n",
        "ERROR grpc._server: Exception calling application: boom\n",
    ],
)
def test_a_process_log_with_a_server_error_fails_assert_clean_logs(tmp_path, text):
    from tests.conftest import assert_clean_logs

    log = tmp_path / "service.log"
    log.write_text("INFO mint.server: listening\n" + text)
    with pytest.raises(pytest.fail.Exception, match="logged a server error"):
        assert_clean_logs([log])
    log.write_text("INFO mint.server: listening\nWARNING mint.server: a client went away\n")
    assert_clean_logs([log])
