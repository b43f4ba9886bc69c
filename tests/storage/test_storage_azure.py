"""AzureStorage against Azurite on loopback: the storage contract, the URL forms and the account
rule, staged (block) uploads, and faults (wrong key, 5xx, torn bodies, a silent or absent server)
within the configured retries and timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from emulators import AZURITE_ACCOUNT, azurite_connection_string, azurite_origin
from remote_contract import *  # noqa: F403 - the shared contract tests run against this backend
from remote_contract import payload
from remote_faults import *  # noqa: F403 - and the shared fault tests
from storage_helpers import FaultProxy

from mdsloader.errors import AccessDeniedError
from mdsloader.storage import AzureOptions, AzureStorage, open_storage
from mdsloader.storage.azure import parse_azure_url

pytestmark = pytest.mark.integration

FAST = {"backoff_base": 0.001, "backoff_cap": 0.005, "timeout": 5.0}
HOST = f"{AZURITE_ACCOUNT}.blob.core.windows.net"


def azure_at(url: str, connection_string: str, **overrides: object) -> AzureStorage:
    options = AzureOptions(connection_string=connection_string, **{**FAST, **overrides})  # type: ignore[arg-type]
    return AzureStorage(url, options=options)


def with_endpoint(connection_string: str, endpoint: str) -> str:
    """The same connection string with another BlobEndpoint (a proxy, a dead port)."""
    port = int(endpoint.rsplit(":", 1)[1])
    key = dict(p.split("=", 1) for p in connection_string.split(";") if p)["AccountKey"]
    return azurite_connection_string(port, key)


@pytest.fixture
def store(azure_env: str, azurite: str) -> AzureStorage:
    """The contract's storage: ``azure://<fresh container>/root`` on Azurite."""
    return azure_at(f"{azure_env}/root", azurite)


@pytest.fixture
def origin(azurite: str) -> str:
    """Where the shared fault tests' proxy forwards to."""
    return azurite_origin(azurite)


@pytest.fixture
def store_via(azure_env: str, azurite: str) -> Callable[..., AzureStorage]:
    """The shared fault tests' storages: the fresh container reached through another endpoint."""
    return lambda endpoint, **overrides: azure_at(
        f"{azure_env}/x", with_endpoint(azurite, endpoint), **overrides
    )


@pytest.fixture
def store_in_a_missing_bucket(azure_env: str, azurite: str) -> AzureStorage:
    return azure_at("azure://no-such-container/x", azurite)


# -- URLs: two forms, one meaning each ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "account", "container", "prefix"),
    [
        ("azure://data/x/y", None, "data", "x/y"),
        ("azure://data", None, "data", ""),
        (f"azure://{HOST}/data/x/", AZURITE_ACCOUNT, "data", "x"),
        ("azure://acct.blob.core.chinacloudapi.cn/data/x", "acct", "data", "x"),
    ],
)
def test_url_forms(url: str, account: str | None, container: str, prefix: str) -> None:
    location = parse_azure_url(url)
    assert (location.account, location.container, location.prefix) == (account, container, prefix)


@pytest.mark.parametrize("url", ["azure://", f"azure://{HOST}", f"azure://{HOST}/", "azure://Data/x",
                                 "azure://a/x", "azure://bad--name/x"])  # fmt: skip
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="container"):
        open_storage(url)


def test_the_account_comes_from_the_host_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_ACCOUNT_ACCESS_KEY", "a2V5")
    hosted = open_storage("azure://acct.blob.core.windows.net/data/x")
    assert hosted.endpoint.url == "https://acct.blob.core.windows.net"
    assert hosted.url == "azure://acct.blob.core.windows.net/data/x"
    with pytest.raises(ValueError, match="needs an account"):
        open_storage("azure://data/x")
    monkeypatch.setenv("AZURE_ACCOUNT_NAME", "acct")
    plain = open_storage("azure://data/x")
    assert plain.endpoint == hosted.endpoint and plain.container == hosted.container
    assert "a2V5" not in repr(plain.options)
    # One URL never means two places: a host that disagrees with the environment is refused.
    with pytest.raises(ValueError, match="refusing to guess"):
        open_storage("azure://other.blob.core.windows.net/data/x")


