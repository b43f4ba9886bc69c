"""What the object-store backends (S3, GCS, Azure Blob) share: a root prefix inside a bucket.

:class:`PrefixStorage` holds what all three do alike (URLs, keys, equality, ``sub``, listing by
full name, ``exists``, the range checks); :class:`BucketStorage` adds the ``scheme://bucket/prefix``
form that S3 and GCS share (construction, ``repr`` and pickling without clients). Each backend
keeps only its own: the SDK calls, its client cache and its error classification. Nothing here
imports an SDK.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar, Generic, TypeVar

from mdsloader.errors import MissingExtraError, ObjectNotFoundError
from mdsloader.storage.base import clean_prefix, clean_relpath

OptionsT = TypeVar("OptionsT")
SelfT = TypeVar("SelfT", bound="PrefixStorage[Any]")


class PrefixStorage(Generic[OptionsT]):
    """A storage rooted at ``prefix`` below an origin (``s3://bucket``, ``azure://.../container``).

    Subclasses set ``prefix``, ``options`` and ``_clients`` (their client cache, shared with the
    storages :meth:`sub` makes) and define the hooks :meth:`_origin`, :meth:`_identity`,
    :meth:`_rooted_at`, :meth:`_list_names` and ``size``.
    """

    scheme: ClassVar[str]
    prefix: str
    options: OptionsT
    _clients: Any

    @property
    def url(self) -> str:
        """``<origin>/<prefix>`` (the origin alone at the bucket's root)."""
        origin = self._origin()
        return f"{origin}/{self.prefix}" if self.prefix else origin

    def child_url(self, relpath: str) -> str:
        """The root URL joined with ``relpath``."""
        return f"{self._origin()}/{self._key(relpath)}"

    def __eq__(self, other: object) -> bool:
        """Storages are equal when they name the same place with the same options."""
        if not isinstance(other, PrefixStorage):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        """Hash consistent with ``==``."""
        return hash(self._identity())

    def exists(self, relpath: str) -> bool:
        """Whether the object exists (a missing bucket or container also reads ``False``)."""
        try:
            self.size(relpath)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Relpaths of all objects whose relpath starts with ``prefix``, sorted (paginated)."""
        root = self._root()
        return [name[len(root) :] for name in self._list_names(prefix)]

    def sub(self: SelfT, relpath: str) -> SelfT:
        """A storage rooted at ``prefix/relpath`` that shares this one's clients."""
        child = self._rooted_at(self._key(relpath))
        child._clients = self._clients
        return child

    # -- hooks -------------------------------------------------------------------------------

    def size(self, relpath: str) -> int:
        """The object's size in bytes."""
        raise NotImplementedError

    def _origin(self) -> str:
        """The URL of the bucket (or container) itself, without a trailing ``/``."""
        raise NotImplementedError

    def _identity(self) -> tuple[object, ...]:
        """What equality and hashing compare; starts with the scheme."""
        raise NotImplementedError

    def _rooted_at(self: SelfT, prefix: str) -> SelfT:
        """A storage like this one (same bucket and options) rooted at the full ``prefix``."""
        raise NotImplementedError

    def _list_names(self, prefix: str) -> list[str]:
        """Full object names below ``self._root() + clean_prefix(prefix)``, sorted."""
        raise NotImplementedError

    # -- shared internals --------------------------------------------------------------------

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _key(self, relpath: str) -> str:
        return self._root() + clean_relpath(relpath)

    def _is_empty_range(self, relpath: str, start: int, end: int) -> bool:
        """Refuse a reversed range; an empty one still reports a missing object (like local)."""
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end == start:
            self.size(relpath)
            return True
        return False


class BucketStorage(PrefixStorage[OptionsT]):
    """A :class:`PrefixStorage` at ``<scheme>://<bucket>/<prefix>`` (S3 and GCS).

    Subclasses set ``scheme``, ``service`` (named in messages), ``sdk_module`` and ``missing``
    (the message when that module is absent), and define :meth:`_default_options` and
    :meth:`_new_clients`. Pickling keeps ``bucket``, ``prefix`` and ``options``: the client cache
    (sessions, sockets, locks) cannot cross a process boundary and is rebuilt on first use.

    Args:
        bucket: The bucket name.
        prefix: The object-name prefix every relpath is joined to.
        options: Connection settings; default :meth:`_default_options` (from the environment).

    Raises:
        MissingExtraError: If the backend's SDK is not installed.
        ValueError: An empty bucket name, or one with a ``/``.
    """

    service: ClassVar[str]
    sdk_module: ClassVar[str]
    missing: ClassVar[str]

    def __init__(self, bucket: str, prefix: str = "", *, options: OptionsT | None = None) -> None:
        """Root the storage at ``<scheme>://bucket/prefix`` (see the class docstring)."""
        if importlib.util.find_spec(self.sdk_module) is None:
            raise MissingExtraError(self.missing)
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid {self.service} bucket name: {bucket!r}")
        self.bucket = bucket
        self.prefix = clean_prefix(prefix).rstrip("/")
        self.options = options if options is not None else self._default_options()
        self._clients = self._new_clients()

    def __repr__(self) -> str:
        """``<Class>('<scheme>://bucket/prefix', endpoint_url=...)``."""
        endpoint = getattr(self.options, "endpoint_url", None)
        return f"{type(self).__name__}({self.url!r}, endpoint_url={endpoint!r})"

    def __getstate__(self) -> dict[str, object]:
        """Pickle the settings only: the client is rebuilt on first use after unpickling."""
        return {"bucket": self.bucket, "prefix": self.prefix, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the settings with an empty client cache."""
        self.bucket = state["bucket"]
        self.prefix = state["prefix"]
        self.options = state["options"]
        self._clients = self._new_clients()

    def _default_options(self) -> OptionsT:
        raise NotImplementedError

    def _new_clients(self) -> Any:
        raise NotImplementedError

    def _origin(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    def _identity(self) -> tuple[object, ...]:
        return (self.scheme, self.bucket, self.prefix, self.options)

    def _rooted_at(self: SelfT, prefix: str) -> SelfT:
        return type(self)(self.bucket, prefix, options=self.options)  # type: ignore[call-arg]