def test_the_connection_string_wins_and_both_forms_reach_the_same_blobs(
    azure_env: str, azurite: str
) -> None:
    container = azure_env.removeprefix("azure://")
    plain = open_storage(f"{azure_env}/ds", retries=2, timeout=7.0)
    hosted = open_storage(f"azure://{HOST}/{container}/ds")
    assert isinstance(plain, AzureStorage) and isinstance(hosted, AzureStorage)
    assert plain.endpoint.url.startswith("http://127.0.0.1:")
    assert (plain.options.retries, plain.options.timeout) == (2, 7.0)
    plain.write_bytes("index.json", b"{}")
    assert hosted.read_bytes("index.json") == b"{}"
    assert hosted.child_url("index.json") == f"azure://{HOST}/{container}/ds/index.json"


def test_large_objects_go_up_in_concurrent_blocks_committed_at_once(
    azure_env: str, azurite: str, proxy_to: Callable[[str], FaultProxy], tmp_path: Path
) -> None:
    proxy = proxy_to(azurite_origin(azurite))
    storage = azure_at(f"{azure_env}/big", with_endpoint(azurite, proxy.url),
                       block_size=1 << 20, single_put_size=1 << 20, max_concurrency=4)  # fmt: skip
    data = payload(5 * (1 << 20) + 3)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    storage.upload_file(str(src), "shard.bin")
    blocks = [path for method, path in proxy.requests if method == "PUT" and "comp=block&" in path]
    commits = [path for method, path in proxy.requests if "comp=blocklist" in path]
    assert len(blocks) == 6 and len(commits) == 1  # readers see nothing until the one commit
    assert storage.read_bytes("shard.bin") == data
    storage.download_file("shard.bin", str(tmp_path / "back.bin"))  # ranged GETs in parallel
    assert (tmp_path / "back.bin").read_bytes() == data


# -- faults ---------------------------------------------------------------------------------------


def test_a_wrong_key_is_access_denied_at_once(azure_env: str, azurite: str) -> None:
    port = int(azurite_origin(azurite).rsplit(":", 1)[1])
    wrong = azurite_connection_string(port, key="d3Jvbmcga2V5IQ==")
    storage = azure_at(f"{azure_env}/x", wrong, retries=3)
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match="access denied"):
        storage.read_bytes("index.json")
    assert time.monotonic() - started < 5  # a 403 is final: no retries


@pytest.mark.parametrize("url", ["oci://bucket/x", "hf://datasets/x", "dbfs:/Volumes/x",
                                 "sftp://host/x", "azure-dl://fs/x"])  # fmt: skip
def test_other_reference_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket/prefix, gs://bucket/prefix and azure://"):
        open_storage(url)


def test_importing_the_storage_package_pulls_no_cloud_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mdsloader.storage as s; s.open_storage; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('google', 'azure', 'boto3')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_conditional_writes_follow_the_etag(store: AzureStorage) -> None:
    # Azurite enforces preconditions like Azure: this is the real behaviour, not a stand-in.
    assert store.write_bytes_if("index.json", b"v1", version=None)
    assert not store.write_bytes_if("index.json", b"other", version=None)  # exists: 409
    data, etag = store.read_versioned("index.json")
    assert data == b"v1"
    assert store.write_bytes_if("index.json", b"v2", version=etag)
    assert not store.write_bytes_if("index.json", b"v3", version=etag)  # stale ETag: 412
    assert store.read_bytes("index.json") == b"v2"


def test_a_body_that_kept_tearing_inside_the_sdk_is_transient() -> None:
    from azure.core.exceptions import HttpResponseError, IncompleteReadError

    from mdsloader.storage.azure import classify_azure_error

    torn = IncompleteReadError("connection broken")
    # What the SDK's download stream raises after its own three body reads failed.
    wrapped = HttpResponseError(torn, error=torn)
    wrapped.__cause__ = torn
    assert classify_azure_error(wrapped) == "transient"
    assert classify_azure_error(HttpResponseError("plain, no status")) == "other"
    assert classify_azure_error(ValueError("not the SDK's")) is None
